"""Bare NIXL baseline for bench/transfer_bench.py: two processes, no scheduler, no sidecar.

The initiator does what a hand-written NIXL script would: register a pool, load the
peer's metadata, prepare one descriptor list per side, then per transfer
``make_prepped_xfer`` → ``transfer`` → spin on ``check_xfer_state`` → release. The
same pool layout and row order as the sidecar (``sidecar.descriptors``) are used, so
the comparison isolates the sidecar's own overhead. Runs only in spawned children.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.queues import Queue
from typing import Any

Job = tuple[str, list[int], int]  # name, blocks, repetitions


def rotated(blocks: list[int], rep: int, num_blocks: int) -> tuple[int, ...]:
    """The job's blocks shifted by ``rep`` job lengths (mod the pool), so repetitions read
    and write other memory instead of cache-resident buffers."""
    shift = (rep * len(blocks)) % num_blocks
    return tuple((b + shift) % num_blocks for b in blocks)


def _agent(name: str, prog_thread: bool) -> Any:
    from nixl._api import nixl_agent, nixl_agent_config

    return nixl_agent(name, nixl_agent_config(enable_prog_thread=prog_thread, backends=["UCX"]))


def _pool(args: dict[str, Any], name: str) -> Any:
    from scheduler.transfer.plan import LayoutKind
    from sidecar.engine import FakeEngine
    from sidecar.pool import KvPool

    kind: LayoutKind = "block_major" if args["regions"] == 1 else "per_layer"
    pool = KvPool(num_blocks=args["num_blocks"], block_bytes=args["block_bytes"], kind=kind,
                  regions=args["regions"], mem=args["mem"])
    # Filled like the sidecar's pools: untouched zero pages would make reads look faster.
    FakeEngine(pool, name)
    return pool


def _target(args: dict[str, Any], to_peer: Queue[Any], stop: Any) -> None:
    agent = _agent("bare-target", args["prog_thread"])
    pool = _pool(args, "bare-target")
    agent.register_memory(pool.registration(), pool.mem_type)
    to_peer.put((agent.get_agent_metadata(), pool.layout().model_dump_json()))
    while not stop.is_set():
        agent.get_new_notifs()  # progress for the connection and notifications
        if args["target_poll_s"]:
            time.sleep(args["target_poll_s"])


def _initiator(args: dict[str, Any], from_peer: Queue[Any], commands: Queue[Any],
               results: Queue[Any]) -> None:
    from scheduler.transfer.plan import KvLayout
    from sidecar.descriptors import descriptor_rows

    agent = _agent("bare-initiator", args["prog_thread"])
    pool = _pool(args, "bare-initiator")
    agent.register_memory(pool.registration(), pool.mem_type)
    metadata, layout_json = from_peer.get(timeout=120)
    remote_layout = KvLayout.model_validate_json(layout_json)
    peer = agent.add_remote_agent(metadata)
    peer = peer.decode() if isinstance(peer, bytes) else peer
    local = agent.prep_xfer_dlist("NIXL_INIT_AGENT", descriptor_rows(pool.layout(), 0),
                                  pool.mem_type)
    remote = agent.prep_xfer_dlist(peer, descriptor_rows(remote_layout, 0), pool.mem_type)
    sides = (agent, local, remote, peer, pool)
    if args["copy_cpu"] is not None:  # as the sidecar's --copy-cpu: the copy's own CPU
        os.sched_setaffinity(0, {args["copy_cpu"]})
    _run_jobs(args, sides, [("warm-up", [0], 1)])
    results.put("ready")
    while (jobs := commands.get()) is not None:
        if isinstance(jobs, tuple):  # ("pipelined", blocks, count, inflight)
            results.put(_run_pipelined(args, sides, *jobs[1:]))
        else:
            results.put(_run_jobs(args, sides, jobs))


def _run_jobs(args: dict[str, Any], sides: tuple[Any, ...],
              jobs: list[Job]) -> dict[str, list[float]]:
    from sidecar.descriptors import row_indices

    agent, local, remote, peer, pool = sides
    out: dict[str, list[float]] = {}
    for name, blocks, reps in jobs:
        times: list[float] = []
        notify: list[float] = []
        for rep in range(reps):
            idx = row_indices(pool.layout(), rotated(blocks, rep, args["num_blocks"]))
            if args["gap_s"]:
                time.sleep(args["gap_s"])
            start = time.perf_counter()
            attached = b"bare" if args["notif"] == "attached" else b""
            handle = agent.make_prepped_xfer("READ", local, idx, remote, idx, attached)
            state = agent.transfer(handle)
            while state == "PROC":
                state = agent.check_xfer_state(handle)
            agent.release_xfer_handle(handle)  # timed, as in the sidecar
            times.append(time.perf_counter() - start)
            if args["notif"] == "detached":
                sent = time.perf_counter()
                agent.send_notif(peer, b"bare")
                notify.append(time.perf_counter() - sent)
            if state != "DONE":
                raise RuntimeError(f"bare transfer {name} ended {state}")
        out[name] = times
        out[f"{name}/notify"] = notify
    return out


def _run_pipelined(args: dict[str, Any], sides: tuple[Any, ...], blocks: list[int],
                   count: int, inflight: int) -> float:
    """Seconds for ``count`` transfers (blocks rotated as in :func:`_run_jobs`) with up to
    ``inflight`` posted at once: post until ``inflight`` are in flight, check each in
    turn, release and post the next as each completes. From the first post to the
    last completion released."""
    from sidecar.descriptors import row_indices

    agent, local, remote, _, pool = sides
    layout = pool.layout()
    rows = [row_indices(layout, rotated(blocks, i, args["num_blocks"])) for i in range(count)]
    posted, active = 0, []
    start = time.perf_counter()
    while posted < count or active:
        while posted < count and len(active) < inflight:
            handle = agent.make_prepped_xfer("READ", local, rows[posted], remote,
                                             rows[posted], b"")
            agent.transfer(handle)
            active.append(handle)
            posted += 1
        still = []
        for handle in active:
            state = agent.check_xfer_state(handle)
            if state == "PROC":
                still.append(handle)
                continue
            agent.release_xfer_handle(handle)
            if state != "DONE":
                raise RuntimeError(f"bare pipelined transfer ended {state}")
        active = still
    return time.perf_counter() - start


class BarePair:
    """Two bare-NIXL processes kept alive, so runs can interleave with sidecar runs.

    ``notif``: ``detached`` (sent after completion), ``attached`` (NIXL's ``notif_msg``
    on the request) or ``none``; ``target_poll_s``: how often the target polls for
    notifications; ``mem``: ``dram`` or ``vram`` (GPU 0 of each process, needs torch
    with CUDA); ``gap_s``: idle time before each repetition (requests arriving apart);
    ``copy_cpu``: the initiator runs on that CPU alone (the sidecar's ``--copy-cpu``).
    """

    def __init__(self, *, block_bytes: int, num_blocks: int, regions: int = 1,
                 prog_thread: bool = False, target_poll_s: float = 0.005,
                 notif: str = "detached", mem: str = "dram", gap_s: float = 0.0,
                 copy_cpu: int | None = None) -> None:
        ctx = mp.get_context("spawn")
        to_init: Queue[Any] = ctx.Queue()
        self._commands: Queue[Any] = ctx.Queue()
        self._results: Queue[Any] = ctx.Queue()
        self._stop = ctx.Event()
        args = {"block_bytes": block_bytes, "num_blocks": num_blocks, "regions": regions,
                "prog_thread": prog_thread, "target_poll_s": target_poll_s, "notif": notif,
                "mem": mem, "gap_s": gap_s, "copy_cpu": copy_cpu}
        self._procs = [ctx.Process(target=_target, args=(args, to_init, self._stop)),
                       ctx.Process(target=_initiator,
                                   args=(args, to_init, self._commands, self._results))]
        for proc in self._procs:
            proc.start()
        if self._results.get(timeout=300) != "ready":
            raise RuntimeError("bare NIXL pair did not start")

    def run(self, jobs: list[Job]) -> dict[str, list[float]]:
        """Seconds per transfer for each job (request creation → completion → release);
        ``NAME/notify`` keys hold the detached notification's ``send_notif`` times."""
        self._commands.put(jobs)
        out: dict[str, list[float]] = self._results.get(timeout=300)
        return out

    def run_pipelined(self, blocks: list[int], count: int, inflight: int) -> float:
        """Seconds for ``count`` transfers of ``blocks`` with up to ``inflight`` posted at
        once (the initiator's clock: first post → last completion)."""
        self._commands.put(("pipelined", blocks, count, inflight))
        seconds: float = self._results.get(timeout=300)
        return seconds

    def pids(self) -> dict[str, int]:
        """Process ids of the target and the initiator (for CPU accounting)."""
        return {"bare target": self._procs[0].pid or 0,
                "bare initiator": self._procs[1].pid or 0}

    def close(self) -> None:
        """Stop both processes."""
        self._commands.put(None)
        self._stop.set()
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> BarePair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_bare(*, jobs: list[Job], **settings: Any) -> dict[str, list[float]]:
    """One-shot :class:`BarePair` run of ``jobs`` (settings as for BarePair)."""
    with BarePair(**settings) as pair:
        return pair.run(jobs)
