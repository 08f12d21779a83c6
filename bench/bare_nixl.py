"""Bare NIXL baseline for bench/transfer_bench.py: two processes, no scheduler, no sidecar.

The initiator does what a hand-written NIXL script would: register a pool, load the
peer's metadata, prepare one descriptor list per side, then per transfer
``make_prepped_xfer`` → ``transfer`` → spin on ``check_xfer_state`` → release. The
same pool layout and row order as the sidecar (``sidecar.descriptors``) are used, so
the comparison isolates the sidecar's own overhead. Runs only in spawned children.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.queues import Queue
from typing import Any

Job = tuple[str, list[int], int]  # name, blocks, repetitions


def _agent(name: str, prog_thread: bool) -> Any:
    from nixl._api import nixl_agent, nixl_agent_config

    return nixl_agent(name, nixl_agent_config(enable_prog_thread=prog_thread, backends=["UCX"]))


def _pool(args: dict[str, Any]) -> Any:
    from scheduler.transfer.plan import LayoutKind
    from sidecar.pool import KvPool

    kind: LayoutKind = "block_major" if args["regions"] == 1 else "per_layer"
    return KvPool(num_blocks=args["num_blocks"], block_bytes=args["block_bytes"], kind=kind,
                  regions=args["regions"], mem=args["mem"])


def _target(args: dict[str, Any], to_peer: Queue[Any], stop: Any) -> None:
    agent = _agent("bare-target", args["prog_thread"])
    pool = _pool(args)
    agent.register_memory(pool.registration(), pool.mem_type)
    to_peer.put((agent.get_agent_metadata(), pool.layout().model_dump_json()))
    while not stop.is_set():
        agent.get_new_notifs()  # progress for the connection and notifications
        if args["target_poll_s"]:
            time.sleep(args["target_poll_s"])


def _initiator(args: dict[str, Any], from_peer: Queue[Any], results: Queue[Any]) -> None:
    from scheduler.transfer.plan import KvLayout
    from sidecar.descriptors import descriptor_rows, row_indices

    agent = _agent("bare-initiator", args["prog_thread"])
    pool = _pool(args)
    agent.register_memory(pool.registration(), pool.mem_type)
    metadata, layout_json = from_peer.get(timeout=60)
    remote_layout = KvLayout.model_validate_json(layout_json)
    peer = agent.add_remote_agent(metadata)
    peer = peer.decode() if isinstance(peer, bytes) else peer
    local = agent.prep_xfer_dlist("NIXL_INIT_AGENT", descriptor_rows(pool.layout(), 0),
                                  pool.mem_type)
    remote = agent.prep_xfer_dlist(peer, descriptor_rows(remote_layout, 0), pool.mem_type)
    out: dict[str, list[float]] = {}
    for name, blocks, reps in [("warm-up", [0], 1), *args["jobs"]]:
        idx = row_indices(pool.layout(), tuple(blocks))
        times: list[float] = []
        notify: list[float] = []
        for _ in range(reps):
            start = time.perf_counter()
            attached = b"bare" if args["notif"] == "attached" else b""
            handle = agent.make_prepped_xfer("READ", local, idx, remote, idx, attached)
            state = agent.transfer(handle)
            while state == "PROC":
                state = agent.check_xfer_state(handle)
            times.append(time.perf_counter() - start)
            if args["notif"] == "detached":
                sent = time.perf_counter()
                agent.send_notif(peer, b"bare")
                notify.append(time.perf_counter() - sent)
            agent.release_xfer_handle(handle)
            if state != "DONE":
                raise RuntimeError(f"bare transfer {name} ended {state}")
        out[name] = times
        out[f"{name}/notify"] = notify
    results.put(out)


def run_bare(*, block_bytes: int, num_blocks: int, jobs: list[Job], regions: int = 1,
             prog_thread: bool = False, target_poll_s: float = 0.005,
             notif: str = "detached", mem: str = "dram") -> dict[str, list[float]]:
    """Seconds per transfer for each job (READ, initiator pulls from a second process).

    Keys: the job name (request creation → completion) and ``NAME/notify`` (the
    detached notification's ``send_notif`` call; empty unless ``notif="detached"``).

    ``notif``: ``detached`` (sent after completion, as the sidecar does), ``attached``
    (NIXL's ``notif_msg`` on the request) or ``none``; ``target_poll_s``: how often the
    target polls for notifications (the sidecar's progress loop uses 5 ms); ``mem``:
    ``dram`` or ``vram`` (GPU 0 of each process, needs torch with CUDA).
    """
    ctx = mp.get_context("spawn")
    to_init: Queue[Any] = ctx.Queue()
    results: Queue[Any] = ctx.Queue()
    stop = ctx.Event()
    args = {"block_bytes": block_bytes, "num_blocks": num_blocks, "regions": regions,
            "jobs": jobs, "prog_thread": prog_thread, "target_poll_s": target_poll_s,
            "notif": notif, "mem": mem}
    target = ctx.Process(target=_target, args=(args, to_init, stop))
    initiator = ctx.Process(target=_initiator, args=(args, to_init, results))
    target.start()
    initiator.start()
    try:
        out: dict[str, list[float]] = results.get(timeout=300)
    finally:
        stop.set()
        initiator.join(30)
        target.join(30)
        for proc in (initiator, target):
            if proc.is_alive():
                proc.kill()
    out.pop("warm-up", None)
    out.pop("warm-up/notify", None)
    return out
