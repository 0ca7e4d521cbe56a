"""Confusion-matrix IoU: hand-worked values and agreement with cityscapesscripts on real frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cluda_deploy.labels import (
    cityscapes_id_to_train_id_lut,
    cityscapes_label_space,
    label_space_for_source,
    train_id_to_cityscapes_id_lut,
)
from cluda_deploy.metrics import ConfusionMatrix, SegmentationScores, mean_iou
from tests.real_fixtures import real_fixture


def test_iou_hand_worked():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, gt)
    # class 0: TP 1, FP 1 (gt 2 -> 0), FN 1 (gt 0 -> 1) => 1/3; class 1: TP 2, FP 1 => 2/3;
    # class 2: TP 1, FN 1 => 1/2; class 3: never present => NaN. Ignored pixels count nowhere.
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])
    assert mean_iou(iou) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert mean_iou(iou, [1, 2]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert cm.matrix.sum() == 6


def test_predicted_but_absent_class_scores_zero():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    assert cm.iou()[1] == 0.0  # predicted, no ground truth: IoU 0, not NaN


def test_out_of_space_ids_are_rejected():
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="another label space"):
        cm.update(np.array([5]), np.array([0]))


def test_synthia_subsets_reported():
    space = label_space_for_source("synthia")
    cm = ConfusionMatrix(19)
    ids = np.arange(19)
    cm.update(ids, ids)
    scores = SegmentationScores.from_confusion(cm, space, num_images=1)
    assert set(scores.subsets) == {"mIoU16", "mIoU13"}
    assert scores.to_dict()["mIoU16"] == 1.0
    assert "mIoU16" in scores.table()


def _cityscapes_eval(tmp_path, predictions_train_ids, gt_label_ids_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    to_id = train_id_to_cityscapes_id_lut()
    pred_files = []
    for i, pred in enumerate(predictions_train_ids):
        path = tmp_path / f"pred_{i}.png"
        Image.fromarray(to_id[pred]).save(path)
        pred_files.append(str(path))
    ev.args.quiet = True
    ev.args.evalInstLevelScore = False  # its iIoU path needs np.in1d, gone in numpy >= 2.4
    ev.args.JSONOutput = False
    ev.args.exportFile = str(tmp_path / "cs.json")
    result = ev.evaluateImgLists(pred_files, [str(gt_label_ids_path)] * len(pred_files), ev.args)
    return result


@pytest.mark.parametrize("perturbation", ["perfect", "left_half_road", "noise"])
def test_miou_matches_cityscapesscripts_on_real_frame(tmp_path, perturbation):
    root = real_fixture("mmseg_pseudo_cityscapes")
    gt_path = root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    gt_train = cityscapes_id_to_train_id_lut()[np.asarray(Image.open(gt_path))]
    pred = np.where(gt_train == 255, 0, gt_train).astype(np.uint8)
    if perturbation == "left_half_road":
        pred[:, : pred.shape[1] // 2] = 0
    elif perturbation == "noise":
        rng = np.random.default_rng(0)
        flip = rng.random(pred.shape) < 0.2
        pred[flip] = rng.integers(0, 19, size=int(flip.sum()))

    ours = ConfusionMatrix(19)
    ours.update(pred, gt_train)
    scores = SegmentationScores.from_confusion(ours, cityscapes_label_space(), 1)

    theirs = _cityscapes_eval(tmp_path, [pred], gt_path)
    assert scores.miou == pytest.approx(theirs["averageScoreClasses"], abs=1e-9)
    for name, value in zip(scores.class_names, scores.iou, strict=True):
        reference = theirs["classScores"][name]
        if np.isnan(reference):
            assert np.isnan(value), name
        else:
            assert value == pytest.approx(reference, abs=1e-9), name
    if perturbation == "perfect":
        assert scores.miou == 1.0
    else:
        assert scores.miou < 0.9
