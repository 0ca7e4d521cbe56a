"""Checkpoint engine: a cluda-deploy ``.pt`` served with PyTorch and the shared test-time protocol.

The model is rebuilt with :func:`cluda_deploy.checkpoint.load_segmenter`; each batch goes through
:mod:`cluda_deploy.inference` exactly as ``cluda evaluate`` / ``cluda predict`` do (keep-ratio
resize to the checkpoint's eval scale, ImageNet normalisation, whole or sliding-window
inference, logits resized back to the input size), then argmax on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.engines.base import EngineInfo, EngineOutput, check_batch, file_sha256, fit_min_side

# DAFormer evaluates Cityscapes at 1024x512 (research/deploy.md 3.2): (H, W) for warm-up when a
# checkpoint keeps native resolution and the settings name no size.
DEFAULT_WARMUP_SIZE = (512, 1024)


class TorchEngine:
    """``infer(images (N, H, W, 3) uint8) -> labels (N, H, W) uint8 (+ confidence)`` with PyTorch."""

    def __init__(self, path: Path, device: str = "auto"):
        import torch

        from cluda_deploy.checkpoint import load_segmenter
        from cluda_deploy.inference import pick_device

        self._torch = torch
        self.device = pick_device(device)
        self.model, ckpt = load_segmenter(path, self.device)
        self.eval_cfg = ckpt.config.eval
        # MiT needs a minimum side (its key/value reductions); smaller images are upscaled.
        self.min_side = int(getattr(getattr(self.model, "backbone", None), "min_input_size", 1))
        self.mean, self.std = ckpt.mean, ckpt.std
        scale = self.eval_cfg.scale
        warmup = [(min(scale), max(scale))] if scale else [DEFAULT_WARMUP_SIZE]
        self.info = EngineInfo(
            backend="torch",
            path=Path(path),
            sha256=file_sha256(path),
            label_space=ckpt.label_space,
            device=str(self.device),
            default_warmup_sizes=warmup,
            min_side=self.min_side,
            provenance=ckpt.provenance,
            details={
                "torch_version": str(torch.__version__),
                "eval": {
                    "mode": self.eval_cfg.mode,
                    "scale": list(scale) if scale else None,
                    "crop_size": list(self.eval_cfg.crop_size),
                    "stride": list(self.eval_cfg.stride),
                },
                "model": ckpt.config.to_dict()["model"],
            },
        )

    def infer(self, images: np.ndarray, confidence: bool = False) -> EngineOutput:
        from cluda_deploy.inference import rescale_size, to_input_tensor

        check_batch(images)
        height, width = images.shape[1:3]
        cfg = self.eval_cfg
        with self._torch.inference_mode():
            size = fit_min_side(rescale_size(height, width, cfg.scale), self.min_side)
            x = to_input_tensor(images, self.mean, self.std, size, self.device)
            logits = self.model.predict(
                x, mode=cfg.mode, crop_size=tuple(cfg.crop_size), stride=tuple(cfg.stride),
                out_size=(height, width),
            ).float()  # fmt: skip
            if not confidence:
                return EngineOutput(logits.argmax(dim=1).to(self._torch.uint8).cpu().numpy())
            conf, labels = logits.softmax(dim=1).max(dim=1)
            return EngineOutput(labels.to(self._torch.uint8).cpu().numpy(), conf.cpu().numpy())

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()
