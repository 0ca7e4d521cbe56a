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
import logging
from pathlib import Path

from cluda_deploy.checkpoint import read_checkpoint
from cluda_deploy.config import Config

log = logging.getLogger("cluda.adapt")
# Stage 1 of the two-stage schedule writes here, inside the run directory; stage 2 in the run
# directory itself, so its checkpoints are the run's (evaluate/export/serve take them unchanged).
STAGE1_DIR = "stage1"


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
    """Whether the stage whose ``latest.pt`` this is ran all ``iters`` iterations."""
    if not latest.is_file():
        return False
    state = read_checkpoint(latest).get("training_state") or {}
    return int(state.get("iteration", -1)) >= iters


def adapt_confeti(
    cfg: Config, run_dir: str | Path, resume: bool | str | Path = False, progress: bool = True
):
    """Run ``cfg``'s whole CONFETI schedule; returns the last stage's ``AdaptResult`` (or the
    interrupted stage's, which a later ``resume=True`` continues)."""
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
    stage1_dir = run_dir / STAGE1_DIR
    stage1_latest = stage1_dir / "checkpoints" / "latest.pt"
    if resume and not stage1_latest.is_file():
        raise FileNotFoundError(
            f"cannot resume: {stage1_latest} does not exist; start without --resume or pass the "
            "run directory of a two-stage CONFETI run"
        )
    if not (resume and _finished(stage1_latest, first.train.iters)):
        result = adapt(first, stage1_dir, resume, progress)
        if result.interrupted:
            return result
    second = stage_config(cfg, 2, generator=stage1_latest)
    log.info("CONFETI stage 2: a fresh segmenter with the frozen generator of %s", stage1_latest)
    stage2_resume = bool(resume and (run_dir / "checkpoints" / "latest.pt").is_file())
    return adapt(second, run_dir, stage2_resume, progress)
