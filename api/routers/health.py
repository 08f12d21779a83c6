"""Readiness: a fabric is loaded and the state store answers."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.problems import problem
from api.service import ServiceState
from scheduler.transfer.coordinator import TransferCoordinator

router = APIRouter(tags=["health"])


@router.get("/readyz", response_model=None,
            responses={503: {"description": "not ready (problem+json)"}})
async def readyz(request: Request) -> dict[str, str] | Response:
    """Ready when a fabric is loaded and the store answers; 503 problem otherwise."""
    services: ServiceState = request.app.state.services
    coordinator: TransferCoordinator = request.app.state.coordinator
    reasons = [] if services.fabric is not None else ["no fabric loaded"]
    try:
        await coordinator.store.list_workers()
    except Exception as exc:  # any store failure means not ready, whatever its type
        reasons.append(f"state store does not answer ({type(exc).__name__})")
    if reasons:
        return problem(503, "not ready", "; ".join(reasons), request.url.path,
                       reasons=reasons)
    return {"status": "ready"}
