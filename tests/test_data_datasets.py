"""Datasets in the real GTA5 / Synthia / Cityscapes layouts, the registry, and layout errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from cluda_deploy.data import (
    CityscapesDataset,
    DatasetLayoutError,
    FolderDataset,
    GTADataset,
    ImageReadError,
    LabelFormatError,
    SynthiaDataset,
    create_dataset,
    default_root,
    prepare_dataset,
    train_transform,
)


def _check_item(item, shape, name):
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *shape)
    assert item["label"].dtype == torch.int64 and item["label"].shape == shape
    assert item["name"] == name


def test_gta_end_to_end(make_gta):
    root = make_gta(n=3)
    prepare_dataset("gta", root, workers=1, progress=False)
    ds = GTADataset(root)
    assert len(ds) == 3
    item = ds[0]
    _check_item(item, (12, 8), "images/00001.png")
    assert item["has_label"] is True
    # 00001: the id tile rolled by one row; row 1 = ids (7, 7, 8, 8, 11, 11, 12, 12) -> 0 0 1 1 2 2 3 3
    label = item["label"]
    assert label[1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert label[11].tolist() == [255] * 8  # ids 1, 4, 5, 6: ego vehicle, static, dynamic, ground
    assert label[9, 0] == 16 and label[9, 2] == 17 and label[9, 4] == 18 and label[9, 6] == 255
    image = np.asarray(Image.open(root / "images/00001.png"))
    expected = (image[0, 0] - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert item["image"][:, 0, 0].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    pairs = ds.get_image_label_paths()
    assert pairs[2] == (root / "images/00003.png", root / "labels/00003_labelTrainIds.png")
    assert ds.index_by_label_file() == {
        f"labels/{i:05d}_labelTrainIds.png": i - 1 for i in (1, 2, 3)
    }


def test_gta_with_training_transform(make_gta):
    root = make_gta(n=2)
    prepare_dataset("gta", root, workers=1, progress=False)
    t = train_transform((16, 9), (6, 6), 0.75, 0.5, IMAGENET_MEAN, IMAGENET_STD,
                        rng=np.random.default_rng(0))  # fmt: skip
    ds = create_dataset("gta", root, transform=t)
    assert ds.transform is t
    item = ds[1]
    assert item["image"].shape == (3, 6, 6) and item["label"].shape == (6, 6)


def test_synthia_end_to_end(make_synthia):
    root = make_synthia(n=2)
    report = prepare_dataset("synthia", root, workers=1, progress=False)
    assert report["converted"] == 2
    ds = SynthiaDataset(root)
    item = ds[0]
    _check_item(item, (12, 8), "RGB/0000000.png")
    label = item["label"]
    # tile rows: (3, 4, 2, 21) -> road, sidewalk, building, wall; (13, 14, 22, 3) -> 255 255 255 0
    assert label[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert label[10].tolist() == [255] * 6 + [0, 0]
    assert label[4].tolist() == [8, 8, 9, 9, 10, 10, 11, 11]  # ids 6, 16, 1, 10


def test_cityscapes_end_to_end(make_cityscapes):
    root = make_cityscapes()
    prepare_dataset("cityscapes", root, workers=1, progress=False)
    for split in ("train", "val"):
        ds = CityscapesDataset(root, split)
        assert len(ds) == 2
        item = ds[1]
        _check_item(
            item, (12, 8), f"leftImg8bit/{split}/testcity/testcity_000000_000001_leftImg8bit.png"
        )
        assert item["label"][1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ds.labelled_pairs() == ds.get_image_label_paths()


def test_cityscapes_unlabelled_use(make_cityscapes):
    root = make_cityscapes()  # labels never converted
    with pytest.raises(DatasetLayoutError, match="cluda data prepare cityscapes"):
        CityscapesDataset(root, "train")
    ds = create_dataset("cityscapes", root, "train", require_labels=False)
    item = ds[0]
    assert item["has_label"] is False and (item["label"] == 255).all()
    assert ds.labelled_pairs() == []


def test_folder_dataset_any_tree(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(tmp_path / "a" / "y.JPG")
    Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(tmp_path / "a/b/z.webp")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "a" / "x_labelTrainIds.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = FolderDataset(tmp_path)
    assert [item["name"] for item in ds] == ["a/b/z.webp", "a/y.JPG", "x.png"]
    item = ds[2]
    _check_item(item, (10, 14), "x.png")
    assert item["has_label"] is False and (item["label"] == 255).all()


def test_registry_and_default_roots(tmp_path):
    with pytest.raises(
        ValueError, match="unknown dataset 'gta5'; known datasets: cityscapes, demo-source"
    ):
        create_dataset("gta5", tmp_path)
    assert default_root("gta", "data") == default_root("demo-source", "data")
    assert str(default_root("synthia", "data")) == "data/synthia"
    assert str(default_root("demo-target", "data/demo")) == "data/demo/cityscapes"
    assert str(default_root("folder", "my/images")) == "my/images"
    with pytest.raises(ValueError, match="gta has no 'val' split"):
        create_dataset("gta", tmp_path, split="val")
    with pytest.raises(ValueError, match="require_labels=False"):
        create_dataset("folder", tmp_path)


# --------------------------------------------------------------------------- layout errors


def test_missing_folders_name_path_and_fix(tmp_path, make_gta):
    root = tmp_path / "gta"
    with pytest.raises(DatasetLayoutError, match=f"GTA5 root {root} does not exist; download"):
        GTADataset(root)
    (root / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=f"no GTA5 images under {root / 'images'}"):
        GTADataset(root)
    assert issubclass(DatasetLayoutError, FileNotFoundError)

    root = make_gta(n=2, root=tmp_path / "gta2")
    with pytest.raises(DatasetLayoutError) as err:
        GTADataset(root)
    assert str(err.value) == (
        f"GTA5 labels not converted under {root / 'labels'} (no *_labelTrainIds.png); "
        f"run 'cluda data prepare gta --root {root}'"
    )


def test_partially_converted_or_unlabelled_images(make_gta):
    root = make_gta(n=3)
    prepare_dataset("gta", root, workers=1, progress=False)
    (root / "labels/00002_labelTrainIds.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 of 3 GTA5 images have no converted label "
                       r"\(first: .*00002_labelTrainIds.png\); run 'cluda data prepare gta"):  # fmt: skip
        GTADataset(root)
    (root / "labels/00002.png").unlink()
    with pytest.raises(
        DatasetLayoutError, match=r"have no label at all \(first: .*labels/00002.png\)"
    ):
        GTADataset(root)


def test_cityscapes_missing_split_and_labels(tmp_path, make_cityscapes):
    root = make_cityscapes(splits=(("train", 1),))
    with pytest.raises(DatasetLayoutError) as err:
        CityscapesDataset(root, "val")
    assert str(err.value).startswith(
        f"no Cityscapes images under {root / 'leftImg8bit/val'}; download leftImg8bit_trainvaltest.zip "
        f"and unzip it into {root}"
    )
    (root / "gtFine/train/testcity/testcity_000000_000000_gtFine_labelIds.png").unlink()
    (root / "gtFine/train/testcity").rmdir()
    (root / "gtFine/train").rmdir()
    with pytest.raises(DatasetLayoutError, match=r"no Cityscapes labels under .*gtFine/train; download "
                       "gtFine_trainvaltest.zip"):  # fmt: skip
        CityscapesDataset(root, "train")


def test_demo_datasets_point_at_the_demo_command(tmp_path):
    with pytest.raises(DatasetLayoutError, match=f"run 'cluda data demo --root {tmp_path}'"):
        create_dataset("demo-source", default_root("demo-source", tmp_path))
    with pytest.raises(DatasetLayoutError, match=f"run 'cluda data demo --root {tmp_path}'"):
        create_dataset("demo-target", default_root("demo-target", tmp_path), split="val")


def test_corrupt_image_fails_with_file_name(make_gta):
    root = make_gta(n=2)
    prepare_dataset("gta", root, workers=1, progress=False)
    path = root / "images/00002.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = GTADataset(root)
    ds[0]
    with pytest.raises(ImageReadError, match=f"cannot decode {path}"):
        ds[1]


def test_rgb_colour_png_as_gta_label(make_gta):
    root = make_gta(n=2)
    bad = root / "labels/00002.png"
    Image.fromarray(np.zeros((12, 8, 3), np.uint8)).save(bad)
    with pytest.raises(LabelFormatError) as err:
        prepare_dataset("gta", root, workers=1, progress=False)
    assert str(bad) in str(err.value) and "colour image, expected a label-id PNG" in str(err.value)


def test_label_size_mismatch(make_gta):
    root = make_gta(n=1)
    prepare_dataset("gta", root, workers=1, progress=False)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "labels/00001_labelTrainIds.png")
    with pytest.raises(ValueError, match="is 5x5 but image .* is 8x12"):
        GTADataset(root)[0]


def test_loader_workers_draw_different_but_repeatable_crops(make_gta):
    from torch.utils.data import DataLoader

    from cluda_deploy.data import worker_init_fn

    root = make_gta(n=2)
    prepare_dataset("gta", root, workers=1, progress=False)
    ramp = (np.arange(12 * 8).reshape(12, 8) * 2).astype(np.uint8)  # pixel value = 2 * offset
    for name in ("00001.png", "00002.png"):  # same picture: a crop's first pixel tells its offset
        Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(root / "images" / name)
    t = train_transform(None, (4, 4), 1.0, 0.0, (0, 0, 0), (1, 1, 1), rng=np.random.default_rng(0))
    ds = GTADataset(root, transform=t)

    def first_pixels(init_fn):
        loader = DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=init_fn,
                            generator=torch.Generator().manual_seed(5))  # fmt: skip
        return [int(batch["image"][0, 0, 0, 0]) for batch in loader]

    # Without reseeding, each worker starts from a copy of the same generator: same crop.
    unseeded = first_pixels(None)
    assert unseeded[0] == unseeded[1]
    seeded = first_pixels(worker_init_fn)
    assert seeded[0] != seeded[1] and seeded == first_pixels(worker_init_fn)
