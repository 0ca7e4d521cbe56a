"""``cluda adapt`` with HRDA multi-resolution training, CLUDA's weighted contrast and ``--mic`` on
the demo domains: a bit-exact resume across the entropy-crop switch, the checkpoint layout, and
``cluda evaluate`` with the multi-resolution inference; the default presets of the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cluda_deploy.checkpoint import load_segmenter, read_checkpoint
from cluda_deploy.cli import main
from cluda_deploy.config import resolve_config
from cluda_deploy.models import HRDASegmenter
from tests.checkpoint_asserts import assert_same_weights
from training.loop import adapt
from training.methods.cluda import CLUDA, FEAT_WEIGHTER


def hrda_config(root, iters=4):
    sets = [f"data.root={root}", f"train.iters={iters}", "train.eval_interval=2",
            "train.checkpoint_interval=2", "train.log_interval=1", "train.image_log_interval=2",
            "data.batch_size=2", "uda.mic=true", "uda.hrda_entropy_crop_start=1"]  # fmt: skip
    return resolve_config("demo-hrda", sets)


def test_adapt_resume_and_evaluate_multires(tiny_demo_root, tmp_path, monkeypatch):
    cfg = hrda_config(tiny_demo_root)
    assert cfg.train.method == "cluda" and cfg.model.hrda.enabled
    straight = adapt(cfg, tmp_path / "straight", progress=False)
    assert straight.iterations == 4 and [h["iteration"] for h in straight.history] == [2, 4]

    original_step = CLUDA.step

    def interrupting_step(self, nets, batch, iteration):
        if iteration == 2:  # the first step with the entropy crop (iteration > 1)
            raise KeyboardInterrupt
        return original_step(self, nets, batch, iteration)

    monkeypatch.setattr(CLUDA, "step", interrupting_step)
    stopped = adapt(cfg, tmp_path / "resumed", progress=False)
    assert stopped.interrupted and stopped.iterations == 2
    monkeypatch.setattr(CLUDA, "step", original_step)
    resumed = adapt(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.iterations == 4

    a, b = read_checkpoint(straight.latest), read_checkpoint(resumed.latest)
    assert_same_weights(a, b)
    # the learned weighting head trains with the student, outside the inference weights
    weighter_a = a["training_state"]["extra_modules"][FEAT_WEIGHTER]
    weighter_b = b["training_state"]["extra_modules"][FEAT_WEIGHTER]
    assert weighter_a and all(torch.equal(v, weighter_b[k]) for k, v in weighter_a.items())
    assert not any("feat_weighter" in k for k in a["state_dict"])
    names = [g["name"] for g in a["training_state"]["optimizer"]["param_groups"]]
    assert names == ["backbone", "backbone/no_decay", "head"]
    assert [h["mIoU"] for h in resumed.history] == [h["mIoU"] for h in straight.history]

    # cluda evaluate: the multi-resolution slide inference, the loop's own score
    model, info = load_segmenter(straight.latest)
    assert isinstance(model, HRDASegmenter) and info.config.eval.mode == "slide"
    scores_json = tmp_path / "scores.json"
    result = CliRunner().invoke(
        main, ["evaluate", "-c", str(straight.latest), "--dataset", "demo-target", "--data-root",
               str(tiny_demo_root), "--json", str(scores_json), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads(scores_json.read_text())
    assert scores["mode"] == "slide"
    assert scores["mIoU"] == pytest.approx(straight.history[-1]["mIoU"], abs=1e-9)


def dry_run(*args):
    result = CliRunner().invoke(main, ["adapt", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_default_presets_are_cluda_on_hrda_and_mic_is_a_flag():
    gta = dry_run("--source", "gta", "--target", "cityscapes")
    assert gta["preset"] == "cluda-hrda-mitb5" and gta["model"]["hrda"]["enabled"]
    assert gta["data"]["source_scale"] == [2560, 1440] and gta["data"]["crop_size"] == [1024, 1024]
    assert gta["uda"]["rcs_min_crop_ratio"] == 2.0 and gta["uda"]["mic"] is False
    synthia = dry_run("--source", "synthia", "--target", "cityscapes", "--mic")
    assert synthia["preset"] == "cluda-hrda-mitb5-synthia" and synthia["uda"]["mic"] is True
    assert synthia["data"]["source_scale"] == [2560, 1520]
    chosen = dry_run("--preset", "cluda-daformer-mitb5", "--source", "gta", "--mic")
    assert chosen["preset"] == "cluda-daformer-mitb5" and not chosen["model"]["hrda"]["enabled"]
    assert chosen["uda"]["mic"] is True
    assert dry_run("--preset", "demo-hrda")["uda"]["mic"] is False


def test_mic_without_self_training_is_a_one_line_error():
    result = CliRunner().invoke(main, ["adapt", "--preset", "demo", "--method", "source-only", "--mic", "--dry-run"])
    assert result.exit_code != 0
    assert "--mic (uda.mic) needs a self-training method, not 'source-only'" in result.output
    assert "Traceback" not in result.output
