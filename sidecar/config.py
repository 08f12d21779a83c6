"""The sidecar's settings (what ``toposched sidecar`` takes), and their command line.

Kept apart from :mod:`sidecar.runner` so that reading them never loads NIXL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.transfer.plan import LayoutKind, Role
from sidecar.engine import VerifyMode
from sidecar.pool import MemFlag


@dataclass(frozen=True)
class SidecarConfig:
    """Everything ``toposched sidecar`` takes on its command line."""

    scheduler: str
    name: str
    kv_blocks: int
    block_bytes: int
    mem: MemFlag = "dram"
    device_id: int = 0
    layout: LayoutKind = "block_major"
    regions: int = 1
    role: Role = "both"
    model: str | None = None
    host: str = "localhost"
    gpus: tuple[str, ...] = ()
    #: Seconds between the job stream's keep-alive lines.
    poll_wait_s: float = 5.0
    executors: int = 4
    progress_thread: bool = False
    ucx_devices: str | None = None
    verify: VerifyMode = "full"
    state_file: Path | None = None
    connect_timeout_s: float = 10.0
    drain_timeout_s: float = 15.0
    #: How long the job thread drives a transfer it posted before handing the rest to
    #: an executor thread (no thread hand-off for anything shorter).
    post_wait_s: float = 0.05
    #: Initiator transfers posted and not yet reported at once: the job thread posts
    #: the next while earlier ones complete and are reported on the ``inflight`` thread.
    max_inflight: int = 2
    #: Fake engine: how long a received request "decodes" before it ends and its blocks
    #: are released at the scheduler (negative: never).
    fake_decode_ms: float = 1000.0
    debug_hold_s: float = field(default=0.0, metadata={"help": "fault injection for tests"})
    #: The engine's KV block size in tokens, registered with the worker.
    block_tokens: int | None = None
    #: Bearer token for the scheduler (never put on a command line: see :meth:`to_env`).
    token: str | None = field(default=None, repr=False)
    #: Instance document of the engine next to this sidecar, announced to the scheduler.
    engine_instance: Path | None = None
    announce_every_s: float = 5.0
    #: A CPU of its own for the job thread (it posts every transfer and, where the copy
    #: runs on the CPU — host memory over CMA or shared memory, TCP —, copies); the
    #: sidecar's other threads keep to the process's other CPUs. None: no pinning.
    copy_cpu: int | None = None

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, not {self.max_inflight}")

    def to_argv(self) -> list[str]:
        """Command-line flags that rebuild this config (``python -m sidecar …``), all but
        the token, which travels in the environment (:meth:`to_env`)."""
        argv = ["--scheduler", self.scheduler, "--name", self.name,
                "--kv-blocks", str(self.kv_blocks), "--block-bytes", str(self.block_bytes),
                "--mem", self.mem, "--device-id", str(self.device_id), "--layout", self.layout,
                "--regions", str(self.regions), "--role", self.role, "--host", self.host,
                "--poll-wait", repr(self.poll_wait_s), "--executors", str(self.executors),
                "--verify", self.verify, "--connect-timeout", repr(self.connect_timeout_s),
                "--drain-timeout", repr(self.drain_timeout_s),
                "--post-wait", repr(self.post_wait_s),
                "--max-inflight", str(self.max_inflight),
                "--fake-decode-ms", repr(self.fake_decode_ms),
                "--debug-hold", repr(self.debug_hold_s)]
        for gpu in self.gpus:
            argv += ["--gpu", gpu]
        optional = (("--model", self.model), ("--ucx-devices", self.ucx_devices),
                    ("--state-file", str(self.state_file) if self.state_file else None),
                    ("--block-tokens", str(self.block_tokens) if self.block_tokens else None),
                    ("--engine-instance",
                     str(self.engine_instance) if self.engine_instance else None),
                    ("--copy-cpu", None if self.copy_cpu is None else str(self.copy_cpu)))
        argv += ["--announce-every", repr(self.announce_every_s)]
        argv += [item for flag, value in optional if value for item in (flag, value)]
        return [*argv, "--progress-thread"] if self.progress_thread else argv

    def to_env(self) -> dict[str, str]:
        """Environment variables that carry what :meth:`to_argv` leaves out (the token)."""
        return {TOKEN_ENV: self.token} if self.token else {}


def cpus_besides(copy_cpu: int) -> set[int]:
    """The CPUs this process may run on other than ``copy_cpu``: where the sidecar's
    threads but the job thread go with ``--copy-cpu``. ValueError when ``copy_cpu`` is
    not one of its CPUs or is the only one."""
    allowed = os.sched_getaffinity(0)
    listed = ",".join(str(cpu) for cpu in sorted(allowed))
    if copy_cpu not in allowed:
        raise ValueError(f"CPU {copy_cpu} is not one this process may run on ({listed})")
    if len(allowed) < 2:
        raise ValueError(f"this process may run on CPU {listed} only: a CPU of its own "
                         "for the job thread needs two")
    return allowed - {copy_cpu}


#: Where the sidecar reads its scheduler token (the worker token of ``toposched serve``).
TOKEN_ENV = "TOPOSCHED_WORKER_TOKEN"
