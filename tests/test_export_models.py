"""Every backbone/head combination ``create_segmenter`` builds, HRDA (full and student) and the
AOTInductor package, each exported and checked against PyTorch on tiny static shapes."""

from __future__ import annotations

import dataclasses

import pytest

from cluda_deploy.config import HRDAConfig, ModelConfig, get_preset
from cluda_deploy.models import backbone_names, head_names
from cluda_deploy.sidecar import check_input_shape, read_sidecar
from export.options import ExportOptions
from export.pipeline import export_model
from tests.test_export_graph import make_checkpoint

STATIC = (1, 64, 96)  # (N, H, W): static shapes keep the trace to seconds


def _export(tmp_path, model_cfg, **options):
    ckpt = make_checkpoint(tmp_path / "c.pt", model_cfg, options.pop("eval_cfg", None))
    opts = ExportOptions(static=options.pop("static", STATIC), generated=1, **options)
    return export_model(ckpt, tmp_path / "out", opts, echo=lambda _: None)


def test_every_backbone_and_head_is_covered():
    # MiT-B0..B5 share mit_tiny's code (only widths and depths differ, mit.MIT_VARIANTS).
    assert set(backbone_names()) == {"mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mit_tiny",
                                     "resnet101"}  # fmt: skip
    assert set(head_names()) == {"daformer", "segformer", "deeplabv2"}


# mit_tiny + daformer (the demo model) is exported with dynamic shapes in test_export_onnx.py.
@pytest.mark.parametrize("head", ["segformer", "deeplabv2"])
def test_mit_heads_export_with_parity(tmp_path, head):
    cfg = ModelConfig(backbone="mit_tiny", head=head, embed_dim=32, fusion_channels=32, drop_path_rate=0.0)
    result = _export(tmp_path, cfg, confidence=True)
    report = result.reports["onnx_fp32"]
    assert report.passed, report.table()
    sidecar = read_sidecar(result.artefacts["onnx_fp32"])
    assert sidecar["input"]["shape"] == [1, 64, 96, 3] and sidecar["input"]["inference_size"]["size"] == [64, 96]
    assert [o["name"] for o in sidecar["outputs"]] == ["labels", "confidence"]
    check_input_shape(sidecar, (1, 64, 96, 3))


@pytest.mark.slow
def test_resnet101_deeplabv2_exports_with_parity(tmp_path):
    cfg = ModelConfig(backbone="resnet101", head="deeplabv2")
    result = _export(tmp_path, cfg)
    assert result.reports["onnx_fp32"].passed, result.reports["onnx_fp32"].table()


TINY_HRDA = ModelConfig(
    backbone="mit_tiny", embed_dim=32, fusion_channels=32, drop_path_rate=0.0,
    hrda=HRDAConfig(enabled=True, detail_crop_size=(32, 32), detail_stride=(16, 16), attention_embed_dim=16),
)  # fmt: skip


@pytest.mark.slow
def test_hrda_full_exports_with_parity(tmp_path):
    # Each 64x64 input: a 32x32 context pass + 9 detail crops, fused by scale attention. (The
    # student is a plain Segmenter: test_export_graph.py checks it is HRDA's backbone + head.)
    result = _export(tmp_path, TINY_HRDA, static=(1, 64, 64))
    report = result.reports["onnx_fp32"]
    assert report.passed, report.table()
    assert read_sidecar(result.artefacts["onnx_fp32"])["inference"]["hrda"] == "full"


@pytest.mark.slow
def test_aoti_package_matches_pytorch(tmp_path):
    # AOTInductor compiles C++ for the CPU here: about a minute on 2 cores for this tiny model.
    cfg = dataclasses.replace(get_preset("demo").model)
    result = _export(tmp_path, cfg, aoti=True, logits=True)
    report = result.reports["aoti"]
    assert report.passed, report.table()
    assert report.sets[0].relative_logit_error is not None and report.sets[0].relative_logit_error < 1e-4
    sidecar = read_sidecar(result.artefacts["aoti"])
    assert sidecar["backend"] == "aoti" and sidecar["file"] == "model.pt2"
