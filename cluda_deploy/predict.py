"""Write train-id label PNGs and Cityscapes-coloured overlays for images of any size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from cluda_deploy.config import EvalConfig
from cluda_deploy.data.io import IMAGE_SUFFIXES, read_image
from cluda_deploy.inference import segment_image
from cluda_deploy.labels import LabelSpace


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (recursively) into a sorted list of image files."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(
                p for p in sorted(item.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist; pass image files or folders of images")
    if not found:
        raise FileNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, inputs))}"
        )
    return found


def predict_images(
    model: nn.Module,
    images: Sequence[Path],
    out_dir: Path,
    eval_cfg: EvalConfig,
    label_space: LabelSpace,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict]:
    """For each image write ``<stem>_labelTrainIds.png`` and ``<stem>_overlay.png`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(images, desc="predict", disable=not progress, unit="img"):
        image = read_image(path)
        label, confidence = segment_image(model, image, eval_cfg, mean, std, device)
        label_path = out_dir / f"{path.stem}_labelTrainIds.png"
        overlay_path = out_dir / f"{path.stem}_overlay.png"
        Image.fromarray(label).save(label_path)
        Image.fromarray(label_space.overlay(image, label)).save(overlay_path)
        shares = np.bincount(label.ravel(), minlength=label_space.num_classes) / label.size
        written.append(
            {
                "image": str(path),
                "label": str(label_path),
                "overlay": str(overlay_path),
                "size": [int(image.shape[1]), int(image.shape[0])],
                "mean_confidence": round(float(confidence.mean()), 4),
                "class_shares": {
                    label_space.class_names[i]: round(float(s), 4)
                    for i, s in enumerate(shares[: label_space.num_classes])
                    if s > 0
                },
            }
        )
    return written
