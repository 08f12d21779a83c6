"""Errors of the sidecar, in the project's one tree (:mod:`topology.errors`)."""

from __future__ import annotations

from typing import Literal

from topology.errors import InputError, ToposchedError

FailureKind = Literal["failed", "timeout", "aborted"]


class TransferError(ToposchedError):
    """A transfer did not complete: the peer died, hung past the deadline, or was aborted."""

    title = "transfer failed"

    def __init__(self, message: str, kind: FailureKind = "failed") -> None:
        self.message = message
        self.kind: FailureKind = kind
        super().__init__(message)


class SchedulerUnavailableError(ToposchedError):
    """The scheduler did not answer (connection refused, timeout, 5xx) after retries."""

    title = "scheduler unavailable"


class AuthenticationError(InputError):
    """The scheduler refused the sidecar's credentials (401) or their scope (403)."""

    title = "not authorised"
