"""Request dependencies: the coordinator and the prefix index of the running app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.runtime import Runtime
from scheduler.prefix import PrefixIndex
from scheduler.transfer.coordinator import TransferCoordinator


async def _coordinator(request: Request) -> TransferCoordinator:
    coordinator: TransferCoordinator = request.app.state.coordinator
    return coordinator


async def _prefix(request: Request) -> PrefixIndex:
    index: PrefixIndex = request.app.state.prefix_index
    return index


async def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
Coordinator = Annotated[TransferCoordinator, Depends(_coordinator)]
Prefix = Annotated[PrefixIndex, Depends(_prefix)]
