"""TensorRT engines from the exported ONNX files, with a timing cache and an engine cache.

Written against TensorRT's documented Python API (``tensorrt`` 10.x and 11.x):

* **Typing.** TensorRT 11 removed the precision builder flags (``BuilderFlag.FP16/INT8``) and the
  calibrators: every network is strongly typed and the ONNX file's types decide precisions. So
  fp32 builds ``model.onnx``, int8 builds the Q/DQ ``model_int8.onnx``, fp16 builds
  ``model_fp16.onnx`` (the network exported in half precision). TensorRT 10 builds fp32 and int8
  the same way (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) and falls back to the builder
  flags for fp16 (``BuilderFlag.FP16`` on the fp32 graph, weakly typed) -- see :func:`plan_build`.
* **Optimisation profile.** One profile for the ``images`` input, ``(N, H, W, 3)`` min/opt/max
  (:func:`profile_for`): static axes are fixed, dynamic ones take the ``--trt-min/opt/max`` given
  or defaults around Cityscapes frames (mmdeploy's dynamic profile: 512x1024 .. 2048x2048,
  tuned at 1024x2048). A request outside it is refused (``cluda_deploy.sidecar.check_input_shape``).
* **Timing cache** (``IBuilderConfig.create_timing_cache`` / ``set_timing_cache`` / serialize),
  one file per GPU and TensorRT version: rebuilds reuse the layer timings.
* **Engine cache**: a plan only runs on the GPU architecture and TensorRT version that built it
  (research/deploy.md 6.1), so built plans are stored under a key of GPU, compute capability,
  TensorRT version, ONNX sha256, precision, typing and profile (:func:`engine_cache_key`); an
  identical request copies the cached plan instead of building (minutes for MiT-B5).

``tensorrt`` cannot be installed in the CPU environment this was written in (its PyPI packages
download the real wheels from NVIDIA's index); everything here except :func:`build_engine` and
:class:`TensorRTRunner` is plain Python and tested without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cluda_deploy.sidecar import INPUT_NAME, file_sha256

TRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CACHE = Path(os.environ.get("CLUDA_TRT_CACHE", Path.home() / ".cache" / "cluda-deploy" / "tensorrt"))
# Server micro-batches up to 4 images (research/deploy.md section 10).
DEFAULT_MAX_BATCH = 4
# Dynamic H, W defaults (mmdeploy segmentation_tensorrt_dynamic-512x1024-2048x2048).
DEFAULT_MIN_HW = (512, 1024)
DEFAULT_OPT_HW = (1024, 2048)
DEFAULT_MAX_HW = (2048, 2048)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU) is not there."""


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(
            "--trt needs NVIDIA TensorRT >= 10 and a CUDA GPU: pip install tensorrt-cu12 (its "
            "wheels come from pypi.nvidia.com) or use the GPU Docker image; the ONNX files work "
            "without it (onnxruntime, or onnxruntime-gpu's TensorRT provider)"
        ) from None
    return tensorrt


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"cannot read a TensorRT version from {version!r}") from None


@dataclass(frozen=True)
class BuildPlan:
    """How one precision is built: which ONNX file, strongly typed or not, which builder flags."""

    precision: str
    onnx_precision: str  # fp32 | fp16 | int8: model.onnx, model_fp16.onnx, model_int8.onnx
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()


def plan_build(trt_version: str, precision: str) -> BuildPlan:
    """Strongly typed networks where TensorRT has them, builder flags as TensorRT 10's fallback.

    * TensorRT >= 11: strongly typed only; fp16 needs the fp16 ONNX file, int8 the Q/DQ file.
    * TensorRT 10: fp32 and int8 (Q/DQ) strongly typed; fp16 weakly typed with
      ``BuilderFlag.FP16`` on the fp32 graph (TensorRT picks fp16 kernels where it can and keeps
      LayerNormalization in fp32, research/deploy.md 6.1).
    * Older: refused (no strongly typed networks, and the calibrator path is deprecated).
    """
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; known: {', '.join(TRT_PRECISIONS)}")
    major = trt_major(trt_version)
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt_version} is too old; cluda export needs TensorRT >= 10")
    if major >= 11 or precision != "fp16":
        return BuildPlan(precision, onnx_precision=precision, strongly_typed=True)
    return BuildPlan(precision, onnx_precision="fp32", strongly_typed=False, builder_flags=("FP16",))


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the ``images`` input: ``(N, H, W, 3)`` min <= opt <= max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}


def profile_for(
    static: tuple[int | None, int | None, int | None],
    min_side: int,
    trt_min: tuple[int, int, int] | None = None,
    trt_opt: tuple[int, int, int] | None = None,
    trt_max: tuple[int, int, int] | None = None,
) -> Profile:
    """The profile for an ONNX input with static axes ``static`` (N, H, W; None = dynamic).

    ``trt_min/opt/max`` are (N, H, W) from ``--trt-min`` etc.; a dynamic axis they leave out
    takes the defaults (batch 1 / 1 / ``DEFAULT_MAX_BATCH``; H, W 512x1024 / 1024x2048 /
    2048x2048, clipped to ``min_side``). A value that contradicts a static axis, a min above an
    opt or an opt above a max raises ``ValueError`` naming the axis.
    """
    defaults = {
        "min": (1, *DEFAULT_MIN_HW),
        "opt": (1, *DEFAULT_OPT_HW),
        "max": (DEFAULT_MAX_BATCH, *DEFAULT_MAX_HW),
    }
    given = {"min": trt_min, "opt": trt_opt, "max": trt_max}
    shapes = {}
    for key in ("min", "opt", "max"):
        dims = []
        for axis, name in enumerate(("batch", "height", "width")):
            fixed = static[axis]
            wanted = given[key][axis] if given[key] is not None else None
            if fixed is not None:
                if wanted is not None and wanted != fixed:
                    raise ValueError(
                        f"--trt-{key} {name} {wanted} contradicts the static {name} {fixed} of the ONNX file"
                    )
                dims.append(fixed)
            else:
                value = wanted if wanted is not None else defaults[key][axis]
                dims.append(value if axis == 0 else max(value, min_side))
        shapes[key] = (*dims, 3)
    for axis, name in enumerate(("batch", "height", "width")):
        low, opt, high = shapes["min"][axis], shapes["opt"][axis], shapes["max"][axis]
        if not 1 <= low <= opt <= high:
            raise ValueError(
                f"TensorRT profile {name}: need 1 <= min <= opt <= max, got {low}, {opt}, {high}; "
                "fix --trt-min/--trt-opt/--trt-max"
            )
    return Profile(shapes["min"], shapes["opt"], shapes["max"])


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "9.0"


def gpu_identity(device: int = 0) -> GpuIdentity:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("--trt needs a CUDA GPU, and torch sees none here")
    major, minor = torch.cuda.get_device_capability(device)
    return GpuIdentity(torch.cuda.get_device_name(device), f"{major}.{minor}")


def engine_cache_key(
    gpu: GpuIdentity, trt_version: str, onnx_sha256: str, plan: BuildPlan, profile: Profile
) -> str:
    """Hex key of everything a plan depends on: GPU, TensorRT version, ONNX, precision, shapes."""
    payload = {
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "tensorrt": trt_version,
        "onnx_sha256": onnx_sha256,
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "profile": profile.to_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def timing_cache_path(cache_dir: Path, gpu: GpuIdentity, trt_version: str) -> Path:
    """Timing caches are specific to the device and TensorRT version (builder-performance docs)."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu.name).strip("-").lower()
    return cache_dir / f"timing_{slug}_sm{gpu.compute_capability.replace('.', '')}_trt{trt_version}.cache"


@dataclass
class EngineBuild:
    path: Path
    cache_key: str
    cached: bool
    seconds: float
    tensorrt_version: str
    gpu: GpuIdentity
    plan: BuildPlan
    profile: Profile

    def sidecar_section(self, onnx_path: Path, onnx_sha256: str) -> dict:
        return {
            "version": self.tensorrt_version,
            "gpu": self.gpu.name,
            "compute_capability": self.gpu.compute_capability,
            "profile": self.profile.to_dict(),
            "strongly_typed": self.plan.strongly_typed,
            "builder_flags": list(self.plan.builder_flags),
            "onnx": onnx_path.name,
            "onnx_sha256": onnx_sha256,
            "cache_key": self.cache_key,
            "build_seconds": round(self.seconds, 1),
            "from_cache": self.cached,
        }


def build_engine(
    onnx_path: Path,
    onnx_sha256: str,
    engine_path: Path,
    plan: BuildPlan,
    profile: Profile,
    dynamic: bool,
    cache_dir: Path = DEFAULT_CACHE,
    workspace_gib: float = 4.0,
) -> EngineBuild:
    """Build (or fetch from the engine cache) the serialised engine of ``onnx_path``."""
    trt = import_tensorrt()
    gpu = gpu_identity()
    key = engine_cache_key(gpu, trt.__version__, onnx_sha256, plan, profile)
    cached = cache_dir / "engines" / f"{key}.engine"
    start = time.perf_counter()
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    if cached.is_file():
        shutil.copyfile(cached, engine_path)
        return EngineBuild(engine_path, key, True, time.perf_counter() - start, trt.__version__, gpu, plan, profile)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and trt_major(trt.__version__) < 11:  # always on (flag deprecated) in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if dynamic:
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(INPUT_NAME, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(trt_profile)
    timing_path = timing_cache_path(cache_dir, gpu, trt.__version__)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT built no engine from {onnx_path} (see its log above); if it ran out of "
            "memory, raise --trt-workspace or narrow the profile"
        )
    engine_path.write_bytes(memoryview(serialized))
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(engine_path, cached)
    timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineBuild(engine_path, key, False, time.perf_counter() - start, trt.__version__, gpu, plan, profile)


def build_precision(
    precision: str,
    onnx_files: dict[str, Path],
    engine_path: Path,
    profile: Profile,
    dynamic: bool,
    cache_dir: Path = DEFAULT_CACHE,
    workspace_gib: float = 4.0,
) -> tuple[EngineBuild, Path, str]:
    """Build the ``precision`` engine from the ONNX file :func:`plan_build` picks.

    ``onnx_files`` maps fp32/fp16/int8 to the exported files. Returns (build, the ONNX file used,
    its sha256).
    """
    trt = import_tensorrt()
    plan = plan_build(trt.__version__, precision)
    source = onnx_files.get(plan.onnx_precision)
    if source is None or not Path(source).is_file():
        raise ValueError(
            f"a TensorRT {trt.__version__} {precision} engine builds the {plan.onnx_precision} ONNX "
            f"file; export it too (--{plan.onnx_precision})"
        )
    sha = file_sha256(source)
    build = build_engine(Path(source), sha, engine_path, plan, profile, dynamic, cache_dir, workspace_gib)
    return build, Path(source), sha


class TensorRTRunner:
    """Run a serialised engine (name-based I/O API of TensorRT 10/11) with PyTorch CUDA buffers."""

    def __init__(self, path: str | os.PathLike):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailable("running a TensorRT engine needs a CUDA GPU")
        self.name = Path(path).name
        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT {trt.__version__} cannot deserialize {path}; rebuild it on this GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.has_logits = "logits" in self.outputs
        self.stream = torch.cuda.Stream()

    def _dtype(self, name: str):
        trt, torch = self._trt, self._torch
        table = {
            trt.DataType.UINT8: torch.uint8, trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
        }  # fmt: skip
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(images)).cuda()
            self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            buffers = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
                self.context.set_tensor_address(name, buffers[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log")
        self.stream.synchronize()
        return {name: t.cpu().numpy() for name, t in buffers.items()}
