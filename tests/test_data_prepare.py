"""Label conversion and DAFormer's rare-class-sampling statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cluda_deploy.data import GTADataset, load_class_stats, prepare_dataset
from cluda_deploy.data.io import read_train_ids


def _hand_made_gta(root):
    """Two 4x5 GTA5 labels with pixel counts worked out by hand."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    first = np.array(
        [
            [23, 23, 23, 23, 23],  # sky (10): 5
            [11, 11, 21, 21, 21],  # building (2): 2, vegetation (8): 3
            [7, 7, 26, 26, 0],  # road (0): 2, car (13): 2, unlabeled: ignored
            [7, 7, 7, 8, 8],
        ]
    )  # road: 3 more (5 in all), sidewalk (1): 2
    second = np.array([[23, 23, 23, 23, 23],
                       [23, 23, 23, 23, 23],  # sky: 10
                       [26, 26, 26, 33, 1],  # car: 3, bicycle (18): 1, ego vehicle: ignored
                       [7, 7, 7, 7, 7]])  # road: 5  # fmt: skip
    for i, ids in enumerate((first, second), start=1):
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(root / "images" / f"{i:05d}.png")
        img = Image.fromarray(ids.astype(np.uint8))
        img.putpalette([0] * 768)
        img.save(root / "labels" / f"{i:05d}.png")
    return root


def test_class_stats_on_hand_made_labels(tmp_path):
    root = _hand_made_gta(tmp_path / "gta")
    report = prepare_dataset("gta", root, workers=1, progress=False)
    f1, f2 = "labels/00001_labelTrainIds.png", "labels/00002_labelTrainIds.png"

    stats = json.loads((root / "sample_class_stats.json").read_text())
    assert stats == [
        {"file": f1, "0": 5, "1": 2, "2": 2, "8": 3, "10": 5, "13": 2},
        {"file": f2, "0": 5, "10": 10, "13": 3, "18": 1},
    ]
    by_file = json.loads((root / "sample_class_stats_dict.json").read_text())
    assert by_file == {f1: {"0": 5, "1": 2, "2": 2, "8": 3, "10": 5, "13": 2},
                       f2: {"0": 5, "10": 10, "13": 3, "18": 1}}  # fmt: skip
    with_class = json.loads((root / "samples_with_class.json").read_text())
    assert with_class == {"0": [[f1, 5], [f2, 5]], "1": [[f1, 2]], "2": [[f1, 2]], "8": [[f1, 3]],
                          "10": [[f1, 5], [f2, 10]], "13": [[f1, 2], [f2, 3]], "18": [[f2, 1]]}  # fmt: skip

    loaded = load_class_stats(root)
    assert loaded.per_file[f2] == {0: 5, 10: 10, 13: 3, 18: 1}
    assert loaded.samples_with_class[13] == [(f1, 2), (f2, 3)]
    assert loaded.class_pixels() == {0: 10, 1: 2, 2: 2, 8: 3, 10: 15, 13: 5, 18: 1}
    assert report["class_pixels"] == loaded.class_pixels()
    assert report["converted"] == 2 and report["stats_files"] == 2
    # The stats keys name the dataset's own items.
    assert set(GTADataset(root).index_by_label_file()) == set(loaded.per_file)
    assert read_train_ids(root / f1)[2].tolist() == [0, 0, 13, 13, 255]


def test_rerun_skips_outputs_and_leaves_no_temp_files(tmp_path):
    root = _hand_made_gta(tmp_path / "gta")
    first = prepare_dataset("gta", root, workers=1, progress=False)
    second = prepare_dataset("gta", root, workers=1, progress=False)
    assert first["converted"] == second["converted"] == 2
    names = sorted(p.name for p in (root / "labels").iterdir())
    assert names == ["00001.png", "00001_labelTrainIds.png", "00002.png", "00002_labelTrainIds.png"]
    assert sorted(p.name for p in root.glob("*.json")) == [
        "sample_class_stats.json", "sample_class_stats_dict.json", "samples_with_class.json",
    ]  # fmt: skip


def test_process_pool_gives_the_same_files(tmp_path, make_gta):
    serial = make_gta(n=6, root=tmp_path / "a")
    pooled = make_gta(n=6, root=tmp_path / "b")
    prepare_dataset("gta", serial, workers=1, progress=False)
    prepare_dataset("gta", pooled, workers=2, progress=True)
    for name in (
        "labels/00004_labelTrainIds.png",
        "sample_class_stats.json",
        "samples_with_class.json",
    ):
        assert (serial / name).read_bytes() == (pooled / name).read_bytes()


def test_cityscapes_sources_and_train_only_stats(make_cityscapes):
    root = make_cityscapes(splits=(("train", 2), ("val", 1)))
    # Frame 1 of train: polygons only; frame 0 of val: colour only.
    train_dir, val_dir = root / "gtFine/train/testcity", root / "gtFine/val/testcity"
    (train_dir / "testcity_000000_000001_gtFine_labelIds.png").unlink()
    polygons = {"imgHeight": 12, "imgWidth": 8, "objects": [
        {"label": "sky", "polygon": [[0, 0], [8, 0], [8, 6], [0, 6]], "deleted": 0},
        {"label": "car", "polygon": [[0, 6], [8, 6], [8, 12], [0, 12]], "deleted": 0},
    ]}  # fmt: skip
    (train_dir / "testcity_000000_000001_gtFine_polygons.json").write_text(json.dumps(polygons))
    (val_dir / "testcity_000000_000000_gtFine_labelIds.png").unlink()
    colour = np.zeros((12, 8, 3), np.uint8)
    colour[:6] = (128, 64, 128)  # road
    Image.fromarray(colour).save(val_dir / "testcity_000000_000000_gtFine_color.png")

    report = prepare_dataset("cityscapes", root, workers=1, progress=False)
    assert report["sources"] == {"label_ids": 1, "polygons": 1, "color": 1}
    assert report["stats_files"] == 2  # train only, as DAFormer's cityscapes.py

    from_json = read_train_ids(train_dir / "testcity_000000_000001_gtFine_labelTrainIds.png")
    assert (from_json[:5] == 10).all() and (from_json[7:] == 13).all()
    from_colour = read_train_ids(val_dir / "testcity_000000_000000_gtFine_labelTrainIds.png")
    assert (from_colour[:6] == 0).all() and (from_colour[6:] == 255).all()
    stats = load_class_stats(root)
    assert all(f.startswith("gtFine/train/") for f in stats.per_file)


def test_missing_inputs_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"GTA5 root {tmp_path / 'gta'} does not exist"):
        prepare_dataset("gta", tmp_path / "gta", progress=False)
    (tmp_path / "gta/labels").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no GTA5 labels under .*labels \(no raw"):
        prepare_dataset("gta", tmp_path / "gta", progress=False)
    (tmp_path / "cs").mkdir()
    with pytest.raises(FileNotFoundError, match="download gtFine_trainvaltest.zip"):
        prepare_dataset("cityscapes", tmp_path / "cs", progress=False)
    with pytest.raises(ValueError, match="preparable datasets: gta, synthia, cityscapes"):
        prepare_dataset("folder", tmp_path, progress=False)
    with pytest.raises(FileNotFoundError) as err:
        load_class_stats(tmp_path / "gta")
    assert str(err.value) == (
        f"class statistics not found: {tmp_path / 'gta' / 'sample_class_stats.json'}; "
        f"run 'cluda data prepare <dataset> --root {tmp_path / 'gta'}'"
    )
    with pytest.raises(FileNotFoundError, match="run 'cluda data prepare synthia"):
        load_class_stats(tmp_path / "gta", dataset="synthia")
