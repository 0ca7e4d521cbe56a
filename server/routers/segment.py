"""``POST /v1/segment`` (one image) and ``POST /v1/segment/batch`` (several).

The handlers only read, decode (in the thread pool), queue for the micro-batcher and encode (in
the thread pool); inference runs on the batcher's per-device threads.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from cluda_deploy.labels import LabelSpace
from server import imaging
from server.auth import require_api_key
from server.batcher import QueueFull, Segmentation
from server.engines import ConfidenceUnavailable
from server.schemas import (
    RLE,
    BatchResponse,
    ClassShare,
    ErrorResponse,
    OutputFormat,
    SegmentResult,
    Timing,
)
from server.state import ServerState, get_state

log = logging.getLogger("cluda.serve")
router = APIRouter(prefix="/v1", tags=["segment"], dependencies=[Depends(require_api_key)])

# The blend cluda predict uses for its overlays.
OVERLAY_ALPHA = 0.5
# Non-file multipart fields are tiny here; cap them (CVE-2024-47874, research/deploy.md 5.5).
MAX_FORM_FIELDS = 8
MAX_FIELD_BYTES = 64 * 1024
_GENERIC_PART_TYPES = ("", "application/octet-stream")
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 408, 413, 415, 422, 503, 504)}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in imaging.CONTENT_TYPES},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary"}}}},
        },
    }
}  # fmt: skip


@dataclass
class Upload:
    filename: str | None
    data: bytes


@dataclass
class Decoded:
    filename: str | None
    image: np.ndarray  # (H, W, 3) uint8
    decode_s: float


# --------------------------------------------------------------------------- reading


async def read_uploads(request: Request, state: ServerState, many: bool) -> list[Upload]:
    """The image bytes of a raw ``image/*`` body or of every file part of a multipart body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    allowed = ", ".join(imaging.CONTENT_TYPES)
    if media in imaging.CONTENT_TYPES and not many:
        return [Upload(None, await request.body())]
    if media != "multipart/form-data":
        what = "multipart/form-data with one file part per image" if many else f"{allowed} or multipart/form-data"
        raise HTTPException(415, f"unsupported Content-Type {media or '(none)'!r}; send {what}")
    limit = state.settings.max_batch_images if many else 1
    form = await request.form(max_files=limit + 1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise HTTPException(422, "the multipart body has no file part; send the image as a file field named 'image'")
        if len(files) > limit:
            raise HTTPException(
                413 if many else 422,
                f"{len(files)} images in one request, the limit is {state.settings.max_batch_images}; "
                "split the batch" if many else "send one image here, or several to /v1/segment/batch",
            )
        uploads = []
        for part in files:
            part_type = (part.content_type or "").split(";")[0].strip().lower()
            if part_type not in imaging.CONTENT_TYPES and part_type not in _GENERIC_PART_TYPES:
                raise HTTPException(415, f"part {part.filename!r} has Content-Type {part_type!r}; send {allowed}")
            uploads.append(Upload(part.filename, await part.read()))
        return uploads
    finally:
        await form.close()


def _decode(upload: Upload, max_pixels: int) -> Decoded:
    start = time.perf_counter()
    try:
        image = imaging.decode_image(upload.data, max_pixels)
    except imaging.ImageRejected as exc:
        where = f"{upload.filename}: " if upload.filename else ""
        raise HTTPException(exc.status, where + exc.detail) from None
    return Decoded(upload.filename, image, time.perf_counter() - start)


# --------------------------------------------------------------------------- inference


def _require_serving(state: ServerState) -> None:
    if not state.serving:
        detail = state.error if state.error else f"the model is {state.status.value.replace('_', ' ')}"
        raise HTTPException(503, f"not ready: {detail}; retry shortly (GET /health/ready says when)",
                            headers={"Retry-After": str(state.settings.retry_after_s)})  # fmt: skip


async def infer(state: ServerState, images: list[np.ndarray], confidence: bool) -> list[Segmentation]:
    """Queue every image, wait for all within the request timeout; map failures to HTTP codes."""
    batcher, settings = state.batcher, state.settings
    retry = {"Retry-After": str(settings.retry_after_s)}
    if batcher.free_slots() < len(images):
        raise HTTPException(503, f"the server is busy ({batcher.depth} images queued, limit "
                            f"{settings.max_queue}); retry after {settings.retry_after_s} s", headers=retry)  # fmt: skip
    futures = [batcher.submit(image, confidence) for image in images]
    try:
        return list(await asyncio.wait_for(asyncio.gather(*futures), settings.request_timeout_s))
    except asyncio.TimeoutError:
        raise HTTPException(504, f"inference did not finish within {settings.request_timeout_s:g} s; "
                            "the server is overloaded, retry later") from None  # fmt: skip
    except ConfidenceUnavailable as exc:
        raise HTTPException(422, f"confidence=true: {exc}") from None
    except QueueFull as exc:
        raise HTTPException(503, f"{exc}; retry", headers=retry) from None
    except Exception as exc:
        log.exception("inference failed")
        raise HTTPException(500, f"inference failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    finally:
        for future in futures:
            future.cancel()


def _check_options(state: ServerState, fmt: OutputFormat, confidence: bool) -> None:
    if confidence and fmt is OutputFormat.overlay:
        raise HTTPException(422, "confidence=true gives a confidence PNG with format=png, or "
                            "confidence values with format=json; drop it for format=overlay")  # fmt: skip
    if confidence and not state.engines[0].info.has_confidence:
        raise HTTPException(422, "confidence=true: this model has no confidence output; re-export it with confidence")


# --------------------------------------------------------------------------- results


def class_shares(
    labels: np.ndarray, space: LabelSpace, confidence: np.ndarray | None = None, rle: bool = False
) -> list[ClassShare]:
    """Classes present in ``labels (H, W)``, most pixels first, with share (and confidence, RLE)."""
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=256)
    conf_sums = np.bincount(flat, weights=confidence.ravel(), minlength=256) if confidence is not None else None
    palette = space.palette_array()
    shares = []
    for class_id in sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i)):
        class_id = int(class_id)
        name = space.class_names[class_id] if class_id < space.num_classes else (
            "ignore" if class_id == space.ignore_index else f"id{class_id}")  # fmt: skip
        shares.append(ClassShare(
            id=class_id, name=name, color=palette[class_id].tolist(), pixels=int(counts[class_id]),
            share=round(float(counts[class_id]) / flat.size, 6),
            mean_confidence=None if conf_sums is None else round(float(conf_sums[class_id] / counts[class_id]), 6),
            rle=RLE(size=list(labels.shape), counts=imaging.rle_encode(labels == class_id)) if rle else None,
        ))  # fmt: skip
    return shares


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _timing(decoded: Decoded, seg: Segmentation, encode_s: float, start: float) -> Timing:
    return Timing(
        decode_ms=round(1e3 * decoded.decode_s, 3), queue_ms=round(1e3 * seg.queue_s, 3),
        infer_ms=round(1e3 * seg.infer_s, 3), encode_ms=round(1e3 * encode_s, 3),
        total_ms=round(1e3 * (time.perf_counter() - start), 3), batch_size=seg.batch_size,
    )  # fmt: skip


def build_result(
    decoded: Decoded, seg: Segmentation, space: LabelSpace, *, rle: bool, label: bool,
    overlay: bool, alpha: float, start: float,
) -> SegmentResult:  # fmt: skip
    """The JSON result of one image (base64 PNGs only where asked for)."""
    began = time.perf_counter()
    result = SegmentResult(
        filename=decoded.filename,
        width=int(seg.labels.shape[1]),
        height=int(seg.labels.shape[0]),
        classes=class_shares(seg.labels, space, seg.confidence, rle),
        mean_confidence=None if seg.confidence is None else round(float(seg.confidence.mean()), 6),
        label_png=_b64(imaging.label_png(seg.labels)) if label else None,
        overlay_png=_b64(imaging.overlay_png(decoded.image, seg.labels, space, alpha)) if overlay else None,
        confidence_png=None if seg.confidence is None else _b64(imaging.confidence_png(seg.confidence)),
        timing=Timing(decode_ms=0, queue_ms=0, infer_ms=0, encode_ms=0, total_ms=0, batch_size=0),
    )
    result.timing = _timing(decoded, seg, time.perf_counter() - began, start)
    return result


def _record_stages(state: ServerState, decoded: Decoded, seg: Segmentation, encode_s: float) -> None:
    stage = state.metrics.stage_seconds
    stage.labels(stage="decode").observe(decoded.decode_s)
    stage.labels(stage="queue").observe(seg.queue_s)
    stage.labels(stage="infer").observe(seg.infer_s)
    stage.labels(stage="encode").observe(encode_s)


# --------------------------------------------------------------------------- endpoints


@router.post(
    "/segment", openapi_extra=_IMAGE_BODY,
    responses={200: {"content": {"image/png": {}, "application/json": {"schema": SegmentResult.model_json_schema()}},
                     "description": "label PNG (default), overlay PNG, confidence PNG or JSON"}, **_ERRORS},
)  # fmt: skip
async def segment(
    request: Request,
    state: ServerState = Depends(get_state),
    format: OutputFormat = Query(OutputFormat.png, description="png | overlay | json"),
    confidence: bool = Query(False, description="png: the confidence PNG instead; json: add confidence"),
    rle: bool = Query(False, description="json: add a COCO RLE mask per class"),
    overlay: bool = Query(False, description="json: add the overlay PNG (base64)"),
    alpha: float = Query(OVERLAY_ALPHA, ge=0.0, le=1.0, description="overlay opacity"),
) -> Response:
    """Segment one image (raw ``image/png|jpeg|webp`` body or multipart field ``image``).

    The output has the input's size. PNG label maps hold train ids (255 = ignore).
    """
    start = time.perf_counter()
    _require_serving(state)
    _check_options(state, format, confidence)
    (upload,) = await read_uploads(request, state, many=False)
    decoded = await run_in_threadpool(_decode, upload, state.settings.max_pixels)
    (seg,) = await infer(state, [decoded.image], confidence)
    space = state.engines[0].info.label_space
    began = time.perf_counter()
    if format is OutputFormat.json:
        result = await run_in_threadpool(build_result, decoded, seg, space, rle=rle, label=False,
                                         overlay=overlay, alpha=alpha, start=start)  # fmt: skip
        body, media = result.model_dump_json(exclude_none=True).encode(), "application/json"
    elif format is OutputFormat.overlay:
        body, media = await run_in_threadpool(imaging.overlay_png, decoded.image, seg.labels, space, alpha), "image/png"
    elif confidence:
        body, media = await run_in_threadpool(imaging.confidence_png, seg.confidence), "image/png"
    else:
        body, media = await run_in_threadpool(imaging.label_png, seg.labels), "image/png"
    encode_s = time.perf_counter() - began
    _record_stages(state, decoded, seg, encode_s)
    timing = _timing(decoded, seg, encode_s, start)
    return Response(body, media_type=media, headers={
        "Server-Timing": ", ".join(f"{name};dur={getattr(timing, name + '_ms')}"
                                   for name in ("decode", "queue", "infer", "encode", "total")),
        "X-Batch-Size": str(seg.batch_size),
        "X-Image-Size": f"{seg.labels.shape[1]}x{seg.labels.shape[0]}",
    })  # fmt: skip


@router.post("/segment/batch", response_model=BatchResponse, response_model_exclude_none=True, responses=_ERRORS, openapi_extra={
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})  # fmt: skip
async def segment_batch(
    request: Request,
    state: ServerState = Depends(get_state),
    format: OutputFormat = Query(OutputFormat.json, description="png: add label_png; overlay: add overlay_png"),
    confidence: bool = Query(False, description="add confidence_png and confidence values"),
    rle: bool = Query(False, description="add a COCO RLE mask per class"),
    alpha: float = Query(OVERLAY_ALPHA, ge=0.0, le=1.0),
) -> BatchResponse:
    """Segment several images (multipart, one file part each); one JSON result per image, in order.

    Any undecodable image fails the whole request with its file name, before any inference.
    """
    start = time.perf_counter()
    _require_serving(state)
    _check_options(state, OutputFormat.json, confidence)
    uploads = await read_uploads(request, state, many=True)
    decoded = [await run_in_threadpool(_decode, u, state.settings.max_pixels) for u in uploads]
    segs = await infer(state, [d.image for d in decoded], confidence)
    space = state.engines[0].info.label_space
    results = []
    for d, seg in zip(decoded, segs, strict=True):
        began = time.perf_counter()
        results.append(await run_in_threadpool(
            build_result, d, seg, space, rle=rle, label=format is OutputFormat.png,
            overlay=format is OutputFormat.overlay, alpha=alpha, start=start))  # fmt: skip
        _record_stages(state, d, seg, time.perf_counter() - began)
    return BatchResponse(results=results)
