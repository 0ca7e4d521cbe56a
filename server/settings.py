"""Server settings: one typed object, read from ``CLUDA_SERVE_*`` environment variables.

``cluda serve`` turns its options into these variables, so one uvicorn worker process or many
(``--workers``) build the same app from the environment alone. Defaults follow
``research/deploy.md`` sections 5 and 10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CLUDA_SERVE_"


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> ``(512, 1024)`` as (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not HEIGHTxWIDTH, e.g. 512x1024") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return height, width


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class ServerSettings(BaseSettings):
    """Everything ``cluda serve`` can be told; each field is also ``CLUDA_SERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model: Path = Field(description="checkpoint .pt, ONNX .onnx, TensorRT .engine/.plan or AOTInductor .pt2")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes, each with its own engines")
    # One inference worker (thread + engine) per device; "auto" = cuda:0 if present, else cpu.
    devices: Annotated[list[str], NoDecode] = ["auto"]
    # Micro-batching (research/deploy.md 10.5: max batch 4, max wait 5-10 ms).
    max_batch: int = Field(4, ge=1)
    max_wait_ms: float = Field(10.0, ge=0.0)
    max_queue: int = Field(64, ge=1, description="queued images before 503 + Retry-After")
    retry_after_s: int = Field(1, ge=0)
    # Limits (research/deploy.md 5.5, 5.6): bytes counted as they stream in; pixels checked from
    # the header before decoding (2048 x 1024 x 4 by default).
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_pixels: int = Field(2048 * 1024 * 4, ge=1)
    max_batch_images: int = Field(16, ge=1, description="images per /v1/segment/batch request")
    request_timeout_s: float = Field(30.0, gt=0.0, description="body upload and inference, each")
    api_key: SecretStr | None = None
    # Warm-up before /health/ready turns 200 (research/deploy.md 10.3): every size, batch 1 and
    # max_batch. Empty = the model's own size (static engines, a checkpoint's eval scale).
    warmup_sizes: Annotated[list[str], NoDecode] = []
    warmup_runs: int = Field(1, ge=0)
    # SIGTERM: readiness turns 503 at once; the process keeps serving for drain_grace_s (so load
    # balancers notice), then stops once idle, at the latest after drain_timeout_s.
    drain_grace_s: float = Field(2.0, ge=0.0)
    drain_timeout_s: float = Field(30.0, ge=0.0)
    # ONNX Runtime / TensorRT engine cache (a Docker volume); None = no cache.
    engine_cache: Path | None = None
    onnx_providers: Annotated[list[str], NoDecode] = []  # empty = TensorRT, CUDA, CPU as available
    log_level: str = "info"
    access_log: bool = True  # one uvicorn log line per request

    @field_validator("devices", "warmup_sizes", "onnx_providers", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # CLUDA_SERVE_API_KEY= (empty, e.g. from compose's ${VAR:-}) means "no key", not "".
        return None if value in ("", None) else value

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes_parse(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_size(item)
        return value

    @field_validator("devices")
    @classmethod
    def _devices_given(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("devices is empty; use 'auto', 'cpu' or e.g. 'cuda:0,cuda:1'")
        return value

    def warmup_shapes(self) -> list[tuple[int, int]]:
        return [parse_size(item) for item in self.warmup_sizes]

    def to_env(self) -> dict[str, str]:
        """The environment variables that rebuild these settings (for worker processes)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(map(str, value))
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env


def load_settings(**overrides: object) -> ServerSettings:
    """Settings from the environment with ``overrides`` (None = not given) on top.

    A bad value raises one ValueError naming the option, e.g. ``--max-batch: Input should be
    greater than or equal to 1``.
    """
    from pydantic import ValidationError

    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error.get("loc") else "settings"
            source = f"--{field.replace('_', '-')}" if field in given else f"{ENV_PREFIX}{field.upper()}"
            if error["type"] == "missing" and field == "model":
                problems.append(f"no model given: pass MODEL (or set {ENV_PREFIX}MODEL)")
            else:
                problems.append(f"{source}: {error['msg']}")
        raise ValueError("; ".join(problems)) from None
