"""``cluda export`` / ``cluda verify`` end to end on the demo-size model: one dynamic-shape export
(ONNX + INT8) checked on generated images and the real Cityscapes fixtures, its I/O contract in
onnxruntime, the keep-ratio resize in a dynamic graph, the parity gates catching a broken model,
and clear errors for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from cluda_deploy.cli import main
from cluda_deploy.config import EvalConfig
from cluda_deploy.inference import segment_logits
from cluda_deploy.sidecar import read_sidecar, write_sidecar
from export.graph import DeployModule, SizeRule
from export.onnx_export import InputShape, trace, write_onnx
from export.runners import OnnxRunner
from tests.real_fixtures import real_fixture
from tests.test_export_graph import MEAN, STD, make_checkpoint

# An untrained network's class scores are nearly tied, so INT8 rounding flips about 10 % of its
# pixels; the default 95 % gate is for trained models (BENCHMARKS.md has the demo model's).
UNTRAINED_INT8_GATE = "int8.min_pixel_agreement=0.8"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One dynamic export of the demo model (native size, as the demo preset) with logits,
    confidence and INT8, verified on real frames. A keep-ratio resize makes the symbolic trace
    about 4x slower; test_keep_ratio_resize_in_a_dynamic_graph covers it on a small network."""
    root = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(root / "demo.pt", iteration=1)
    labelled = real_fixture("mmseg_pseudo_cityscapes")
    calib = real_fixture("espnet_cityscapes")
    out = root / "out"
    result = CliRunner().invoke(main, [
        "export", "-c", str(ckpt), "-o", str(out), "--logits", "--confidence", "--int8",
        "--calib", str(calib), "--data", str(labelled), "--generated", "2", "--gate", UNTRAINED_INT8_GATE,
    ])  # fmt: skip
    return {"ckpt": ckpt, "out": out, "result": result, "labelled": labelled}


def test_export_cli_writes_verified_artefacts(exported):
    result, out = exported["result"], exported["out"]
    assert result.exit_code == 0, result.output
    assert "parity of model.onnx (onnx, fp32)" in result.output and "-> PASS" in result.output
    for name in ("model.onnx", "model_int8.onnx"):
        assert (out / name).is_file() and (out / f"{name}.json").is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and set(report["parity"]) == {"onnx_fp32", "onnx_int8"}
    fp32 = report["parity"]["onnx_fp32"]["sets"]
    assert [s["name"] for s in fp32] == ["generated", "data"] and fp32[1]["images"] == 1
    assert fp32[1]["relative_logit_error"] < 1e-4 and fp32[1]["pixel_agreement"] > 0.999
    assert fp32[1]["miou_reference"] is not None  # the fixture's labelTrainIds were found
    int8 = read_sidecar(out / "model_int8.onnx")
    assert int8["precision"] == "int8" and int8["parity"]["passed"]


def test_onnx_io_contract_dynamic_shapes(exported):
    model = onnx.load(str(exported["out"] / "model.onnx"))
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "images" and dims == ["batch", "height", "width", 3]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs == {"labels": onnx.TensorProto.UINT8, "logits": onnx.TensorProto.FLOAT,
                       "confidence": onnx.TensorProto.FLOAT}  # fmt: skip
    assert model.opset_import[0].version == 18

    from cluda_deploy.checkpoint import load_segmenter

    network, info = load_segmenter(exported["ckpt"])
    runner = OnnxRunner(exported["out"] / "model.onnx")
    rng = np.random.default_rng(0)
    for shape in ((1, 128, 256), (2, 97, 203), (1, 300, 150)):  # batch 2, odd and portrait sizes
        images = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        got = runner(images)
        assert got["labels"].shape == shape and got["labels"].dtype == np.uint8
        assert got["confidence"].shape == shape and got["logits"].shape == (shape[0], 19, *shape[1:])
        for i in range(shape[0]):
            ref = segment_logits(network, images[i], info.config.eval, info.mean, info.std)[0].numpy()
            np.testing.assert_allclose(got["logits"][i], ref, atol=1e-3, rtol=0)
            assert (got["labels"][i] == ref.argmax(0)).mean() > 0.999


class StrideFourNet(torch.nn.Module):
    """A stand-in segmenter: one stride-4 conv to 19 classes (what the graph wraps is the same)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 19, 4, stride=4)

    def forward(self, x):
        return self.conv(x)


def test_keep_ratio_resize_in_a_dynamic_graph(tmp_path):
    scale = (256, 128)
    module = DeployModule(StrideFourNet(), MEAN, STD, SizeRule(scale), EvalConfig(scale=scale), ("labels", "logits"))
    program = trace(module, InputShape(None, None, None, 32), (192, 384))
    runner = OnnxRunner(write_onnx(program, tmp_path / "keep.onnx", ["labels", "logits"]))
    rng = np.random.default_rng(1)
    # Landscape, portrait, upscaled, a GTA5-like frame and an odd size: every size is its own.
    for height, width in ((128, 256), (300, 150), (40, 90), (1052, 1914), (97, 203)):
        image = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        with torch.no_grad():
            ref_labels, ref_logits = module(torch.from_numpy(image))
        got = runner(image)
        # onnxruntime and PyTorch round resize coordinates differently at non-integer factors.
        np.testing.assert_allclose(got["logits"], ref_logits.numpy(), atol=1e-3, rtol=0)
        assert (got["labels"] == ref_labels.numpy()).mean() > 0.999


def test_int8_graph_is_qdq(exported):
    model = onnx.load(str(exported["out"] / "model_int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ArgMax" in ops
    scales = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert scales  # activations quantised, not only weights


def test_verify_later_and_json(exported, tmp_path):
    out_json = tmp_path / "verify.json"
    result = CliRunner().invoke(main, [
        "verify", str(exported["out"] / "model_int8.onnx"), "-c", str(exported["ckpt"]),
        "--data", str(exported["labelled"]), "--generated", "1", "--json", str(out_json),
        "--gate", UNTRAINED_INT8_GATE,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "parity of model_int8.onnx (onnx, int8)" in result.output
    report = json.loads(out_json.read_text())
    assert report["passed"] and report["sets"][1]["miou_drop_points"] is not None


def test_verify_fails_a_model_that_drifted(exported, tmp_path):
    # A copy of the exported graph with one weight changed, re-sidecared: verify must catch it.
    model = onnx.load(str(exported["out"] / "model.onnx"))
    weight = next(w for w in model.graph.initializer if "conv_seg.weight" in w.name)
    values = onnx.numpy_helper.to_array(weight).copy()
    values[3] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    write_sidecar(broken, json.loads((exported["out"] / "model.onnx.json").read_text()))
    result = CliRunner().invoke(main, ["verify", str(broken), "-c", str(exported["ckpt"]), "--generated", "2"])
    assert result.exit_code != 0
    assert "FAIL" in result.output and "parity below the gates" in result.output


def test_verify_rejects_foreign_onnx_and_other_checkpoint(exported, tmp_path):
    foreign = tmp_path / "foreign.onnx"
    shutil.copy(exported["out"] / "model.onnx", foreign)  # same bytes, no sidecar
    result = CliRunner().invoke(main, ["verify", str(foreign), "-c", str(exported["ckpt"])])
    assert result.exit_code != 0 and "has no sidecar foreign.onnx.json" in result.output
    other = make_checkpoint(tmp_path / "other.pt", eval_cfg=EvalConfig(mode="whole", scale=(512, 256)))
    result = CliRunner().invoke(main, ["verify", str(exported["out"] / "model.onnx"), "-c", str(other)])
    assert result.exit_code != 0 and "was exported from another checkpoint" in result.output
    assert "Traceback" not in result.output


def test_export_bad_inputs_fail_before_work(tmp_path):
    not_ckpt = tmp_path / "model.pt"
    not_ckpt.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, ["export", "-c", str(not_ckpt), "-o", str(tmp_path / "o")])
    assert result.exit_code != 0 and "not a readable cluda-deploy checkpoint" in result.output
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    ckpt = make_checkpoint(tmp_path / "c.pt")
    result = CliRunner().invoke(main, ["export", "-c", str(ckpt), "-o", str(tmp_path / "o"), "--int8",
                                       "--calib", str(empty)])  # fmt: skip
    assert result.exit_code != 0 and f"calibration folder {empty} has no images" in result.output
    result = CliRunner().invoke(main, ["export", "-c", str(ckpt), "-o", str(tmp_path / "o"), "--int8"])
    assert result.exit_code != 0 and "--int8 needs --calib DIR" in result.output
    result = CliRunner().invoke(main, ["export", "-c", str(ckpt), "-o", str(tmp_path / "o"), "--static", "12x"])
    assert result.exit_code != 0 and "--static takes HxW or NxHxW" in result.output
    assert not (tmp_path / "o").exists()
