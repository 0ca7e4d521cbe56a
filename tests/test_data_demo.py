"""The procedural demo domains: determinism, real layouts, shared classes, a genuine appearance shift."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from cluda_deploy.data import create_dataset, default_root, generate_demo_domains, load_class_stats
from cluda_deploy.data.demo import rasterize, render_sample, sample_scene, shift_colours
from cluda_deploy.labels import cityscapes_id_to_train_id_lut

SHARED_CLASSES = {0: "road", 1: "sidewalk", 2: "building", 8: "vegetation", 10: "sky", 13: "car"}
RARE_CLASSES = {12: "rider", 14: "truck", 15: "bus", 17: "motorcycle", 18: "bicycle"}


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


def test_same_seed_same_bytes_whatever_counts_and_workers(tmp_path, tiny_demo_root):
    root = tmp_path / "demo"
    report = generate_demo_domains(root, n_source=3, n_target_train=2, n_target_val=2, seed=0,
                                   workers=2)  # fmt: skip
    assert report["generated"] is True
    files = _files(root)
    images = [f for f in files if "labelTrainIds" not in str(f)]
    assert len(images) == 2 * (3 + 2 + 2)  # image and raw label for each sample
    for rel in files:  # the session fixture made a larger set from the same seed, serially
        if "labelTrainIds" not in str(rel):
            assert (root / rel).read_bytes() == (tiny_demo_root / rel).read_bytes(), rel
    other, _ = render_sample(1, "source", "train", 0)
    assert not np.array_equal(other, render_sample(0, "source", "train", 0)[0])


def test_layouts_read_by_the_real_dataset_classes(tiny_demo_root):
    source = create_dataset("demo-source", default_root("demo-source", tiny_demo_root))
    assert len(source) == 12
    item = source[0]
    assert item["name"] == "images/00001.png" and item["image"].shape == (3, 180, 320)
    assert item["label"].shape == (180, 320) and item["has_label"]
    raw = Image.open(tiny_demo_root / "gta/labels/00001.png")
    assert raw.mode == "P" and raw.getpalette()[26 * 3 : 26 * 3 + 3] == [0, 0, 142]  # car colour
    lut = cityscapes_id_to_train_id_lut()
    assert np.array_equal(lut[np.asarray(raw)], item["label"].numpy())

    for split, n in (("train", 8), ("val", 4)):
        target = create_dataset("demo-target", default_root("demo-target", tiny_demo_root), split)
        assert len(target) == n
        item = target[n - 1]
        assert item["name"] == (
            f"leftImg8bit/{split}/democity/democity_000000_{n - 1:06d}_leftImg8bit.png"
        )
        assert item["image"].shape == (3, 128, 256) and item["label"].shape == (128, 256)
    ids = Image.open(tiny_demo_root / "cityscapes/gtFine/val/democity/"
                     "democity_000000_000000_gtFine_labelIds.png")  # fmt: skip
    assert ids.mode == "L"
    bonnet = np.asarray(ids)[-2:]
    assert (bonnet == 1).mean() > 0.5  # the ego vehicle (label id 1, ignored) along the bottom


def test_domains_share_label_space_and_geometry():
    """Both domains draw scenes from one distribution; rare classes appear now and then."""
    lut = cityscapes_id_to_train_id_lut()
    scenes = [sample_scene(np.random.default_rng([7, i])) for i in range(80)]
    counts = {}
    for domain, (h, w) in (("source", (180, 320)), ("target", (128, 256))):
        labels = [lut[rasterize(s, h, w, hood=domain == "target")[0]] for s in scenes]
        hist = sum(np.bincount(lab.ravel(), minlength=256)[:19] for lab in labels)
        counts[domain] = hist / hist.sum()
        presence = np.mean([[c in lab for c in RARE_CLASSES] for lab in labels], axis=0)
        assert ((presence > 0.05) & (presence < 0.5)).all(), dict(
            zip(RARE_CLASSES, presence, strict=True)
        )
    present = set(np.flatnonzero(counts["source"]))
    assert present == set(np.flatnonzero(counts["target"])) == set(range(19)) - {16}  # no trains
    assert 0.5 * np.abs(counts["source"] - counts["target"]).sum() < 0.05  # same class frequencies


def test_shift_colours_rotates_hue_about_the_grey_axis():
    red = np.array([[255.0, 0.0, 0.0]])
    assert shift_colours(red, 120, 1.0, 1.0)[0] == pytest.approx([0, 255, 0], abs=1e-3)
    assert shift_colours(red, 0, 0.0, 1.0)[0] == pytest.approx([85, 85, 85])  # desaturated
    grey = np.array([[90.0, 90.0, 90.0]])
    assert shift_colours(grey, 37, 0.5, 0.8)[0] == pytest.approx([72, 72, 72])  # only the gain


def _class_colours(dataset, classes):
    sums = {c: np.zeros(3) for c in classes}
    n = dict.fromkeys(classes, 0)
    for i in range(len(dataset)):
        image, label = dataset.load_pair(i)
        for c in classes:
            mask = label == c
            sums[c] += image[mask].sum(axis=0)
            n[c] += mask.sum()
    return {c: sums[c] / max(n[c], 1) for c in classes}


def test_target_looks_different(tiny_demo_root):
    source = create_dataset("demo-source", default_root("demo-source", tiny_demo_root))
    target = create_dataset("demo-target", default_root("demo-target", tiny_demo_root))
    src, tgt = _class_colours(source, SHARED_CLASSES), _class_colours(target, SHARED_CLASSES)
    distance = {SHARED_CLASSES[c]: float(np.linalg.norm(src[c] - tgt[c])) for c in SHARED_CLASSES}
    # Mean colour per class moves by tens of RGB levels (road, grey in both, the least).
    assert np.mean(list(distance.values())) > 40, distance
    assert sorted(distance.values())[1] > 30, distance
    # Source sky: a clean, saturated vertical gradient; target sky: paler, cloudy and noisy.
    src_img, src_lab = source.load_pair(0)
    tgt_img, tgt_lab = target.load_pair(0)

    def sky_roughness(image, label):
        sky = (label == 10)[:, 1:] & (label == 10)[:, :-1]
        return np.abs(np.diff(image.astype(int), axis=1))[sky].mean()

    assert sky_roughness(src_img, src_lab) < 0.5 < 1.5 < sky_roughness(tgt_img, tgt_lab)
    assert src[10][2] - src[10][0] > tgt[10][2] - tgt[10][0] + 50


def test_skips_complete_sets_and_regenerates_changed_ones(tmp_path):
    root = tmp_path / "demo"
    args = {"n_source": 2, "n_target_train": 1, "n_target_val": 1, "seed": 3}
    assert generate_demo_domains(root, **args)["generated"] is True
    manifest = json.loads((root / "demo_manifest.json").read_text())
    assert {k: manifest[k] for k in args} == args
    before = _files(root)
    assert generate_demo_domains(root, **args)["generated"] is False

    (root / "gta/labels/00002_labelTrainIds.png").unlink()  # incomplete -> regenerate
    assert generate_demo_domains(root, **args)["generated"] is True
    assert _files(root) == before

    report = generate_demo_domains(root, **{**args, "n_source": 1})  # other counts: no leftovers
    assert report["generated"] is True
    assert not (root / "gta/images/00002.png").exists()
    assert load_class_stats(root / "gta").per_file.keys() == {"labels/00001_labelTrainIds.png"}


def test_refuses_to_overwrite_other_data(tmp_path):
    (tmp_path / "gta/images").mkdir(parents=True)
    (tmp_path / "gta/images/00001.png").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="demo_manifest.json is missing; it may be real data"):
        generate_demo_domains(tmp_path, n_source=1, n_target_train=1, n_target_val=1)
    assert (tmp_path / "gta/images/00001.png").read_bytes() == b"real data"


def test_generation_is_fast(tmp_path):
    """A tenth of the default set (36 of 360 samples, prepare included): about 1.5 s when idle."""
    start = time.perf_counter()
    generate_demo_domains(tmp_path, n_source=16, n_target_train=16, n_target_val=4, workers=2)
    elapsed = time.perf_counter() - start
    assert elapsed < 6.0, f"{elapsed:.2f} s for 36 samples"  # generous: CI machines are shared
