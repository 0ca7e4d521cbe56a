"""The hand-off checkpoint: round trip, atomic writes, clear errors for bad files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from cluda_deploy.checkpoint import (
    CheckpointError,
    atomic_save,
    load_segmenter,
    read_checkpoint,
    save_checkpoint,
)
from cluda_deploy.config import get_preset
from cluda_deploy.labels import cityscapes_label_space, label_space_for_source
from cluda_deploy.models import create_segmenter


@pytest.fixture
def demo_checkpoint(tmp_path):
    cfg = get_preset("demo")
    torch.manual_seed(0)
    model = create_segmenter(cfg.model)
    path = save_checkpoint(
        tmp_path / "ckpt.pt",
        config=cfg,
        label_space=cityscapes_label_space(),
        state_dict=model.state_dict(),
        provenance={"iteration": 7, "val_miou": 0.25},
    )
    return path, model.eval()


def test_round_trip_rebuilds_identical_model(demo_checkpoint):
    path, original = demo_checkpoint
    model, info = load_segmenter(path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    assert info.config == get_preset("demo")
    assert info.label_space.num_classes == 19 and info.label_space.class_names[0] == "road"
    assert info.provenance["iteration"] == 7 and info.provenance["method"] == "dacs"
    assert info.mean == pytest.approx((123.675, 116.28, 103.53))


def test_checkpoint_loads_without_unpickling_code(demo_checkpoint):
    path, _ = demo_checkpoint
    torch.load(path, weights_only=True)  # raises if anything but plain data is inside


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "latest.pt"
    atomic_save({"a": 1}, target)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path, demo_checkpoint):
    path, _ = demo_checkpoint
    data = path.read_bytes()
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable cluda-deploy checkpoint"):
        read_checkpoint(broken)


def test_foreign_torch_file(tmp_path):
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="cluda import mmseg"):
        read_checkpoint(foreign)


def test_pickle_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"format": "cluda-deploy/checkpoint", "x": Payload()}, handle)
    with pytest.raises(CheckpointError):
        read_checkpoint(evil)


def test_other_label_space_is_refused(demo_checkpoint):
    path, _ = demo_checkpoint
    from cluda_deploy.labels import LabelSpace

    other = LabelSpace("three", ("a", "b", "c"), ((0, 0, 0),) * 3)
    with pytest.raises(CheckpointError, match="label space"):
        load_segmenter(path, expected_label_space=other)
    load_segmenter(path, expected_label_space=label_space_for_source("synthia"))  # same 19 classes


def test_weights_that_do_not_fit_config(tmp_path, demo_checkpoint):
    path, _ = demo_checkpoint
    data = torch.load(path, weights_only=True)
    data["config"]["model"]["embed_dim"] = 32
    edited = tmp_path / "edited.pt"
    torch.save(data, edited)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_segmenter(edited)


def test_rebuild_does_not_fetch_pretrained_weights(tmp_path):
    cfg = get_preset("demo")
    cfg.model.pretrained = "nvidia/mit-b5"  # offline here: fetching it would fail
    model = create_segmenter(get_preset("demo").model)
    path = save_checkpoint(tmp_path / "c.pt", config=cfg, label_space=cityscapes_label_space(),
                           state_dict=model.state_dict())
    rebuilt, info = load_segmenter(path)
    assert info.config.model.pretrained == "nvidia/mit-b5"
