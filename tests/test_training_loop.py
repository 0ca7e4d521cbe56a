"""The adapt loop on the demo domains: checkpoints, evaluation, Ctrl-C and bit-exact resume."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from cluda_deploy.checkpoint import load_segmenter, read_checkpoint
from cluda_deploy.config import resolve_config
from tests.checkpoint_asserts import assert_same_weights
from training.feed import StepBatchSampler, uniform_picker
from training.loop import adapt
from training.methods.cluda import CLUDA
from training.methods.source_only import SourceOnly


def demo_config(root, iters=6, method="source-only", **extra):
    sets = [f"data.root={root}", f"train.iters={iters}", "train.eval_interval=3",
            "train.checkpoint_interval=3", "train.log_interval=1", "train.image_log_interval=2",
            "data.batch_size=2", "data.crop_size=64x64", f"train.method={method}"]  # fmt: skip
    sets += [f"{k}={v}" for k, v in extra.items()]
    return resolve_config("demo", sets)


def test_step_sampler_is_a_function_of_seed_and_step():
    full = list(StepBatchSampler(uniform_picker(100), 3, seed=5, domain="source", start=0, stop=8))
    tail = list(StepBatchSampler(uniform_picker(100), 3, seed=5, domain="source", start=4, stop=8))
    assert full[4:] == tail
    other = list(StepBatchSampler(uniform_picker(100), 3, seed=5, domain="target", start=0, stop=8))
    assert other != full


def test_adapt_writes_checkpoints_eval_and_logs(tiny_demo_root, tmp_path):
    result = adapt(demo_config(tiny_demo_root), tmp_path / "run", progress=False)
    assert result.iterations == 6 and not result.interrupted
    assert [h["iteration"] for h in result.history] == [3, 6]
    assert result.best is not None
    assert result.best_miou == pytest.approx(max(h["mIoU"] for h in result.history), abs=1e-6)
    latest = read_checkpoint(result.latest)
    assert latest["training_state"]["iteration"] == 6
    assert "training_state" not in read_checkpoint(result.best)  # best.pt is a deployable file
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["iters"] == 6
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    model, info = load_segmenter(result.best)
    assert info.provenance["val_miou"] == pytest.approx(result.best_miou)


def test_ctrl_c_then_resume_equals_uninterrupted_run(tiny_demo_root, tmp_path, monkeypatch):
    cfg = demo_config(tiny_demo_root)
    straight = adapt(cfg, tmp_path / "straight", progress=False)

    original_step = SourceOnly.step

    def interrupting_step(self, nets, batch, iteration):
        if iteration == 4:
            raise KeyboardInterrupt  # as a second Ctrl-C would, before the step changed anything
        return original_step(self, nets, batch, iteration)

    monkeypatch.setattr(SourceOnly, "step", interrupting_step)
    stopped = adapt(cfg, tmp_path / "resumed", progress=False)
    assert stopped.interrupted and stopped.iterations == 4
    assert read_checkpoint(stopped.latest)["training_state"]["iteration"] == 4
    monkeypatch.setattr(SourceOnly, "step", original_step)

    resumed = adapt(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.iterations == 6
    a = read_checkpoint(straight.latest)
    b = read_checkpoint(resumed.latest)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert [h["mIoU"] for h in resumed.history] == [h["mIoU"] for h in straight.history]


def test_resume_without_checkpoint_is_a_clear_error(tiny_demo_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        adapt(demo_config(tiny_demo_root), tmp_path / "fresh", resume=True, progress=False)


def test_cluda_ctrl_c_saves_after_the_step_and_resume_is_bit_exact(
    tiny_demo_root, tmp_path, monkeypatch
):
    # with the feature distance on, so the frozen encoder is saved and restored too
    sets = {"train.eval_interval": 2, "data.crop_size": "32x32", "uda.fd_lambda": 0.005}
    cfg = demo_config(tiny_demo_root, iters=4, method="cluda", **sets)
    straight = adapt(cfg, tmp_path / "straight", progress=False)

    original_step = CLUDA.step

    def ctrl_c_during_step(self, nets, batch, iteration):
        if iteration == 1:
            signal.raise_signal(signal.SIGINT)  # handled: this step finishes, then the loop stops
        return original_step(self, nets, batch, iteration)

    monkeypatch.setattr(CLUDA, "step", ctrl_c_during_step)
    stopped = adapt(cfg, tmp_path / "resumed", progress=False)
    assert stopped.interrupted and stopped.iterations == 2
    saved = read_checkpoint(stopped.latest)
    assert saved["training_state"]["iteration"] == 2
    assert "teacher_state_dict" in saved and saved["training_state"]["imnet_backbone"]
    monkeypatch.setattr(CLUDA, "step", original_step)

    resumed = adapt(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.iterations == 4
    a, b = read_checkpoint(straight.latest), read_checkpoint(resumed.latest)
    assert_same_weights(a, b)
    for name, value in a["training_state"]["imnet_backbone"].items():
        assert torch.equal(value, b["training_state"]["imnet_backbone"][name]), name
    assert [h["mIoU"] for h in resumed.history] == [h["mIoU"] for h in straight.history]


def test_resume_with_another_method_is_a_clear_error(tiny_demo_root, tmp_path):
    first = adapt(demo_config(tiny_demo_root, iters=1), tmp_path / "run", progress=False)
    assert first.iterations == 1
    with pytest.raises(ValueError, match="no EMA teacher"):
        adapt(demo_config(tiny_demo_root, iters=2, method="dacs"), tmp_path / "run", resume=True,
              progress=False)  # fmt: skip
