"""Shared scheduler state behind one store protocol (memory now, Redis for replicas)."""

from scheduler.state.base import Clock, TransferStore, WorkerEntry
from scheduler.state.memory import MemoryStore

__all__ = ["Clock", "MemoryStore", "TransferStore", "WorkerEntry"]
