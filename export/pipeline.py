"""``cluda export`` and ``cluda verify``: checkpoint -> verified artefacts with sidecars.

``export_model`` loads the checkpoint, builds the :class:`~export.graph.DeployModule`, traces it
once with ``torch.export``, writes ``model.onnx`` and checks it against PyTorch, then, as asked,
``model_fp16.onnx``, the INT8 ``model_int8.onnx``, the AOTInductor ``model.pt2`` and TensorRT
``model_<precision>.engine`` files, each with its sidecar and its own parity check. Every artefact
is written before the verdict; any artefact below its gates makes the export fail
(:class:`~export.verify.ParityError`) after the report, ``export_report.json``, is written.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cluda_deploy import __version__
from cluda_deploy.checkpoint import CheckpointInfo, load_segmenter
from cluda_deploy.config import EvalConfig
from cluda_deploy.sidecar import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    SidecarError,
    file_sha256,
    read_sidecar,
    static_dims,
    write_sidecar,
)
from export.graph import DeployModule, SizeRule, needs_static_shape, select_network
from export.images import Sample, calibration_images, folder_samples, generated_samples
from export.onnx_export import InputShape, trace, write_onnx
from export.options import DEFAULT_THRESHOLDS, ExportOptions, ParityThresholds
from export.verify import ParityError, ParityReport, check_parity, pytorch_reference

Echo = Callable[[str], None]
# Smallest image side a dynamic export accepts (more at native size for MiT, see min_side()).
MIN_SIDE = 32


@dataclass
class Prepared:
    """The network and protocol an export runs, resolved from the checkpoint and the options."""

    checkpoint: Path
    checkpoint_sha256: str
    info: CheckpointInfo
    network: nn.Module
    eval_cfg: EvalConfig
    size_rule: SizeRule
    hrda: str | None
    weights: str
    shape: InputShape

    def static_size(self) -> tuple[int, int] | None:
        if self.shape.height is None or self.shape.width is None:
            return None
        return self.shape.height, self.shape.width

    def typical_size(self) -> tuple[int, int]:
        """An example (h, w) to trace with: 1.5x the inference scale, or 2x the minimum side."""
        if self.size_rule.scale is not None:
            long_edge, short_edge = max(self.size_rule.scale), min(self.size_rule.scale)
            return 3 * short_edge // 2, 3 * long_edge // 2
        side = max(128, 2 * self.shape.min_side)
        return side, 2 * side

    def module(self, outputs: list[str], precision: str = "fp32") -> DeployModule:
        network = copy.deepcopy(self.network) if precision != "fp32" else self.network
        return DeployModule(
            network, self.info.mean, self.info.std, self.size_rule, self.eval_cfg, outputs, precision
        )

    def reference(self):
        return pytorch_reference(self.network, self.eval_cfg, self.info.mean, self.info.std)


def min_side(network: nn.Module, size_rule: SizeRule) -> int:
    """Smallest H/W a dynamic export takes.

    At native size every feature map must be at least 2 px (torch.export specialises size-1
    axes), i.e. twice the backbone's own minimum (``min_input_size``, 29 for MiT), rounded up to
    a multiple of 32; with a keep-ratio resize the network never sees the input size.
    """
    if size_rule.scale is not None:
        return MIN_SIDE
    backbone_min = int(getattr(getattr(network, "backbone", None), "min_input_size", 1))
    return max(MIN_SIDE, -(-2 * backbone_min // 32) * 32)


def prepare(
    checkpoint: str | Path,
    *,
    mode: str | None = None,
    scale: tuple[int, int] | None | str = "checkpoint",
    hrda: str | None = None,
    weights: str = "student",
    static: tuple[int | None, int, int] | None = None,
) -> Prepared:
    """Load the checkpoint and resolve the protocol: ``mode``/``scale`` override its eval config."""
    model, info = load_segmenter(checkpoint, weights=weights)
    eval_cfg = dataclasses.replace(info.config.eval)
    if mode is not None:
        if mode not in ("whole", "slide"):
            raise ValueError(f"unknown inference mode {mode!r}; choose whole or slide")
        eval_cfg.mode = mode
    if scale != "checkpoint":
        eval_cfg.scale = scale
    network, hrda_mode = select_network(model, hrda)
    why = needs_static_shape(eval_cfg.mode, hrda_mode)
    if why and static is None:
        raise ValueError(f"{why}: export it with --static HxW (or choose --mode whole / --hrda student)")
    if info.label_space.num_classes > 255:
        raise ValueError(f"{info.label_space.num_classes} classes do not fit the uint8 labels output")
    size_rule = SizeRule(tuple(eval_cfg.scale) if eval_cfg.scale is not None else None)
    side = min_side(network, size_rule)
    if static is not None:
        batch, height, width = static
        if min(height, width) < side:
            raise ValueError(f"--static {height}x{width} is below this model's minimum side {side}")
        shape = InputShape(batch, height, width, side)
    else:
        shape = InputShape(None, None, None, side)
    return Prepared(
        Path(checkpoint), file_sha256(checkpoint), info, network, eval_cfg, size_rule, hrda_mode,
        weights, shape,
    )  # fmt: skip


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "cluda_deploy": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
    }


def _output_specs(outputs: list[str], shape: InputShape, num_classes: int) -> list[dict]:
    batch, height, width = shape.as_list()[:3]
    specs = {
        "labels": {"dtype": "uint8", "shape": [batch, height, width], "description": "train ids (argmax)"},
        "logits": {"dtype": "float32", "shape": [batch, num_classes, height, width],
                   "description": "class scores at the input size"},
        "confidence": {"dtype": "float32", "shape": [batch, height, width],
                       "description": "largest softmax probability"},
    }  # fmt: skip
    return [{"name": name, **specs[name]} for name in outputs]


def sidecar_data(prepared: Prepared, backend: str, precision: str, outputs: list[str]) -> dict[str, Any]:
    """The sidecar of one artefact (``cluda_deploy.sidecar`` documents the schema)."""
    shape, rule = prepared.shape, prepared.size_rule
    inference_size: dict[str, Any] = {"rule": rule.name, "scale": list(rule.scale) if rule.scale else None,
                                      "description": rule.describe()}  # fmt: skip
    static = prepared.static_size()
    if static is not None:
        inference_size["size"] = list(rule(*static))
    dynamic = {str(i): n for i, n in enumerate(shape.as_list()[:3]) if isinstance(n, str)}
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "backend": backend,
        "precision": precision,
        "label_space": prepared.info.label_space.to_dict(),
        "normalization": {"mean": list(prepared.info.mean), "std": list(prepared.info.std),
                          "applied_in_graph": True},  # fmt: skip
        "input": {
            "name": "images", "dtype": "uint8", "layout": "NHWC", "channels": 3, "color": "RGB",
            "shape": shape.as_list(), "dynamic_axes": dynamic, "min_side": shape.min_side,
            "inference_size": inference_size,
        },  # fmt: skip
        "outputs": _output_specs(outputs, shape, prepared.info.label_space.num_classes),
        "inference": {
            "mode": prepared.eval_cfg.mode,
            "scale": list(rule.scale) if rule.scale else None,
            "crop_size": list(prepared.eval_cfg.crop_size),
            "stride": list(prepared.eval_cfg.stride),
            "hrda": prepared.hrda,
            "weights": prepared.weights,
        },
        "provenance": {
            **prepared.info.provenance,
            "checkpoint": str(prepared.checkpoint),
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        },
        "hashes": {"checkpoint_sha256": prepared.checkpoint_sha256},
    }


@dataclass
class ExportResult:
    artefacts: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, ParityReport] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def failures(self) -> list[str]:
        return [f"{name}: {'; '.join(r.failures())}" for name, r in self.reports.items() if not r.passed]

    def to_dict(self) -> dict:
        return {
            "artefacts": {k: str(v) for k, v in self.artefacts.items()},
            "parity": {k: r.to_dict() for k, r in self.reports.items()},
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "passed": not self.failures(),
        }


def image_sets(data: Path | None, max_images: int, generated: int) -> dict[str, list[Sample]]:
    sets = {"generated": generated_samples(generated) if generated else []}
    if data is not None:
        sets["data"] = folder_samples(data, max_images)
    if not any(sets.values()):
        raise ValueError("nothing to verify on: give --data DIR or --generated N > 0")
    return sets


class _Exporter:
    """One export run: keeps the prepared network, image sets and results together."""

    def __init__(self, prepared: Prepared, options: ExportOptions, out_dir: Path, echo: Echo):
        self.p, self.o, self.out, self.echo = prepared, options, out_dir, echo
        self.result = ExportResult()
        self.sets = image_sets(options.data, options.max_images, options.generated) if options.verify else {}
        self.batch = prepared.shape.batch or 1

    def timed(self, label: str, fn, *args):
        self.echo(f"  {label} ...")
        start = time.perf_counter()
        value = fn(*args)
        self.result.seconds[label] = time.perf_counter() - start
        self.echo(f"  {label}: {self.result.seconds[label]:.1f} s")
        return value

    def finish(
        self, key: str, path: Path, backend: str, precision: str, runner_fn, tensorrt: dict | None = None
    ) -> None:
        """Write the sidecar, run the parity check, record the report in the sidecar."""
        data = sidecar_data(self.p, backend, precision, self.o.outputs)
        if tensorrt is not None:
            data["tensorrt"] = tensorrt
            data["provenance"]["tensorrt_version"] = tensorrt["version"]
        write_sidecar(path, data)
        self.result.artefacts[key] = path
        if not self.o.verify:
            self.echo(f"wrote {path} (not verified: --no-verify)")
            return
        report = self.timed(f"verify {path.name}", lambda: check_parity(
            runner_fn(), self.sets, self.p.reference(), self.p.info.label_space, backend=backend,
            precision=precision, thresholds=self.o.thresholds[precision],
            static_size=self.p.static_size(), batch=self.batch))  # fmt: skip
        self.result.reports[key] = report
        write_sidecar(path, {**data, "parity": report.to_dict()})
        self.echo(report.table())

    def onnx(self, name: str, precision: str, program) -> Path:
        from export.runners import OnnxRunner

        path = self.timed(f"write {name}", write_onnx, program, self.out / name, self.o.outputs)
        self.finish(f"onnx_{precision}", path, "onnx", precision, lambda: OnnxRunner(path))
        return path


def export_model(
    checkpoint: str | Path, out_dir: str | Path, options: ExportOptions, echo: Echo = print
) -> ExportResult:
    """Export and verify everything ``options`` asks for into ``out_dir`` (see module docstring)."""
    out_dir = Path(out_dir)
    calib = _check_requests(options)
    prepared = prepare(checkpoint, mode=options.mode, scale=options.scale, hrda=options.hrda,
                       weights=options.weights, static=options.static)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Exporter(prepared, options, out_dir, echo)
    dims = ", ".join(map(str, prepared.shape.as_list()))
    echo(f"export {checkpoint} -> {out_dir}: input [{dims}] uint8 RGB; {prepared.size_rule.describe()}; "
         f"{prepared.eval_cfg.mode} inference")  # fmt: skip
    program = run.timed("torch.export", trace, prepared.module(options.outputs), prepared.shape,
                        prepared.typical_size())  # fmt: skip
    fp32_onnx = run.onnx("model.onnx", "fp32", program)
    if options.fp16:
        program16 = run.timed("torch.export fp16", trace, prepared.module(options.outputs, "fp16"),
                              prepared.shape, prepared.typical_size())  # fmt: skip
        run.onnx("model_fp16.onnx", "fp16", program16)
    if options.int8:
        _export_int8(run, fp32_onnx, calib)
    if options.aoti:
        _export_aoti(run, program)
    if options.trt:
        _export_tensorrt(run)
    (out_dir / "export_report.json").write_text(json.dumps(run.result.to_dict(), indent=2))
    if run.result.failures():
        raise ParityError("parity below the gates: " + " | ".join(run.result.failures()))
    return run.result


class OnnxRuntimeMissing(RuntimeError):
    """Neither onnxruntime nor onnxruntime-gpu is installed: nothing can verify an export."""


def require_onnxruntime() -> None:
    """Raise :class:`OnnxRuntimeMissing` with the install command when ``onnxruntime`` is absent
    (both the CPU and the GPU wheel provide that module)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise OnnxRuntimeMissing(
            "onnxruntime is not installed, and every export is verified with it: "
            "pip install -c constraints.txt -e '.[cpu]' (or '.[gpu]' on a CUDA machine)"
        )


def _check_requests(options: ExportOptions) -> list[Path] | None:
    """Fail before the slow work: no onnxruntime, missing calibration images, TensorRT absent."""
    require_onnxruntime()
    calib = None
    if options.int8:
        if options.calib is None:
            raise ValueError("--int8 needs --calib DIR: a folder of target-domain training images")
        calib = calibration_images(options.calib, options.calib_max_images)
    if options.trt:
        from export.tensorrt import gpu_identity, import_tensorrt

        import_tensorrt()
        gpu_identity()
    return calib


def _export_int8(run: _Exporter, fp32_onnx: Path, calib: list[Path]) -> None:
    from export.quantize import FolderCalibrationReader, quantize_int8
    from export.runners import OnnxRunner

    reader = FolderCalibrationReader(calib, run.p.static_size(), run.batch)
    run.echo(f"  INT8 calibration on {len(calib)} images from {run.o.calib} ({run.o.calib_method})")
    path = run.timed("quantize model_int8.onnx", quantize_int8, fp32_onnx, run.out / "model_int8.onnx",
                     reader, run.o.calib_method)  # fmt: skip
    run.finish("onnx_int8", path, "onnx", "int8", lambda: OnnxRunner(path))


def _export_aoti(run: _Exporter, program) -> None:
    from export.aoti import write_aoti
    from export.runners import AotiRunner

    device = run.o.aoti_device
    if device != "cpu":  # the ONNX program was traced on the CPU; a CUDA package needs its own
        module = copy.deepcopy(run.p.module(run.o.outputs)).to(device)  # the reference stays on the CPU
        program = run.timed(f"torch.export on {device}", trace, module, run.p.shape, run.p.typical_size(), device)
    path, _ = run.timed("compile model.pt2 (AOTInductor)", write_aoti, program, run.out / "model.pt2")
    run.finish("aoti", path, "aoti", "fp32", lambda: AotiRunner(path, run.o.outputs, device))


def _export_tensorrt(run: _Exporter) -> None:
    from export.tensorrt import DEFAULT_CACHE, TensorRTRunner, build_precision, profile_for

    precisions = [p for p, wanted in (("fp16", run.o.fp16), ("int8", run.o.int8)) if wanted] or ["fp32"]
    shape = run.p.shape
    profile = profile_for((shape.batch, shape.height, shape.width), shape.min_side,
                          run.o.trt_min, run.o.trt_opt, run.o.trt_max)  # fmt: skip
    onnx_files = {p: run.out / n for p, n in (("fp32", "model.onnx"), ("fp16", "model_fp16.onnx"),
                                              ("int8", "model_int8.onnx"))}  # fmt: skip
    for precision in precisions:
        engine = run.out / f"model_{precision}.engine"
        build, source, sha = run.timed(
            f"build {engine.name}", build_precision, precision, onnx_files, engine, profile, shape.dynamic,
            run.o.trt_cache or DEFAULT_CACHE, run.o.trt_workspace_gib,
        )  # fmt: skip
        run.finish(f"trt_{precision}", engine, "tensorrt", precision,
                   lambda engine=engine: TensorRTRunner(engine), build.sidecar_section(source, sha))  # fmt: skip


# --------------------------------------------------------------------------- verify later


def verify_model(
    model_path: str | Path,
    checkpoint: str | Path,
    data: Path | None = None,
    max_images: int = 20,
    generated: int = 3,
    device: str = "cpu",
    thresholds: dict[str, ParityThresholds] | None = None,
    echo: Echo = print,
) -> ParityReport:
    """``cluda verify``: re-run the parity check of an exported artefact against its checkpoint."""
    from export.runners import AotiRunner, OnnxRunner

    sidecar = read_sidecar(model_path)
    sha = file_sha256(checkpoint) if Path(checkpoint).is_file() else None
    if sha is not None and sha != sidecar["hashes"].get("checkpoint_sha256"):
        raise SidecarError(
            f"{model_path} was exported from another checkpoint (sha256 differs from "
            f"{checkpoint}); pass the one it came from: {sidecar['provenance'].get('checkpoint', '?')}"
        )
    inference = sidecar.get("inference", {})
    scale = inference.get("scale")
    batch, height, width, _ = static_dims(sidecar)
    prepared = prepare(
        checkpoint, mode=inference.get("mode"), scale=tuple(scale) if scale else None,
        hrda=inference.get("hrda"), weights=inference.get("weights", "student"),
        static=(batch, height, width) if height and width else None,
    )  # fmt: skip
    outputs = [o["name"] for o in sidecar["outputs"]]
    backend = sidecar["backend"]
    if backend == "onnx":
        runner = OnnxRunner(model_path, device)
    elif backend == "aoti":
        runner = AotiRunner(model_path, outputs, "cuda" if device == "cuda" else "cpu")
    else:
        from export.tensorrt import TensorRTRunner

        runner = TensorRTRunner(model_path)
    precision = sidecar["precision"]
    report = check_parity(
        runner, image_sets(data, max_images, generated), prepared.reference(), prepared.info.label_space,
        backend=backend, precision=precision, thresholds=(thresholds or DEFAULT_THRESHOLDS)[precision],
        static_size=prepared.static_size(), batch=batch or 1,
    )  # fmt: skip
    echo(report.table())
    return report
