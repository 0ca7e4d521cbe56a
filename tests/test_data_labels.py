"""Label-id -> train-id conversion, checked on every entry of DAFormer's tables."""

from __future__ import annotations

import numpy as np

from cluda_deploy.data.prepare import to_train_ids

# lhoyer/DAFormer tools/convert_datasets/gta.py (research/data.md section 3), typed again here
# on purpose: the code under test builds its table from cityscapesscripts.
GTA_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
# lhoyer/DAFormer tools/convert_datasets/synthia.py.
SYNTHIA_TO_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11,
                    17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}  # fmt: skip


def test_gta_ids_every_entry(tmp_path):
    """Every Cityscapes label id 0..33 (and a few beyond) through the GTA5 label reader."""
    from PIL import Image

    ids = np.arange(40, dtype=np.uint8)[None, :]
    img = Image.fromarray(ids)
    img.putpalette(np.zeros(768, dtype=np.uint8).tolist())
    img.save(tmp_path / "00001.png")
    out = to_train_ids("label_ids", tmp_path / "00001.png")[0]
    expected = [GTA_TO_TRAIN.get(i, 255) for i in range(40)]
    assert out.tolist() == expected


def test_synthia_ids_every_entry(tmp_path):
    import cv2

    ids = np.arange(0, 30, dtype=np.uint16)[None, :]
    bgr = np.stack([np.zeros_like(ids), np.full_like(ids, 4242), ids], axis=-1)
    cv2.imwrite(str(tmp_path / "0000000.png"), bgr)
    out = to_train_ids("synthia", tmp_path / "0000000.png")[0]
    assert out.tolist() == [SYNTHIA_TO_TRAIN.get(i, 255) for i in range(30)]
    assert out[22] == 255  # lane marking is ignored, not road
    assert out[0] == out[13] == out[14] == 255  # void, parking slot, road work


def test_cityscapes_color_to_train_ids(tmp_path):
    from PIL import Image

    colours = np.array([[[128, 64, 128], [70, 130, 180], [0, 0, 142], [81, 0, 81], [0, 0, 0]]])
    Image.fromarray(colours.astype(np.uint8)).save(tmp_path / "x_gtFine_color.png")
    assert to_train_ids("color", tmp_path / "x_gtFine_color.png")[0].tolist() == [
        0,
        10,
        13,
        255,
        255,
    ]
