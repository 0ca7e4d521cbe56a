"""CONFETI's pixel-level alignment: a CUT image translator from the source to the target style.

research/confeti.md sections 3, 4 (steps 2 and 8) and 8. One module holds the three CUT networks
(generator G, PatchGAN discriminator D, PatchNCE MLP F); the method computes its losses inside
the step and the loop runs one backward for everything, then steps the segmenter's optimizer and
the translator's own Adam (:func:`build_style_optimizer`: lr 2e-4, betas (0.5, 0.999), constant;
one Adam over three parameter groups is the same update as CUT's three Adams).

Losses of one stage-1 step, with ``A`` the source crops and ``B`` the target crops in [-1, 1]:

* ``fake_B, idt_B = G(A), G(B)`` (one pass over the concatenation, as CUT does);
* generator: ``lambda_GAN * LSGAN(D(fake_B), real) + lambda_NCE * (NCE(A, fake_B) + NCE(B,
  idt_B)) / 2``, D's parameters frozen (so this term trains G and F only);
* discriminator: ``(LSGAN(D(fake_B.detach()), fake) + LSGAN(D(B), real)) / 2``.

Deviation, on purpose: the reference steps D first and then computes the generator's
adversarial term with the *updated* D; with the loop's single backward both terms see the same D
(simultaneous rather than alternating GAN updates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from training.confeti.freeze import frozen_parameters
from training.confeti.style_losses import lsgan_loss, patch_nce_loss
from training.confeti.style_nets import (
    PatchGANDiscriminator,
    PatchSampleMLP,
    ResnetGenerator,
    init_cut_weights,
)

# Every tensor the segmenter sees is ImageNet-normalised 0..255 RGB; CUT works in [-1, 1].
PIXEL_MAX = 255.0


def _stats(mean: Sequence[float], std: Sequence[float], like: Tensor) -> tuple[Tensor, Tensor]:
    as_map = {"device": like.device, "dtype": like.dtype}
    return (
        torch.tensor(mean, **as_map).view(1, -1, 1, 1),
        torch.tensor(std, **as_map).view(1, -1, 1, 1),
    )


def to_tanh_range(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised ``(images * 255 - mean) / std`` -> CUT's ``[-1, 1]`` range; ``(B, 3, H, W)``."""
    m, s = _stats(mean, std, images)
    return (images * s + m) / PIXEL_MAX * 2.0 - 1.0


def from_tanh_range(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`to_tanh_range`: ``[-1, 1]`` -> the segmenter's normalised input."""
    m, s = _stats(mean, std, images)
    return ((images + 1.0) / 2.0 * PIXEL_MAX - m) / s


class StyleTransfer(nn.Module):
    """CUT's G, D and F. Without ``with_critics`` only G is built (the frozen stage-2
    translator, or ``cluda stylize``)."""

    def __init__(
        self,
        *,
        ngf: int,
        n_blocks: int,
        ndf: int,
        d_layers: int,
        mlp_channels: int,
        nce_layers: Sequence[int],
        init_gain: float,
        with_critics: bool = True,
    ):
        super().__init__()
        self.nce_layers = tuple(nce_layers)
        self.generator = init_cut_weights(ResnetGenerator(ngf, n_blocks), init_gain)
        self.generator.check_layers(self.nce_layers)
        self.discriminator: PatchGANDiscriminator | None = None
        self.patch_mlp: PatchSampleMLP | None = None
        if with_critics:
            self.discriminator = init_cut_weights(PatchGANDiscriminator(ndf, d_layers), init_gain)
            channels = self.generator.layer_channels(self.nce_layers)
            self.patch_mlp = init_cut_weights(PatchSampleMLP(channels, mlp_channels), init_gain)

    def forward(self, images: Tensor) -> Tensor:
        """``G``: ``(B, 3, H, W)`` in [-1, 1] -> stylised, same shape (H, W multiples of 4)."""
        return self.generator(images)

    def nce_loss(
        self, inputs: Tensor, outputs: Tensor, num_patches: int, temperature: float
    ) -> Tensor:
        """CUT ``calculate_NCE_loss(src=inputs, tgt=outputs)``: PatchNCE between G's encodings of
        the output (queries) and of the input (keys) at the same sampled locations, averaged over
        patches and then over the NCE layers. ``inputs, outputs: (B, 3, H, W)``."""
        if self.patch_mlp is None:
            raise RuntimeError("this StyleTransfer was built without D and F (with_critics=False)")
        keys, ids = self.patch_mlp(self.generator.encode(inputs, self.nce_layers), num_patches)
        queries, _ = self.patch_mlp(
            self.generator.encode(outputs, self.nce_layers), num_patches, ids
        )
        batch = inputs.shape[0]
        per_layer = [
            patch_nce_loss(q, k, batch, temperature).mean()
            for q, k in zip(queries, keys, strict=True)
        ]
        return torch.stack(per_layer).mean()

    def generator_losses(
        self,
        source: Tensor,
        fake: Tensor,
        target: Tensor,
        identity: Tensor | None,
        *,
        lambda_gan: float,
        lambda_nce: float,
        num_patches: int,
        temperature: float,
    ) -> dict[str, Tensor]:
        """``{'style_gan', 'style_nce'}``: CUT ``compute_G_loss`` (module docstring) with the
        discriminator frozen. ``identity`` = G(target) or None (CUT's ``nce_idt=False``).
        All images ``(B, 3, H, W)`` in [-1, 1]."""
        if self.discriminator is None:
            raise RuntimeError("this StyleTransfer was built without D and F (with_critics=False)")
        with frozen_parameters(self.discriminator):
            gan = lsgan_loss(self.discriminator(fake), target_is_real=True)
        nce = self.nce_loss(source, fake, num_patches, temperature)
        if identity is not None:
            nce = 0.5 * (nce + self.nce_loss(target, identity, num_patches, temperature))
        return {"style_gan": lambda_gan * gan, "style_nce": lambda_nce * nce}

    def discriminator_loss(self, fake: Tensor, target: Tensor) -> Tensor:
        """CUT ``compute_D_loss``: ``(LSGAN(D(fake.detach()), 0) + LSGAN(D(target), 1)) / 2``."""
        if self.discriminator is None:
            raise RuntimeError("this StyleTransfer was built without D and F (with_critics=False)")
        fake_term = lsgan_loss(self.discriminator(fake.detach()), target_is_real=False)
        real_term = lsgan_loss(self.discriminator(target), target_is_real=True)
        return 0.5 * (fake_term + real_term)


def build_style_optimizer(
    style: StyleTransfer, lr: float, betas: tuple[float, float]
) -> torch.optim.Adam:
    """CUT's Adam (no weight decay) over G, D and F, one named group each; never scheduled, as in
    CONFETI (CUT's schedulers are created but never stepped). Raises without D and F."""
    if style.discriminator is None or style.patch_mlp is None:
        raise ValueError("the style optimizer trains G, D and F; build StyleTransfer with critics")
    groups = [
        {"params": list(style.generator.parameters()), "name": "style/generator"},
        {"params": list(style.discriminator.parameters()), "name": "style/discriminator"},
        {"params": list(style.patch_mlp.parameters()), "name": "style/patch_mlp"},
    ]
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))


def style_from_config(style_cfg: Any, with_critics: bool) -> StyleTransfer:
    """The translator described by ``cfg.confeti.style`` (``StyleConfig``)."""
    s = style_cfg
    return StyleTransfer(
        ngf=s.ngf, n_blocks=s.n_blocks, ndf=s.ndf, d_layers=s.d_layers,
        mlp_channels=s.mlp_channels, nce_layers=s.nce_layers, init_gain=s.init_gain,
        with_critics=with_critics,
    )  # fmt: skip
