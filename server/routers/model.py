"""``GET /v1/model``: label space, palette, provenance, backend, shapes and limits."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from server.auth import require_api_key
from server.schemas import ErrorResponse, LabelClass, LabelSpaceInfo, ModelResponse
from server.state import ServerState, get_state

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[Depends(require_api_key)])


@router.get("/model", response_model=ModelResponse, responses={503: {"model": ErrorResponse}})
def model_info(state: ServerState = Depends(get_state)) -> ModelResponse:
    if not state.engines or state.batcher is None:
        raise HTTPException(503, f"the model is not loaded yet ({state.status.value}); retry shortly",
                            headers={"Retry-After": str(state.settings.retry_after_s)})  # fmt: skip
    info = state.engines[0].info
    space = info.label_space
    settings = state.settings
    return ModelResponse(
        backend=info.backend,
        file=info.path.name,
        sha256=info.sha256,
        precision=info.precision,
        devices=[e.info.device for e in state.engines],
        label_space=LabelSpaceInfo(
            name=space.name, num_classes=space.num_classes, ignore_index=space.ignore_index,
            classes=[LabelClass(id=i, name=n, color=list(c))
                     for i, (n, c) in enumerate(zip(space.class_names, space.palette, strict=True))],
        ),  # fmt: skip
        static_size=list(info.static_size) if info.static_size else None,
        max_batch=state.batcher.max_batch,
        warmup_sizes=[list(s) for s in state.warmup_sizes],
        has_confidence=info.has_confidence,
        provenance=info.provenance,
        details=info.details,
        limits={
            "max_body_bytes": settings.max_body_bytes, "max_pixels": settings.max_pixels,
            "max_batch_images": settings.max_batch_images, "max_queue": settings.max_queue,
            "max_wait_ms": settings.max_wait_ms, "request_timeout_s": settings.request_timeout_s,
            "formats": ["image/png", "image/jpeg", "image/webp"],
        },  # fmt: skip
    )
