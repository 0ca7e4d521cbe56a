"""The ``cluda`` command line: instant help, and the main commands end to end on the demo domains."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cluda_deploy.cli import main


def test_help_is_lazy_and_lists_subcommands():
    # `cluda --help` must not import torch or any stage: that is what keeps it instant.
    code = (
        "import sys; from click.testing import CliRunner; from cluda_deploy.cli import main;"
        "r = CliRunner().invoke(main, ['--help']); print(r.output);"
        "heavy = [m for m in ('torch', 'training', 'export', 'server', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for command in ("adapt", "evaluate", "predict", "data", "demo", "presets"):
        assert command in out


def test_presets_listed():
    result = CliRunner().invoke(main, ["presets"])
    assert result.exit_code == 0
    assert "demo" in result.output and "daformer-mitb5" in result.output


def test_adapt_dry_run_prints_resolved_config():
    result = CliRunner().invoke(
        main, ["adapt", "--preset", "demo", "--iters", "7", "--set", "optim.lr=0.01", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)
    assert cfg["train"]["iters"] == 7 and cfg["optim"]["lr"] == 0.01


def test_bad_override_is_one_line_error():
    result = CliRunner().invoke(main, ["adapt", "--preset", "demo", "--set", "train.bogus=1"])
    assert result.exit_code != 0
    assert "unknown key 'train.bogus'" in result.output
    assert "Traceback" not in result.output


def test_missing_dataset_names_the_fix(tmp_path):
    result = CliRunner().invoke(
        main, ["adapt", "--source", "gta", "--target", "cityscapes", "--data-root", str(tmp_path),
               "--iters", "1", "-q"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert str(tmp_path / "gta") in result.output
    assert "Traceback" not in result.output


def test_evaluate_rejects_foreign_checkpoint(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"definitely not a checkpoint")
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(bogus)])
    assert result.exit_code != 0
    assert "not a readable cluda-deploy checkpoint" in result.output


@pytest.mark.slow
def test_adapt_evaluate_predict_on_demo(tiny_demo_root, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["adapt", "--preset", "demo", "--method", "source-only", "--data-root", str(tiny_demo_root),
         "--run-dir", str(run), "--iters", "4", "--set", "train.eval_interval=4",
         "--set", "data.batch_size=2", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ckpt = run / "checkpoints" / "best.pt"
    assert ckpt.is_file() and (run / "checkpoints" / "latest.pt").is_file()
    assert (run / "eval" / "iter_000004.json").is_file()

    out_json = tmp_path / "scores.json"
    result = runner.invoke(
        main,
        ["evaluate", "--checkpoint", str(ckpt), "--dataset", "demo-target", "--data-root",
         str(tiny_demo_root), "--json", str(out_json), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "road" in result.output
    scores = json.loads(out_json.read_text())
    assert 0.0 <= scores["mIoU"] <= 1.0 and len(scores["per_class_iou"]) == 19

    # predict on odd-sized images, a folder and a file
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (77, 131, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    result = runner.invoke(
        main, ["predict", "-c", str(ckpt), str(folder), str(tmp_path / "b.jpg"), "--out",
               str(tmp_path / "pred"), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    label = np.asarray(Image.open(tmp_path / "pred" / "a_labelTrainIds.png"))
    assert label.shape == (77, 131) and label.max() < 19
    overlay = Image.open(tmp_path / "pred" / "b_overlay.png")
    assert overlay.size == (50, 40) and overlay.mode == "RGB"


def test_data_prepare_and_check(make_gta, make_cityscapes, tmp_path):
    make_gta(3, root=tmp_path / "data" / "gta")
    make_cityscapes(root=tmp_path / "data" / "cityscapes")
    runner = CliRunner()
    before = runner.invoke(main, ["data", "check", "--data-root", str(tmp_path / "data")])
    assert before.exit_code == 1
    assert "cluda data prepare gta --root" in before.output

    for name in ("gta", "cityscapes"):
        result = runner.invoke(
            main, ["data", "prepare", name, "--root", str(tmp_path / "data" / name), "--workers", "1"]
        )
        assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "data" / "gta" / "labels").glob("*_labelTrainIds.png"))) == 3
    assert (tmp_path / "data" / "gta" / "sample_class_stats.json").is_file()

    after = runner.invoke(main, ["data", "check", "--data-root", str(tmp_path / "data")])
    assert after.exit_code == 0, after.output


def test_data_prepare_missing_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["data", "prepare", "gta", "--root", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert str(tmp_path / "nope") in result.output and "Traceback" not in result.output
