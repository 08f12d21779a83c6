"""``toposched sidecar`` against a scheduler with authentication on (real processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sidecar.harness import START_TIMEOUT_S, WORKER_TOKEN, Cluster, cluster, wait_for

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]
NO_TOKEN = {"TOPOSCHED_WORKER_TOKEN": ""}


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _renews_its_lease(sidecars: Cluster, name: str) -> None:
    """Its heartbeats (its own token) are accepted: the scheduler moves the lease's
    expiry on within one registration epoch, twice. (Asserting that it stays listed
    for two lease lifetimes flaked once in a full run: a stall of the loaded 2-vCPU
    host let a 2 s lease lapse; the sidecar then registers again, a new epoch, and
    the wait goes on until its heartbeats renew that one.)"""
    seen: list[tuple[int, float]] = []

    def renewed() -> bool:
        entry = next((w for w in sidecars.http.get(f"{sidecars.url}/v1/workers").json()
                      if w["registration"]["name"] == name), None)
        if entry is not None:
            lease = (entry["lease"]["epoch"], entry["lease"]["expires_at"])
            if not seen or seen[-1] != lease:
                seen.append(lease)
        same_epoch = [expiry for epoch, expiry in seen if seen and epoch == seen[-1][0]]
        return len(same_epoch) >= 3

    wait_for(renewed, 30.0, f"{name}'s lease renewed twice by its heartbeats")


def test_a_sidecar_authenticates_from_its_environment_and_keeps_the_token_off_its_command_line(
        tmp_path: Path) -> None:
    with cluster(tmp_path, lease_ttl_s=2.0) as sidecars:
        proc = sidecars.sidecar("w-env")
        assert WORKER_TOKEN not in _command_line(proc.popen.pid)
        _renews_its_lease(sidecars, "w-env")
        assert "401" not in proc.text() and "403" not in proc.text()


def test_a_sidecar_reads_its_token_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "worker.token"
    token_file.write_text(WORKER_TOKEN + "\n")
    token_file.chmod(0o600)
    with cluster(tmp_path, lease_ttl_s=2.0) as sidecars:
        sidecars.sidecar("w-file", extra=("--token-file", str(token_file)), env=NO_TOKEN)
        _renews_its_lease(sidecars, "w-file")


def test_a_sidecar_without_a_token_exits_2_saying_what_to_give_it(tmp_path: Path) -> None:
    with cluster(tmp_path) as sidecars:
        proc = sidecars.sidecar("w-none", env=NO_TOKEN, wait=False)
        assert proc.popen.wait(START_TIMEOUT_S) == 2
        wait_for(lambda: "TOPOSCHED_WORKER_TOKEN" in proc.text(), 5, "the message")
        text = proc.text()
        assert "401" in text and "Traceback" not in text
        assert "w-none" not in sidecars.workers()
