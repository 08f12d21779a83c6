"""Ports for real engines come from outside the kernel's ephemeral range (a port from
``bind(0)`` was taken by vLLM's own sockets before the engine bound it)."""

from __future__ import annotations

import socket
from pathlib import Path

from engines.launch import free_port


def test_engine_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(64)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports)
    with socket.socket() as sock:
        sock.bind(("", ports[-1]))  # still free on every interface
