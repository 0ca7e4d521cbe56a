"""The data pipeline on real Cityscapes files (shared/fixtures/real; skipped when absent).

The shared folder is read-only: anything ``prepare`` writes goes to a copy under tmp_path.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from cluda_deploy.data import (
    CityscapesDataset,
    FolderDataset,
    prepare_dataset,
    read_image,
    read_train_ids,
    val_transform,
)
from tests.real_fixtures import real_fixture

MMSEG_FRAME = "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_{}.png"


def _copy(src, dst, names):
    for name in names:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, dst / name)
    return dst


def test_mmseg_pseudo_cityscapes_prepare_and_load(tmp_path):
    src = real_fixture("mmseg_pseudo_cityscapes")
    image = "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    root = _copy(src, tmp_path / "cityscapes", [image, MMSEG_FRAME.format("labelIds")])
    shipped = read_train_ids(src / MMSEG_FRAME.format("labelTrainIds"))

    report = prepare_dataset("cityscapes", root, workers=1, progress=False)
    assert report["converted"] == 1 and report["sources"] == {"label_ids": 1}
    ours = read_train_ids(root / MMSEG_FRAME.format("labelTrainIds"))
    # The shipped trainIds were downscaled separately: 77 of 32768 boundary pixels differ (SOURCES.md).
    assert (ours != shipped).mean() < 0.003
    assert set(np.unique(ours).tolist()) == {0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 255}

    ds = CityscapesDataset(root, "val")
    item = ds[0]
    assert item["image"].shape == (3, 128, 256) and item["label"].shape == (128, 256)
    assert item["label"].numpy().tolist() == ours.astype(np.int64).tolist()
    assert item["name"] == image


def test_fastscnn_gtfine_color_to_train_ids(tmp_path):
    src = real_fixture("fastscnn_cityscapes")
    colour = "gtFine/val/frankfurt/frankfurt_000001_058914_gtFine_color.png"
    image = "leftImg8bit/val/frankfurt/frankfurt_000001_058914_leftImg8bit.png"
    root = _copy(src, tmp_path / "cityscapes", [colour, image])
    report = prepare_dataset("cityscapes", root, workers=1, progress=False)
    assert report["sources"] == {"color": 1}
    train_ids = read_train_ids(root / colour.replace("_color", "_labelTrainIds"))
    assert train_ids.shape == (1024, 2048)
    # road, sidewalk, building, pole, traffic light, sign, vegetation, sky, person, rider, car, bicycle
    assert set(np.unique(train_ids).tolist()) == {0, 1, 2, 5, 6, 7, 8, 10, 11, 12, 13, 18, 255}
    ds = CityscapesDataset(
        root, "val", transform=val_transform((1024, 512), IMAGENET_MEAN, IMAGENET_STD)
    )
    item = ds[0]
    assert item["image"].shape == (3, 512, 1024) and item["label"].shape == (512, 1024)


def test_folder_dataset_over_real_frames():
    pidnet = real_fixture("pidnet_samples")
    ds = FolderDataset(pidnet, transform=val_transform((512, 256), IMAGENET_MEAN, IMAGENET_STD))
    assert [item["name"].rsplit("/", 1)[-1] for item in ds] == [
        "frankfurt_000000_002196_leftImg8bit.png", "frankfurt_000000_003025_leftImg8bit.png",
    ]  # fmt: skip
    assert ds[0]["image"].shape == (3, 256, 512) and not ds[0]["has_label"]


def test_palette_mode_demo_png_comes_out_rgb():
    folder = real_fixture("mmseg_demo")
    assert Image.open(folder / "demo.png").mode == "P"
    assert np.asarray(Image.open(folder / "demo.png")).ndim == 2  # palette indices, not colours
    rgb = read_image(folder / "demo.png")
    assert rgb.shape == (512, 1024, 3)
    assert np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).mean() > 1  # a colour image, not grey
    ds = FolderDataset(folder)
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 512, 1024)


@pytest.mark.parametrize("name", ["daformer_demo", "fda_gta5"])
def test_other_real_frames_are_readable(name):
    ds = FolderDataset(real_fixture(name))
    assert ds[0]["image"].shape[0] == 3
