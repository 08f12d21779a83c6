"""Real vLLM engines for tests: the product's launcher (:mod:`engines.launch`) plus what
only a shared test machine needs.

Only one test run on the machine starts engines at a time: :class:`EngineLock` takes
``/tmp/toposched-vllm.lock`` (unless a parent process, e.g. ``flock``, holds it already).
:class:`EngineFleet` starts engines during a session and stops them all at its end.
When the vLLM environment is missing the tests that need it FAIL with the command that
installs it; they never skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.launch import (
    BLOCK_SIZE,
    KV_BYTES_PER_TOKEN,
    MODEL_NAME,
    EngineOptions,
    VllmEngine,
    parent_of,
    process_tree,
    site_dir,
    start_engines,
    vllm_python,
    write_tiny_model,
)

__all__ = ["BLOCK_SIZE", "KV_BYTES_PER_TOKEN", "MODEL_NAME", "EngineFleet", "EngineLock",
           "EngineOptions", "VllmEngine", "fleet", "process_tree", "site_dir", "vllm_python",
           "write_tiny_model"]
LOCK_PATH = Path(os.environ.get("TOPOSCHED_VLLM_LOCK", "/tmp/toposched-vllm.lock"))


class EngineLock:
    """``/tmp/toposched-vllm.lock``, held while engines run (one test run at a time).

    A run already started under ``flock`` on the same file (a parent holds the lock)
    goes ahead without taking it again, rather than waiting for itself.
    """

    def __init__(self, path: Path = LOCK_PATH) -> None:
        self.path = path
        self._handle: Any = None

    def acquire(self) -> None:
        """Take the lock (blocking), unless an ancestor process holds it."""
        if self._handle is not None or _held_by_ancestor(self.path):
            return
        self._handle = self.path.open("a")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def release(self) -> None:
        """Give the lock back (if this object took it)."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _held_by_ancestor(path: Path) -> bool:
    """Whether a process above this one holds a flock on ``path`` (/proc/locks)."""
    try:
        inode = path.stat().st_ino
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    holders = {int(parts[4]) for parts in (line.split() for line in locks)
               if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].endswith(f":{inode}")}
    pid = os.getppid()
    while pid > 1:
        if pid in holders:
            return True
        pid = parent_of(pid) or 0
    return False


@dataclass
class EngineFleet:
    """Engines started during a test session; stopped together at its end."""

    model_dir: Path
    workdir: Path
    lock: EngineLock = field(default_factory=EngineLock)
    engines: list[VllmEngine] = field(default_factory=list)

    def start(self, *options: EngineOptions) -> list[VllmEngine]:
        """Start engines (taking the machine-wide lock first) and wait for them."""
        self.lock.acquire()
        started = start_engines(self.model_dir, options, self.workdir,
                                first_cpu=len(self.engines))
        self.engines.extend(started)
        return started

    def stop_all(self) -> None:
        """Stop every engine and give the lock back."""
        try:
            for engine in self.engines:
                engine.stop()
        finally:
            self.lock.release()


@contextlib.contextmanager
def fleet(model_dir: Path, workdir: Path) -> Iterator[EngineFleet]:
    """An :class:`EngineFleet` that is stopped on exit."""
    engines = EngineFleet(model_dir, workdir)
    try:
        yield engines
    finally:
        engines.stop_all()
