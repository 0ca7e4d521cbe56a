"""``cluda stylize``: what CONFETI's pixel-level alignment does to source images.

The translator's generator is rebuilt from a ``cluda adapt --method confeti`` checkpoint (its
architecture from the stored config, its weights from the checkpoint's ``modules``) and applied to
each image as in training: resized keep-ratio to the run's ``data.source_scale`` (or kept at its
native size), mapped to [-1, 1], reflect-padded to a multiple of 4, translated, cropped back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from cluda_deploy.checkpoint import checkpoint_info, read_checkpoint
from cluda_deploy.data.io import read_image
from cluda_deploy.data.transforms import rescale_size
from training.confeti.generator_io import GENERATOR_PREFIX, split_state, style_state_from_checkpoint
from training.confeti.style import style_from_config

# The generator's two stride-2 stages need sides divisible by 4 to give back the input size.
GENERATOR_MULTIPLE = 4
# Its residual blocks reflect-pad the stride-4 map by 1, which needs at least 2 cells.
GENERATOR_MIN_SIDE = 8


def load_generator(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[nn.Module, tuple[int, int]]:
    """``(generator in eval mode, the run's source scale (long, short))`` from a checkpoint."""
    data = read_checkpoint(path)
    info = checkpoint_info(data, path)
    state = split_state(style_state_from_checkpoint(data, path), GENERATOR_PREFIX)
    generator = style_from_config(info.config.confeti.style, with_critics=False).generator
    generator.load_state_dict(state)
    return generator.to(device).eval(), tuple(info.config.data.source_scale)


@torch.no_grad()
def stylize_array(
    generator: nn.Module, image: np.ndarray, device: torch.device | str = "cpu"
) -> np.ndarray:
    """``image (H, W, 3) uint8`` -> the translated image, same shape and dtype."""
    height, width = image.shape[:2]
    if min(height, width) < GENERATOR_MIN_SIDE:
        raise ValueError(
            f"image of {width}x{height} px is too small for the translator (sides >= "
            f"{GENERATOR_MIN_SIDE} px); use a larger image or a larger --scale"
        )
    x = torch.tensor(image, device=device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    pad_h, pad_w = (-height) % GENERATOR_MULTIPLE, (-width) % GENERATOR_MULTIPLE
    if pad_h or pad_w:
        mode = "reflect" if min(height, width) > GENERATOR_MULTIPLE else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    y = generator(x)[0, :, :height, :width]
    return ((y + 1.0) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


def stylize_images(
    checkpoint: str | os.PathLike,
    images: Sequence[Path],
    out_dir: Path,
    scale: tuple[int, int] | None | str = "checkpoint",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[Path]:
    """Write ``<stem>_stylized.png`` for every image; ``scale`` is (long, short), None (native)
    or ``'checkpoint'`` (the run's ``data.source_scale``). Returns the written paths."""
    generator, source_scale = load_generator(checkpoint, device)
    target_scale = source_scale if scale == "checkpoint" else scale
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(images, desc="stylize", disable=not progress, unit="img"):
        image = read_image(path)
        height, width = rescale_size(*image.shape[:2], target_scale)
        if (height, width) != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        out = out_dir / f"{path.stem}_stylized.png"
        Image.fromarray(stylize_array(generator, image, device)).save(out)
        written.append(out)
    return written
