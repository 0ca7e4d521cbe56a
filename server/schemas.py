"""Pydantic schemas of every JSON request parameter and response."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, Field


class OutputFormat(str, enum.Enum):
    png = "png"  # train-id label map (8-bit grey PNG, value = train id)
    overlay = "overlay"  # colour overlay PNG
    json = "json"  # class names and pixel shares (optional RLE masks, base64 images)


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong and what to do")


class HealthResponse(BaseModel):
    status: str = Field(description="alive | loading | warming_up | ready | draining | failed")
    detail: str | None = None


class RLE(BaseModel):
    """COCO uncompressed RLE (column-major runs, starting with background)."""

    size: list[int] = Field(description="[height, width]")
    counts: list[int]


class ClassShare(BaseModel):
    id: int = Field(description="train id")
    name: str
    color: list[int] = Field(description="[r, g, b] palette colour")
    pixels: int
    share: float = Field(description="fraction of the image's pixels")
    mean_confidence: float | None = None
    rle: RLE | None = None


class Timing(BaseModel):
    decode_ms: float
    queue_ms: float
    infer_ms: float = Field(description="engine time of the whole batch this image was in")
    encode_ms: float
    total_ms: float
    batch_size: int


class SegmentResult(BaseModel):
    filename: str | None = None
    width: int
    height: int
    classes: list[ClassShare] = Field(description="classes present, most pixels first")
    mean_confidence: float | None = None
    label_png: str | None = Field(None, description="base64 train-id PNG (batch format=png)")
    overlay_png: str | None = Field(None, description="base64 overlay PNG (format=overlay or overlay=true)")
    confidence_png: str | None = Field(None, description="base64 confidence PNG (confidence=true)")
    timing: Timing


class BatchResponse(BaseModel):
    results: list[SegmentResult]


class LabelClass(BaseModel):
    id: int
    name: str
    color: list[int]


class LabelSpaceInfo(BaseModel):
    name: str
    num_classes: int
    ignore_index: int
    classes: list[LabelClass]


class ModelResponse(BaseModel):
    backend: str
    file: str
    sha256: str
    precision: str
    devices: list[str]
    label_space: LabelSpaceInfo
    static_size: list[int] | None = Field(None, description="[height, width] the model requires, if any")
    max_batch: int
    warmup_sizes: list[list[int]]
    has_confidence: bool
    provenance: dict[str, Any]
    details: dict[str, Any]
    limits: dict[str, Any]
