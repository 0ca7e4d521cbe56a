"""Rare-class sampling: class probabilities, file filter, crop re-draws (research/cluda.md 2.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluda_deploy.config import resolve_config
from cluda_deploy.data.prepare import ClassStats, load_class_stats
from training.feed import NO_CLASS, StepBatchSampler, StepCrops, domain_dataset, source_picker
from training.rcs import files_with_class, rare_class_picker, rcs_class_probs


def test_class_probabilities_hand_values():
    # f = (0.9, 0.1); (1 - f) / T with T = 0.1 -> (1, 9); softmax -> e^9 / (e + e^9) for class 1.
    classes, probs = rcs_class_probs({0: 90, 1: 10}, temperature=0.1)
    assert classes.tolist() == [1, 0]  # rarest first
    expected = math.exp(9) / (math.exp(1) + math.exp(9))
    assert probs[0] == pytest.approx(expected) and probs[1] == pytest.approx(1 - expected)
    # Classes without pixels are not sampled.
    classes, _ = rcs_class_probs({0: 90, 1: 10, 2: 0}, temperature=0.01)
    assert 2 not in classes.tolist()
    with pytest.raises(ValueError, match="temperature"):
        rcs_class_probs({0: 1}, temperature=0)


def stats() -> ClassStats:
    per_file = {"a.png": {0: 5000, 1: 100}, "b.png": {0: 4000, 1: 3500}, "c.png": {1: 2999}}
    with_class: dict[int, list] = {}
    for f, counts in per_file.items():
        for c, n in counts.items():
            with_class.setdefault(c, []).append((f, n))
    return ClassStats(per_file=per_file, samples_with_class=with_class)


def test_only_files_with_enough_pixels_are_drawn():
    by_class = files_with_class(stats(), np.array([1, 0]), min_pixels=3000)
    assert by_class == {1: ["b.png"], 0: ["a.png", "b.png"]}  # strictly more than 3000
    assert files_with_class(stats(), np.array([1, 0]), min_pixels=4000) == {0: ["a.png"]}


def test_classes_without_enough_pixels_are_left_out(caplog):
    pick = rare_class_picker(stats(), {"a.png": 0, "b.png": 1, "c.png": 2}, 0.01, 4000)
    assert "classes [1] have no image" in caplog.text
    indices, classes = pick(np.random.default_rng(0), 20)
    assert (classes == 0).all() and (indices == 0).all()
    with pytest.raises(ValueError, match="lower uda.rcs_min_pixels"):
        rare_class_picker(stats(), {"a.png": 0, "b.png": 1, "c.png": 2}, 0.01, 10**6)


def test_picker_draws_rare_classes_and_their_files():
    pick = rare_class_picker(stats(), {"a.png": 0, "b.png": 1, "c.png": 2}, 0.01, 3000)
    indices, classes = pick(np.random.default_rng(0), 400)
    # f_1 = 6599/15599: class 1 is rarer, P(1) = 1 / (1 + e^{-(f_0 - f_1)/T}) ~ 1 - 1e-7
    assert (classes == 1).all()
    assert set(indices.tolist()) == {1}  # only b.png has > 3000 px of class 1
    with pytest.raises(ValueError, match="re-run 'cluda data prepare'"):
        rare_class_picker(stats(), {"a.png": 0}, 0.01, 3000)


def test_rcs_feed_redraws_crops_until_the_class_shows(tiny_demo_root):
    cfg = resolve_config("demo", [f"data.root={tiny_demo_root}", "data.crop_size=32x32"])
    base = domain_dataset(cfg, "source")
    picker = source_picker(cfg, base)
    sampler = StepBatchSampler(picker, 2, seed=0, domain="source", start=0, stop=6)
    keys = [key for batch in sampler for key in batch]
    assert all(cls != NO_CLASS for _, _, cls in keys)
    min_px = 20
    plain = StepCrops(base, None, (32, 32), 1.0, 0.5, min_class_pixels=0)
    rcs = StepCrops(base, None, (32, 32), 1.0, 0.5, min_class_pixels=min_px)
    hits_plain = hits_rcs = 0
    for index, seed, cls in keys:
        hits_plain += int((plain[(index, seed, NO_CLASS)]["label"] == cls).sum() > min_px)
        hits_rcs += int((rcs[(index, seed, cls)]["label"] == cls).sum() > min_px)
        again = rcs[(index, seed, cls)]["label"]
        assert (again == rcs[(index, seed, cls)]["label"]).all()  # still a function of the key
    assert hits_rcs > hits_plain
    assert load_class_stats(base.root).class_pixels()  # the stats the picker used exist
