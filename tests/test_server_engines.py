"""Engines on real model files: a demo checkpoint (torch), ONNX graphs exported here with the
dynamo exporter to the export contract (dynamic and static), an AOTInductor package, and the
errors for missing sidecars, unknown files and a missing tensorrt module.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cluda_deploy.checkpoint import save_checkpoint
from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, get_preset
from cluda_deploy.inference import segment_image
from cluda_deploy.labels import cityscapes_label_space
from cluda_deploy.models import create_segmenter
from cluda_deploy.sidecar import SIDECAR_FORMAT
from cluda_deploy.sidecar import write_sidecar as write_export_sidecar
from server.engines import EngineError, load_engine
from server.engines.base import fit_min_side, resize_batch


def make_demo_checkpoint(path):
    """A demo-preset checkpoint with seeded random weights."""
    torch.manual_seed(0)
    cfg = get_preset("demo")
    model = create_segmenter(cfg.model)
    return save_checkpoint(path, config=cfg, label_space=cityscapes_label_space(), state_dict=model.state_dict())


class TinyContractModel(nn.Module):
    """A tiny segmenter wrapped to the export contract: uint8 (N, H, W, 3) in, labels out.

    Normalisation, a stride-2 conv "network" and the resize back to the input size live inside
    the graph, as in ``export/``. Outputs ``labels`` and ``confidence`` (or ``logits``).
    """

    def __init__(self, second: str = "confidence"):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 19, 3, padding=1)
        self.second = second
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor):
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        logits = self.conv(F.avg_pool2d(x, 2, ceil_mode=True))
        logits = F.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
        if self.second == "logits":
            return logits.argmax(1).to(torch.uint8), logits
        conf, labels = logits.softmax(1).max(1)
        return labels.to(torch.uint8), conf


def write_sidecar(model_path, backend: str, outputs: list[str], shape: list) -> None:
    """The export contract's sidecar, written with ``cluda_deploy.sidecar.write_sidecar``."""
    write_export_sidecar(model_path, {
        "format": SIDECAR_FORMAT, "version": 1, "backend": backend, "precision": "fp32",
        "label_space": cityscapes_label_space().to_dict(),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "applied_in_graph": True},
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "channels": 3, "color": "RGB",
                  "shape": shape, "min_side": 8},
        "outputs": [{"name": name} for name in outputs], "provenance": {"test": True}, "hashes": {},
    })  # fmt: skip


def export_onnx(module: nn.Module, path, example: torch.Tensor, dynamic: bool, outputs: list[str]):
    dims = None
    if dynamic:
        dims = {"images": {0: torch.export.Dim("N", max=64), 1: torch.export.Dim("H", min=8, max=4096),
                           2: torch.export.Dim("W", min=8, max=4096)}}  # fmt: skip
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, input_names=["images"],
                      output_names=outputs, dynamic_shapes=dims, opset_version=18, verbose=False)  # fmt: skip
    shape = ["N", "H", "W", 3] if dynamic else list(example.shape)
    write_sidecar(path, "onnx", outputs, shape)
    return path


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    return make_demo_checkpoint(tmp_path_factory.mktemp("ckpt") / "demo.pt")


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    dynamic = export_onnx(TinyContractModel(), root / "dynamic.onnx",
                          torch.zeros(2, 24, 32, 3, dtype=torch.uint8), True, ["labels", "confidence"])  # fmt: skip
    static = export_onnx(TinyContractModel("logits"), root / "static.onnx",
                         torch.zeros(1, 24, 32, 3, dtype=torch.uint8), False, ["labels", "logits"])  # fmt: skip
    return {"dynamic": dynamic, "static": static}


def _images(n: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(n * height + width).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_torch_engine_equals_the_predict_protocol(demo_checkpoint):
    engine = load_engine(demo_checkpoint, "cpu")
    images = _images(2, 37, 53)
    out = engine.infer(images, confidence=True)
    assert out.labels.shape == (2, 37, 53) and out.labels.dtype == np.uint8
    assert out.confidence.shape == (2, 37, 53) and out.confidence.dtype == np.float32
    cfg = get_preset("demo").eval
    for i in range(2):  # the batch gives what `cluda predict` gives image by image
        label, conf = segment_image(engine.model, images[i], cfg, IMAGENET_MEAN, IMAGENET_STD)
        np.testing.assert_array_equal(out.labels[i], label)
        np.testing.assert_allclose(out.confidence[i], conf, atol=1e-5)
    np.testing.assert_array_equal(engine.infer(images).labels, out.labels)
    assert engine.infer(images).confidence is None
    info = engine.info
    assert info.backend == "torch" and info.label_space.num_classes == 19 and info.device == "cpu"
    assert info.default_warmup_sizes == [(512, 1024)] and info.provenance["preset"] == "demo"
    assert len(info.sha256) == 64


def test_onnx_engine_dynamic_matches_pytorch(onnx_models):
    engine = load_engine(onnx_models["dynamic"], "cpu")
    assert engine.info.static_size is None and engine.info.max_batch is None
    assert engine.info.details["providers"] == ["CPUExecutionProvider"]
    assert engine.info.has_confidence and engine.info.provenance == {"test": True}
    images = _images(3, 41, 67)  # another size than the export example
    out = engine.infer(images, confidence=True)
    with torch.no_grad():
        labels, conf = TinyContractModel()(torch.from_numpy(images))
    assert (out.labels == labels.numpy()).mean() > 0.999  # float rounding may flip a tie
    np.testing.assert_allclose(out.confidence, conf.numpy(), atol=1e-4)
    assert engine.infer(images).confidence is None


def test_images_below_the_minimum_side_are_upscaled_and_answered_at_their_size(demo_checkpoint, onnx_models):
    torch_engine = load_engine(demo_checkpoint, "cpu")
    assert torch_engine.info.min_side == 29  # the demo MiT's key/value reductions need that much
    out = torch_engine.infer(_images(2, 8, 45), confidence=True)
    assert out.labels.shape == (2, 8, 45) and out.confidence.shape == (2, 8, 45)
    onnx_engine = load_engine(onnx_models["dynamic"], "cpu")
    assert onnx_engine.info.min_side == 8 and onnx_engine.infer(_images(1, 5, 6)).labels.shape == (1, 5, 6)


def test_fit_min_side_hand_worked():
    assert fit_min_side((20, 45), 29) == (29, 65)  # 45 * 29 / 20 = 65.25
    assert fit_min_side((8, 8), 29) == (29, 29)
    assert fit_min_side((100, 30), 29) == (100, 30)


def test_onnx_engine_static_resizes_and_loops_over_the_batch(onnx_models):
    engine = load_engine(onnx_models["static"], "cpu")
    assert engine.info.static_size == (24, 32) and engine.info.max_batch == 1
    images = _images(3, 37, 53)
    out = engine.infer(images, confidence=True)  # confidence from the logits output
    assert out.labels.shape == (3, 37, 53) and out.confidence.shape == (3, 37, 53)
    with torch.no_grad():
        labels, logits = TinyContractModel("logits")(torch.from_numpy(resize_batch(images, (24, 32))))
    small = engine.infer(resize_batch(images, (24, 32)), confidence=True)
    assert (small.labels == labels.numpy()).mean() > 0.999
    np.testing.assert_allclose(small.confidence, logits.softmax(1).max(1).values.numpy(), atol=1e-4)


def test_engine_files_fail_with_the_fix(tmp_path, onnx_models, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a checkpoint"):
        load_engine(tmp_path / "missing.onnx")
    unknown = tmp_path / "model.h5"
    unknown.write_bytes(b"x")
    with pytest.raises(EngineError, match=r"unknown model type \.h5; known: .*\.onnx"):
        load_engine(unknown)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(onnx_models["dynamic"].read_bytes())
    with pytest.raises(EngineError, match=r"has no sidecar bare\.onnx\.json.*re-export"):
        load_engine(bare, "cpu")
    bare.with_name("bare.onnx.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(EngineError, match="not a cluda-deploy sidecar"):
        load_engine(bare, "cpu")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    write_sidecar(garbage, "onnx", ["labels"], ["N", "H", "W", 3])
    with pytest.raises(EngineError, match="onnxruntime cannot load"):
        load_engine(garbage, "cpu")
    garbage.write_bytes(b"replaced after export")
    with pytest.raises(EngineError, match="does not match its sidecar"):
        load_engine(garbage, "cpu")
    with pytest.raises(EngineError, match="has only the CPU provider"):
        load_engine(onnx_models["dynamic"], "cuda:0")


def test_tensorrt_engine_without_tensorrt_says_how_to_get_it(tmp_path, monkeypatch):
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"\0" * 16)
    write_sidecar(plan, "tensorrt", ["labels"], [1, 512, 1024, 3])
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(EngineError, match=r"needs the 'tensorrt' Python package.*serve the \.onnx"):
        load_engine(plan, "cuda:0")


@pytest.mark.slow
def test_aoti_engine_runs_a_compiled_package(tmp_path):
    module = TinyContractModel().eval()
    example = torch.zeros(1, 24, 32, 3, dtype=torch.uint8)
    program = torch.export.export(module, (example,))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "tiny.pt2"))
    write_sidecar(tmp_path / "tiny.pt2", "aoti", ["labels", "confidence"], [1, 24, 32, 3])
    engine = load_engine(path, "cpu")
    assert engine.info.backend == "aoti" and engine.info.static_size == (24, 32)
    images = _images(2, 24, 32)
    out = engine.infer(images, confidence=True)
    with torch.no_grad():
        labels, conf = module(torch.from_numpy(images))
    np.testing.assert_array_equal(out.labels, labels.numpy())
    np.testing.assert_allclose(out.confidence, conf.numpy(), atol=1e-5)
