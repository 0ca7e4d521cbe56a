"""``GET /health/live`` (the process works) and ``GET /health/ready`` (it can segment now)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from server.schemas import HealthResponse
from server.state import ServerState, Status, get_state

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthResponse, response_model_exclude_none=True, responses={503: {"model": HealthResponse}})
def live(state: ServerState = Depends(get_state)):
    """200 while the process is healthy; 503 only when loading the model failed (restart it)."""
    if state.status is Status.FAILED:
        return JSONResponse({"status": "failed", "detail": state.error}, status_code=503)
    return HealthResponse(status="alive")


@router.get("/ready", response_model=HealthResponse, response_model_exclude_none=True, responses={503: {"model": HealthResponse}})
def ready(state: ServerState = Depends(get_state)):
    """200 once the engines are loaded and warmed up; 503 before that and while draining."""
    if state.status is Status.READY:
        return HealthResponse(status="ready")
    headers = {"Retry-After": str(state.settings.retry_after_s)} if state.status in (
        Status.LOADING, Status.WARMING_UP) else {}  # fmt: skip
    return JSONResponse(
        {"status": state.status.value, "detail": state.error}, status_code=503, headers=headers
    )
