"""Pixel-to-prototype contrast, the SePiCo regulariser (both signs) and the prototypical semantic
consistency loss, on hand-worked tensors (research/confeti.md sections 6 and 8)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.confeti.consistency import (
    consistency_term,
    prototype_similarity,
    semantic_consistency_loss,
)
from training.confeti.heads import ProjectionHead, affine_projection
from training.confeti.proto_contrast import (
    pixel_prototype_contrast,
    prototype_contrast_terms,
    prototype_regulariser,
    valid_pixels,
)
from training.confeti.style import StyleTransfer

EYE2 = torch.eye(2)


def test_contrast_hand_worked():
    """z = e0 against P = I: logits [1, 0] / tau; label 0 -> log(1 + e^(-1/tau))."""
    z = torch.tensor([[1.0, 0.0]])
    assert pixel_prototype_contrast(z, torch.tensor([0]), EYE2, 1.0).item() == pytest.approx(
        math.log(1 + math.exp(-1))
    )
    assert pixel_prototype_contrast(z, torch.tensor([1]), EYE2, 0.1).item() == pytest.approx(
        math.log(1 + math.exp(10))
    )


def test_regulariser_hand_worked_both_signs():
    """K = 2, P = I, tau = 1, zbar = e0: log p = [1 - log(1 + e), -log(1 + e)]."""
    z = torch.tensor([[1.0, 0.0]])
    total = 1 - 2 * math.log(1 + math.e)
    ref = prototype_regulariser(z, EYE2, 1.0, "reference").item()
    assert ref == pytest.approx(total / (2 * math.log(2)))
    assert prototype_regulariser(z, EYE2, 1.0, "uniform").item() == pytest.approx(-ref)
    # uniform softmax of the mean feature: sum_c log p_c = -K ln K exactly
    balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert prototype_regulariser(balanced, EYE2, 0.1, "reference").item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="known: reference, uniform"):
        prototype_regulariser(z, EYE2, 1.0, "other")


def entropy_after_step(mode: str) -> tuple[float, float]:
    """Entropy of softmax(zbar P^T / tau) before and after one gradient-descent step on z."""
    protos = torch.eye(3)
    z = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]], requires_grad=True)

    def entropy() -> float:
        p = torch.softmax(z.detach().mean(0) @ protos.T / 0.1, dim=0)
        return float(-(p * p.log()).sum())

    before = entropy()
    prototype_regulariser(z, protos, 0.1, mode).backward()
    with torch.no_grad():
        z -= 0.05 * z.grad
    return before, entropy()


def test_reference_sign_makes_the_mean_prediction_less_uniform():
    before, after = entropy_after_step("reference")
    assert after < before


def test_uniform_sign_makes_the_mean_prediction_more_uniform():
    before, after = entropy_after_step("uniform")
    assert after > before


def test_valid_pixels_downsample_drop_void_and_normalise():
    projected = torch.tensor([[[[3.0, 1.0]], [[4.0, 1.0]]]])  # (1, 2, 1, 2)
    labels = torch.tensor([[[1, 1, 255, 255], [1, 1, 255, 255]]])
    z, y = valid_pixels(projected, labels)
    assert torch.allclose(z, torch.tensor([[0.6, 0.8]])) and y.tolist() == [1]


def test_contrast_terms_weights_sampling_and_empty_pass():
    torch.manual_seed(0)
    projected = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    protos = torch.nn.functional.normalize(torch.randn(3, 3), dim=1)
    kwargs = {"temperature": 0.1, "reg_mode": "reference"}
    con, reg = prototype_contrast_terms(
        projected, labels, protos, num_samples=10_000, contrast_weight=0.5, reg_weight=2.0, **kwargs
    )
    z, y = valid_pixels(projected, labels)
    assert con.item() == pytest.approx(0.5 * pixel_prototype_contrast(z, y, protos, 0.1).item())
    assert reg.item() == pytest.approx(
        2.0 * prototype_regulariser(z, protos, 0.1, "reference").item()
    )
    # a few sampled pixels: the regulariser still uses every pixel's mean
    _, reg_few = prototype_contrast_terms(
        projected, labels, protos, num_samples=4, contrast_weight=0.5, reg_weight=2.0, **kwargs
    )
    assert reg_few.item() == pytest.approx(reg.item())
    void = torch.full((2, 8, 8), 255)
    con0, reg0 = prototype_contrast_terms(
        projected, void, protos, num_samples=4, contrast_weight=0.5, reg_weight=2.0, **kwargs
    )
    assert con0.item() == 0.0 and reg0.item() == 0.0 and con0.requires_grad


def test_prototype_similarity_and_consistency_hand_worked():
    projected = torch.tensor([[[[1.0]], [[2.0]]]])  # (1, 2, 1, 1): the vector [1, 2]
    sim = prototype_similarity(projected, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(sim, torch.tensor([[[[1.0, 3.0]]]]))  # (1, 1, 1, 2), no temperature
    source = torch.tensor([[[[1.0, 1.0]]]])
    assert semantic_consistency_loss(sim, source).item() == pytest.approx((0 + 4) / 2)


class TinyBackbone(nn.Module):
    """A one-stage 'backbone' with BatchNorm: ``images -> [map (B, 6, H/4, W/4)]``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=4, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, images):
        return [torch.relu(self.bn(self.conv(images)))]


def last_map(backbone):
    return lambda images: backbone(images)[-1]


def consistency_setup():
    torch.manual_seed(0)
    style = StyleTransfer(
        ngf=4, n_blocks=1, ndf=4, d_layers=3, mlp_channels=8, nce_layers=(0, 4),
        init_gain=0.02, with_critics=False,
    )  # fmt: skip
    backbone, projection, affine = TinyBackbone(), ProjectionHead(6, 5), affine_projection(5)
    protos = torch.nn.functional.normalize(torch.randn(3, 5), dim=1)
    return style, backbone, projection, affine, protos


@pytest.mark.parametrize("frozen_bn", [False, True])
def test_consistency_gradient_reaches_only_the_generator_and_the_1x1_layer(frozen_bn):
    style, backbone, projection, affine, protos = consistency_setup()
    source = torch.randn(2, 3, 16, 16)
    stylised = style(source)  # attached to the generator's graph
    running_mean = backbone.bn.running_mean.clone()
    loss = consistency_term(
        backbone, last_map(backbone), projection, affine, source, stylised, protos,
        weight=0.1, frozen_bn=frozen_bn,
    )  # fmt: skip
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in style.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in affine.parameters())
    assert all(p.grad is None for p in [*backbone.parameters(), *projection.parameters()])
    assert all(p.requires_grad for p in [*backbone.parameters(), *projection.parameters()])
    assert backbone.training and backbone.bn.training  # modes restored
    moved = not torch.equal(backbone.bn.running_mean, running_mean)
    assert moved is not frozen_bn  # reference: the two passes update BN statistics


def test_consistency_is_zero_for_an_identity_translation():
    _, backbone, projection, affine, protos = consistency_setup()
    with torch.no_grad():
        affine.weight.copy_(torch.eye(5).view(5, 5, 1, 1))
        affine.bias.zero_()
    backbone.eval()
    source = torch.randn(2, 3, 16, 16)
    loss = consistency_term(
        backbone, last_map(backbone), projection, affine, source, source.clone(), protos, weight=0.1
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
