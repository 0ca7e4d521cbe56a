"""``cluda adapt --method confeti`` end to end on the demo domains: both schedules, the translator
in the checkpoints, the stage-1 -> stage-2 hand-over, exact resume across stages, ``cluda stylize``."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cluda_deploy.checkpoint import checkpoint_info, read_checkpoint, save_checkpoint
from cluda_deploy.cli import main
from cluda_deploy.config import resolve_config
from cluda_deploy.labels import label_space_for_source
from cluda_deploy.models import create_segmenter
from tests.checkpoint_asserts import assert_same_weights
from training.confeti.generator_io import STYLE_MODULE
from training.loop import adapt
from training.methods.confeti import Confeti

ITERS = 2


def tiny_sets(root, stages: int = 2) -> list[str]:
    """Two iterations per stage on 32x32 crops, every CONFETI term active from the first steps."""
    return [
        f"data.root={root}", f"train.iters={ITERS}", f"confeti.stage1_iters={ITERS}",
        f"confeti.stages={stages}", f"train.eval_interval={ITERS}",
        f"train.checkpoint_interval={ITERS}", "train.log_interval=1", "train.image_log_interval=1",
        "data.batch_size=2", "data.crop_size=32x32", "confeti.stage1_crop_size=32x32",
        "confeti.contrast_start=0", "confeti.proto_warmup_iters=0", "confeti.cam_mix_start=0",
    ]  # fmt: skip


def style_keys(ckpt: dict) -> set[str]:
    return {key.split(".")[0] for key in ckpt["modules"][STYLE_MODULE]}


def assert_same_run(a: dict, b: dict) -> None:
    assert_same_weights(a, b)
    for module, state in a["modules"].items():
        for name, value in state.items():
            assert torch.equal(value, b["modules"][module][name]), (module, name)
    for name, value in a["training_state"]["extra_modules"]["confeti_heads"].items():
        assert torch.equal(value, b["training_state"]["extra_modules"]["confeti_heads"][name]), name


def test_two_stages_hand_the_generator_over(tiny_demo_root, tmp_path):
    result = adapt(resolve_config("demo-confeti", tiny_sets(tiny_demo_root)), tmp_path / "run",
                   progress=False)  # fmt: skip
    assert result.iterations == ITERS and not result.interrupted
    stage1 = read_checkpoint(tmp_path / "run" / "stage1" / "checkpoints" / "latest.pt")
    stage2 = read_checkpoint(result.latest)
    # stage 1 trains G, D and F with their own Adam; stage 2 keeps stage 1's final G only, frozen
    assert style_keys(stage1) == {"generator", "discriminator", "patch_mlp"}
    assert set(stage1["training_state"]["extra_optimizers"]) == {"style"}
    assert style_keys(stage2) == {"generator"}
    assert stage2["training_state"]["extra_optimizers"] == {}
    for name, value in stage1["modules"][STYLE_MODULE].items():
        if name.startswith("generator."):
            assert torch.equal(value, stage2["modules"][STYLE_MODULE][name]), name
    info1, info2 = checkpoint_info(stage1), checkpoint_info(stage2)
    assert (info1.config.confeti.stage, info2.config.confeti.stage) == (1, 2)
    assert info2.config.confeti.generator == str(
        tmp_path / "run" / "stage1" / "checkpoints" / "latest.pt"
    )
    assert info1.provenance["method"] == info2.provenance["method"] == "confeti"
    # stage 2 retrains a fresh segmenter: its weights are not stage 1's
    assert any(not torch.equal(v, stage2["state_dict"][k]) for k, v in stage1["state_dict"].items())
    assert STYLE_MODULE in read_checkpoint(result.best)["modules"]  # best.pt can be stylised too


def test_resume_is_exact_within_and_across_stages(tiny_demo_root, tmp_path, monkeypatch):
    cfg = resolve_config("demo-confeti", tiny_sets(tiny_demo_root))
    adapt(cfg, tmp_path / "straight", progress=False)
    original_step = Confeti.step

    def ctrl_c_at(stage: int):
        def step(self, nets, batch, iteration):
            if self.stage == stage and iteration == 0:
                signal.raise_signal(signal.SIGINT)  # this step finishes, then the loop stops
            return original_step(self, nets, batch, iteration)

        return step

    run = tmp_path / "resumed"
    monkeypatch.setattr(Confeti, "step", ctrl_c_at(1))
    stopped = adapt(cfg, run, progress=False)
    assert stopped.interrupted and stopped.iterations == 1
    assert not (run / "checkpoints" / "latest.pt").exists()  # stage 2 has not started
    monkeypatch.setattr(Confeti, "step", ctrl_c_at(2))
    stopped = adapt(cfg, run, resume=True, progress=False)  # finishes stage 1, stops in stage 2
    assert stopped.interrupted and stopped.iterations == 1
    monkeypatch.setattr(Confeti, "step", original_step)
    done = adapt(cfg, run, resume=True, progress=False)
    assert done.iterations == ITERS and not done.interrupted
    for part in ("stage1/checkpoints/latest.pt", "checkpoints/latest.pt"):
        assert_same_run(read_checkpoint(tmp_path / "straight" / part), read_checkpoint(run / part))
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        adapt(cfg, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ValueError, match="bare --resume"):
        adapt(cfg, run, resume=run / "checkpoints" / "latest.pt", progress=False)


def test_cli_one_stage_run_then_stylize(tiny_demo_root, tmp_path):
    run, runner = tmp_path / "run", CliRunner()
    args = ["adapt", "--preset", "demo-confeti", "--method", "confeti", "--run-dir", str(run), "-q"]
    for assignment in tiny_sets(tiny_demo_root, stages=1):
        args += ["--set", assignment]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert not (run / "stage1").exists()
    latest = read_checkpoint(run / "checkpoints" / "latest.pt")
    assert style_keys(latest) == {"generator", "discriminator", "patch_mlp"}

    out = tmp_path / "stylised"
    images = tiny_demo_root / "gta" / "images"
    result = runner.invoke(main, ["stylize", "-c", str(run / "checkpoints" / "latest.pt"),
                                  str(images), "--out", str(out), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = sorted(out.glob("*_stylized.png"))
    assert len(written) == len(list(images.glob("*.png")))
    source_scale = checkpoint_info(latest).config.data.source_scale
    assert max(Image.open(written[0]).size) == max(source_scale)  # the run's source resize
    result = runner.invoke(main, ["stylize", "-c", str(run / "checkpoints" / "latest.pt"),
                                  str(next(images.glob("*.png"))), "--out", str(out),
                                  "--scale", "native", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_stylize_errors_name_the_fix(tmp_path):
    cfg = resolve_config("demo")
    plain = save_checkpoint(tmp_path / "plain.pt", config=cfg,
                            label_space=label_space_for_source(cfg.data.source),
                            state_dict=create_segmenter(cfg.model).state_dict())  # fmt: skip
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    runner = CliRunner()
    result = runner.invoke(main, ["stylize", "-c", str(plain), str(image), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "holds no CONFETI translator" in result.output
    result = runner.invoke(main, ["stylize", "-c", str(plain), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "no IMAGES given" in result.output
    result = runner.invoke(main, ["stylize", "-c", str(plain), str(tmp_path / "none"), "--out",
                                  str(tmp_path)])  # fmt: skip
    assert result.exit_code != 0 and "does not exist" in result.output
