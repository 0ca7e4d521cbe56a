"""Evaluate a segmenter on a labelled split: per-class IoU, mIoU (and mIoU16/13 for Synthia)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from cluda_deploy.config import EvalConfig
from cluda_deploy.data.io import read_image, read_train_ids
from cluda_deploy.inference import segment_logits
from cluda_deploy.labels import LabelSpace
from cluda_deploy.metrics import ConfusionMatrix, SegmentationScores


def evaluate_pairs(
    model: nn.Module,
    pairs: Sequence[tuple[Path, Path]],
    eval_cfg: EvalConfig,
    label_space: LabelSpace,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> SegmentationScores:
    """Run the test-time protocol over (image, train-id label) pairs and accumulate IoU."""
    if not pairs:
        raise ValueError("nothing to evaluate: the split has no labelled images")
    confusion = ConfusionMatrix(label_space.num_classes, label_space.ignore_index)
    was_training = model.training
    model.eval()
    try:
        for image_path, label_path in tqdm(pairs, desc="evaluate", disable=not progress, unit="img"):
            image, label = read_image(image_path), read_train_ids(label_path)
            logits = segment_logits(model, image, eval_cfg, mean, std, device)
            if tuple(logits.shape[-2:]) != label.shape:
                logits = torch.nn.functional.interpolate(
                    logits, size=label.shape, mode="bilinear", align_corners=False
                )
            confusion.update(logits.argmax(dim=1)[0].cpu(), label)
    finally:
        model.train(was_training)
    return SegmentationScores.from_confusion(confusion, label_space, num_images=len(pairs))
