"""CONFETI's training schedules as one ``cluda adapt`` run (research/confeti.md sections 1, 12, 16).

* two stages (``confeti.stages=2``, cxa9264/CONFETI): stage 1 trains the segmenter and the
  translator jointly for ``confeti.stage1_iters`` on ``confeti.stage1_crop_size`` crops, into
  ``RUN_DIR/stage1``; stage 2 retrains a fresh segmenter (from the same initial weights: ImageNet
  with the paper preset) for ``train.iters`` on ``data.crop_size`` crops with stage 1's final
  generator frozen, into ``RUN_DIR`` itself. The generator is handed over through
  ``confeti.generator`` (stage 1's ``latest.pt``); the reference makes users copy and rename
  ``cut_checkpoints/*_netG_<iter>.pth`` by hand.
* one stage (``confeti.stages=1``, the authors' CONFETII schedule): joint training for
  ``train.iters`` on ``data.crop_size`` crops, into ``RUN_DIR``.

``resume=True`` continues wherever the schedule stopped: a finished stage 1 is not run again.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from cluda_deploy.config import Config


def stage_config(cfg: Config, stage: int, generator: str | Path | None = None) -> Config:
    """The config of one stage of ``cfg``'s schedule (module docstring)."""
    out = copy.deepcopy(cfg)
    out.confeti.stage = stage
    if stage == 1 and cfg.confeti.stages == 2:
        out.train.iters = cfg.confeti.stage1_iters
        out.data.crop_size = tuple(cfg.confeti.stage1_crop_size)
    if generator is not None:
        out.confeti.generator = str(generator)
    return out


def _finished(latest: Path, iters: int) -> bool:
    if not latest.is_file():
        return False
    data = torch.load(latest, map_location="cpu", weights_only=True)
    return int(data.get("training_state", {}).get("iteration", -1)) >= iters


def adapt_confeti(cfg: Config, run_dir: str | Path, resume: bool | str | Path = False,
                  progress: bool = True):  # fmt: skip
    """Run ``cfg``'s whole CONFETI schedule; returns the last stage's ``AdaptResult``."""
    from training.loop import adapt

    if cfg.confeti.stages not in (1, 2):
        raise ValueError(f"confeti.stages must be 1 or 2, got {cfg.confeti.stages}")
    run_dir = Path(run_dir)
    if cfg.confeti.stages == 1:
        return adapt(stage_config(cfg, 1), run_dir, resume, progress)
    if resume not in (False, True):
        raise ValueError(
            "a two-stage CONFETI run resumes with a bare --resume (it finds the stage to "
            "continue); to resume one stage from a file, set confeti.stage=1 or 2"
        )
    first = stage_config(cfg, 1)
    stage1_dir = run_dir / "stage1"
    stage1_latest = stage1_dir / "checkpoints" / "latest.pt"
    if not (resume and _finished(stage1_latest, first.train.iters)):
        result = adapt(first, stage1_dir, bool(resume and stage1_latest.is_file()), progress)
        if result.interrupted:
            return result
    second = stage_config(cfg, 2, generator=stage1_latest)
    stage2_resume = bool(resume and (run_dir / "checkpoints" / "latest.pt").is_file())
    return adapt(second, run_dir, stage2_resume, progress)
