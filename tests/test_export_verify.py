"""The parity measures on hand-worked arrays, the gates, the image sets and the calibration reader."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from cluda_deploy.labels import cityscapes_label_space
from export.images import Sample, calibration_images, find_label, folder_samples, generated_samples
from export.onnx_export import with_logits_output
from export.options import DEFAULT_THRESHOLDS, ParityThresholds, apply_gate
from export.quantize import FolderCalibrationReader
from export.verify import ParityReport, SetParity, compare_set
from tests.real_fixtures import real_fixture

LABELS = cityscapes_label_space()


class FakeRunner:
    """Returns fixed outputs, as an artefact would."""

    name = "fake.onnx"

    def __init__(self, labels: np.ndarray, logits: np.ndarray | None):
        self.labels, self.logits = labels, logits
        self.has_logits = logits is not None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = {"labels": self.labels[None].astype(np.uint8)}
        if self.logits is not None:
            out["logits"] = self.logits[None]
        return out


def test_compare_set_hand_worked():
    # 2x2 image, 19 classes. PyTorch says classes [[0, 1], [2, 2]] with logit 5 for the winner;
    # the artefact says [[0, 1], [2, 3]], its logits 0.25 off at one entry.
    ref = np.zeros((19, 2, 2), np.float32)
    for (y, x), c in np.ndenumerate(np.array([[0, 1], [2, 2]])):
        ref[c, y, x] = 5.0
    art_logits = ref.copy()
    art_logits[3, 1, 1] += 0.25
    art_labels = np.array([[0, 1], [2, 3]])
    label = np.array([[0, 1], [2, 255]], np.uint8)  # the disputed pixel is ignored in the mIoU
    sample = Sample("a", np.zeros((2, 2, 3), np.uint8), label)
    result = compare_set("set", [sample], lambda image: ref, FakeRunner(art_labels, art_logits), LABELS)
    assert result.images == 1 and result.pixel_agreement == 0.75
    assert result.max_logit_error == 0.25 and result.logit_scale == 5.0 and result.relative_logit_error == 0.05
    # classes 0, 1, 2 each one correct pixel in both: IoU 1 each -> mIoU 1, no drop
    assert result.miou_reference == 1.0 and result.miou_artefact == 1.0 and result.miou_drop == 0.0


def test_compare_set_without_logits_or_labels():
    ref = np.zeros((19, 1, 2), np.float32)
    ref[4] = 1.0
    sample = Sample("a", np.zeros((1, 2, 3), np.uint8))
    result = compare_set("set", [sample], lambda image: ref, FakeRunner(np.array([[4, 5]]), None), LABELS)
    assert result.max_logit_error is None and result.relative_logit_error is None
    assert result.pixel_agreement == 0.5 and result.miou_reference is None and result.miou_drop is None


def test_report_gates_and_table():
    gate = ParityThresholds(max_logit_error=1e-3, min_pixel_agreement=0.99, max_miou_drop=0.5)
    good = SetParity("generated", 3, 1e-4, 10.0, 1.0, 0.5, 0.5)
    bad = SetParity("data", 2, 1.0, 10.0, 0.98, 0.50, 0.49)  # rel 0.1, agreement 98 %, drop 1 point
    assert ParityReport("m.onnx", "onnx", "fp32", [good], gate).passed
    report = ParityReport("m.onnx", "onnx", "fp32", [good, bad], gate)
    assert report.failures() == [
        "data: relative logit error 1.00e-01 > 1e-03",
        "data: pixel agreement 98.000% < 99.0%",
        "data: mIoU drop 1.00 > 0.5 points",
    ]
    table = report.table()
    assert "generated" in table and "FAIL: data: relative logit error" in table
    nan = SetParity("data", 1, None, None, 1.0, math.nan, math.nan)  # no class present at all
    assert ParityReport("m", "onnx", "int8", [nan], gate).passed
    assert report.to_dict()["sets"][1]["miou_drop_points"] == pytest.approx(1.0)


def test_apply_gate():
    gates = apply_gate(DEFAULT_THRESHOLDS, "int8.min_pixel_agreement=0.9")
    assert gates["int8"].min_pixel_agreement == 0.9 and DEFAULT_THRESHOLDS["int8"].min_pixel_agreement == 0.95
    assert apply_gate(gates, "fp32.max_logit_error=none")["fp32"].max_logit_error is None
    for bad in ("int8.agreement=1", "bf16.max_miou_drop=1", "int8", "int8.max_miou_drop=lots"):
        with pytest.raises(ValueError, match="--gate"):
            apply_gate(DEFAULT_THRESHOLDS, bad)


def _argmax_graph(argmaxes: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 2, 2])
    nodes = [helper.make_node("Relu", ["images"], ["scores"])]
    outputs = []
    for i in range(argmaxes):
        nodes.append(helper.make_node("ArgMax", ["scores"], [f"labels{i}"], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info(f"labels{i}", TensorProto.INT64, [1, 2, 2]))
    return helper.make_model(helper.make_graph(nodes, "g", [x], outputs))


def test_with_logits_output_exposes_the_argmax_input():
    model = with_logits_output(_argmax_graph(1))
    assert [o.name for o in model.graph.output] == ["labels0", "scores"]
    with pytest.raises(ValueError, match="expected one ArgMax"):
        with_logits_output(_argmax_graph(2))


def test_find_label_reads_every_cityscapes_form(tmp_path):
    pseudo = real_fixture("mmseg_pseudo_cityscapes")
    image = next(pseudo.rglob("*_leftImg8bit.png"))
    train_ids = find_label(image)
    assert train_ids.shape == (128, 256) and set(np.unique(train_ids)) <= set(range(19)) | {255}
    colour = real_fixture("fastscnn_cityscapes")
    label = find_label(next(colour.rglob("*_leftImg8bit.png")))
    assert label.shape == (1024, 2048) and 0 in label and 13 in label  # road, car
    # labelIds only: mapped with the cityscapesscripts table (7 road -> 0, 26 car -> 13, 1 -> 255)
    folder = tmp_path / "leftImg8bit" / "val" / "x"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(folder / "x_000_leftImg8bit.png")
    gt = tmp_path / "gtFine" / "val" / "x"
    gt.mkdir(parents=True)
    Image.fromarray(np.array([[7, 26], [1, 7]], np.uint8)).save(gt / "x_000_gtFine_labelIds.png")
    assert find_label(folder / "x_000_leftImg8bit.png").tolist() == [[0, 13], [255, 0]]
    samples = folder_samples(tmp_path)
    assert [s.name for s in samples] == ["leftImg8bit/val/x/x_000_leftImg8bit.png"]  # label files skipped
    assert find_label(tmp_path / "plain.png") is None


def test_generated_samples_sizes_and_labels():
    samples = generated_samples(4)
    assert [s.image.shape[:2] for s in samples] == [(128, 256), (97, 203), (200, 150), (128, 256)]
    assert all(s.label.shape == s.image.shape[:2] and s.label.max() <= 255 for s in samples)
    assert set(np.unique(samples[0].label)) - {255} <= set(range(19))


def test_calibration_images_and_reader(tmp_path):
    for i in range(10):
        Image.fromarray(np.full((8, 12, 3), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    paths = calibration_images(tmp_path, 4)
    assert [p.name for p in paths] == ["00.png", "02.png", "05.png", "07.png"]  # spread evenly
    reader = FolderCalibrationReader(paths, size=(16, 24), batch=2)
    batches = list(reader)
    assert len(batches) == 4 and batches[0]["images"].shape == (2, 16, 24, 3)
    assert batches[0]["images"].dtype == np.uint8 and int(batches[1]["images"][0, 0, 0, 0]) == 2
    reader.set_range(1, 2)
    assert len(list(reader)) == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        calibration_images(tmp_path / "missing", 4)
