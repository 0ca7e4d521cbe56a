"""TensorBoard image panels: inputs, labels and predictions of the current step, side by side.

A method's ``StepOutput.images`` names its tensors by kind: ``*_image`` (B, 3, H, W) normalised
images, ``*_label`` (B, H, W) train-id maps, ``*_logits`` (B, C, h, w) shown as their argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cluda_deploy.labels import LabelSpace
from training.methods import StepBatch, StepOutput


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) normalised -> (B, 3, H, W) float in [0, 1]."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return ((images.float() * s + m) / 255.0).clamp(0, 1)


def colorize(ids: torch.Tensor, label_space: LabelSpace) -> torch.Tensor:
    """(B, H, W) ids -> (B, 3, H, W) float colours in [0, 1]."""
    palette = torch.from_numpy(label_space.palette_array()).to(ids.device).float() / 255.0
    return palette[ids.long().clamp(0, 255)].permute(0, 3, 1, 2)


def panel_row(
    batch: StepBatch, out: StepOutput, label_space: LabelSpace, mean, std
) -> dict[str, torch.Tensor]:
    """Name -> (3, H, W) image in [0, 1] for the first sample of the batch."""
    tensors = {"source_image": batch.source_images, "source_label": batch.source_labels}
    if batch.target_images is not None:
        tensors["target_image"] = batch.target_images
    tensors.update(out.images)
    size = tuple(batch.source_images.shape[-2:])
    panels = {}
    for name, tensor in tensors.items():
        first = tensor[:1].detach()
        if name.endswith("_image"):
            img = denormalize(first, mean, std)
        elif name.endswith("_label"):
            img = colorize(first, label_space)
        elif name.endswith("_logits"):
            img = colorize(first.argmax(dim=1), label_space)
        else:
            continue
        panels[name] = F.interpolate(img, size=size, mode="nearest")[0].cpu()
    return panels


def log_images(
    writer, batch: StepBatch, out: StepOutput, label_space, mean, std, step: int
) -> None:
    for name, image in panel_row(batch, out, label_space, mean, std).items():
        writer.add_image(f"images/{name}", image, step)
