"""CLUDA's learned-weighted multi-resolution contrastive loss: hand-worked values, equality with
the released dense formula (``multi_resolution_cl``, loss and gradients within 1e-5), the intended
formula spelled out as sums, grid bookkeeping, and no N x N matrix kept for backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cluda_deploy.models import create_segmenter
from tests.test_hrda_model import TINY
from training.contrastive_weighted import (
    ContrastGrid,
    contrast_grid,
    feature_weighter,
    multires_contrastive_loss,
    weighted_contrastive_loss,
)
from training.hrda import HRDATrainForward, HRDAViews, hrda_seg_loss

THINGS = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def released_contrast(feats, labels, imnet_mask, sim_weight, feat_ext=None):
    """user0407/CLUDA ``contrast``, ported line by line to the CPU."""
    contrast_feature = torch.cat(torch.unbind(feats, dim=1), dim=0)
    if feat_ext is not None:
        ext = torch.cat(torch.unbind(feat_ext, dim=1), dim=0)
        anchor_dot_contrast = contrast_feature @ ext.T
    else:
        anchor_dot_contrast = contrast_feature @ contrast_feature.T
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = torch.eq(labels, labels.T).float()
    neg_mask = 1 - mask
    logits_mask = torch.eye(mask.shape[0]).logical_not()
    mask = mask * logits_mask
    neg_logits = (torch.exp(logits) * neg_mask).sum(1, keepdim=True)
    log_prob = logits - torch.log(torch.exp(logits) + neg_logits)
    mask = mask * imnet_mask
    log_prob = log_prob * sim_weight if feat_ext is None else log_prob * (1 - sim_weight)
    return log_prob * mask, mask


def released_multi_resolution_cl(lr_feats, hr_feats, labels, att, hr_lbl, pseudo_weight=None):
    """user0407/CLUDA ``multi_resolution_cl`` (dense N x N), ported line by line to the CPU.
    Inputs as its caller passes them: (B, C, g, g) features, (B, 1, g, g) maps."""
    labels = labels.reshape(-1, 1)
    hr_lbl = hr_lbl.reshape(-1, 1)
    fdist_mask = torch.any(labels[..., None] == torch.tensor(THINGS), -1)
    imnet_mask = fdist_mask.logical_not().view(-1, 1)
    imnet_mask = torch.eq(imnet_mask, imnet_mask.T).float()
    if pseudo_weight is not None:
        pw = pseudo_weight.reshape(-1, 1)
        lbl_sim_weight = pw @ pw.T
    lr_feats = lr_feats.permute(0, 2, 3, 1)
    lr_feats = F.normalize(lr_feats.reshape(lr_feats.shape[0], -1, lr_feats.shape[3]), dim=-1)
    hr_feats = hr_feats.permute(0, 2, 3, 1)
    hr_feats = F.normalize(hr_feats.reshape(hr_feats.shape[0], -1, hr_feats.shape[3]), dim=-1)
    mix_mask = torch.where(hr_lbl == 0, 0, 1)
    mix_lbl = mix_mask * hr_lbl + (1 - mix_mask) * labels
    att = att.reshape(-1, 1)
    ld_sim_weight = (att @ att.T) * mix_mask.view(-1, 1)
    lr_cl, mask = released_contrast(lr_feats, labels, imnet_mask, ld_sim_weight)
    mx_cl, _ = released_contrast(lr_feats, mix_lbl, imnet_mask, ld_sim_weight, feat_ext=hr_feats)
    log_prob = lr_cl + mx_cl
    if pseudo_weight is not None:
        log_prob = log_prob * lbl_sim_weight
    den = mask.sum(1)
    den[den == 0] = 1
    return 0.5 * (-log_prob.sum(1) / den).mean()


def random_grid(seed=0, batch=2, channels=6, size=5, classes=3, void_share=0.2):
    """Non-negative features (post-ReLU like the fused map), never an all-zero vector (whose
    normalised gradient is 1/eps in every implementation)."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.rand(batch, channels, size, size, generator=gen).double() + 0.01
    detail = torch.rand(batch, channels, size, size, generator=gen).double() + 0.01
    labels = torch.randint(0, classes, (batch, size, size), generator=gen)
    labels[torch.rand(batch, size, size, generator=gen) < void_share] = 255
    weight = torch.rand(batch, size, size, generator=gen).double()
    inside = torch.zeros(batch, size, size, dtype=torch.bool)
    inside[:, 1:4, 2:5] = True
    rho = torch.rand(batch, size, size, generator=gen).double()
    return ContrastGrid(context.requires_grad_(), detail.requires_grad_(),
                        weight.requires_grad_(), inside, labels, rho)  # fmt: skip


def leaves(grid):
    return grid.context, grid.detail, grid.weight


def loop_loss(grid: ContrastGrid, void=255):
    """The module docstring's formula with explicit sums, batch-major pairs, void excluded."""
    c = grid.context.shape[1]
    u = F.normalize(grid.context.permute(0, 2, 3, 1).reshape(-1, c), dim=1)
    v = F.normalize(grid.detail.permute(0, 2, 3, 1).reshape(-1, c), dim=1)
    y, w = grid.labels.reshape(-1).tolist(), grid.weight.reshape(-1)
    m, rho = grid.inside.reshape(-1).float(), grid.pixel_weight.reshape(-1)
    valid = [label != void for label in y]
    total = u.new_zeros(())
    for i in range(len(y)):
        if not valid[i]:
            continue
        pos = [j for j in range(len(y)) if j != i and valid[j] and y[j] == y[i]]
        neg = [k for k in range(len(y)) if valid[k] and y[k] != y[i]]
        neg_ll = sum((torch.exp(u[i] @ u[k]) for k in neg), u.new_zeros(()))
        neg_lh = sum((torch.exp(u[i] @ v[k]) for k in neg), u.new_zeros(()))
        acc = u.new_zeros(())
        for j in pos:
            s_ll, s_lh = u[i] @ u[j], u[i] @ v[j]
            l_ll = s_ll - torch.log(torch.exp(s_ll) + neg_ll)
            l_lh = s_lh - torch.log(torch.exp(s_lh) + neg_lh)
            omega = m[i] * w[i] * w[j]
            acc = acc + rho[i] * rho[j] * (omega * l_ll + (1 - omega) * l_lh)
        total = total - acc / max(len(pos), 1)
    return 0.5 * total / sum(valid)


# --------------------------------------------------------------------------- hand-worked


def three_pixels(weight, inside):
    # u1 = u2 = (1, 0), u3 = (0, 1); v1 = (0, 1), v2 = v3 = (1, 0); labels (0, 0, 1)
    context = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    detail = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    return weighted_contrastive_loss(
        context, detail, torch.tensor([0, 0, 1]), torch.tensor(weight), torch.tensor(inside)
    )


def test_hand_worked_three_pixels():
    # Anchors 1, 2: one positive (each other), negative 3; anchor 3 has no positive.
    # l^LL_12 = l^LL_21 = 1 - log(e + 1); l^LH_12 = 1 - log(e + e) = -log 2;
    # l^LH_21 = 0 - log(1 + e). L = -0.5 / 3 * sum over the two anchors.
    ll = 1 - math.log(math.e + 1)
    # w = 1 inside the crop: omega = 1, pure context-context
    loss = three_pixels([1.0, 1.0, 1.0], [True, True, False])
    assert loss.item() == pytest.approx(-0.5 / 3 * 2 * ll, abs=1e-6)
    # w_1 = 0.5: omega_12 = omega_21 = 0.5, half of each term
    loss = three_pixels([0.5, 1.0, 1.0], [True, True, False])
    expected = 0.5 * ll + 0.5 * -math.log(2) + 0.5 * ll + 0.5 * -math.log(1 + math.e)
    assert loss.item() == pytest.approx(-0.5 / 3 * expected, abs=1e-6)
    # anchor 1 outside the crop: context-detail only (omega = 0)
    loss = three_pixels([1.0, 1.0, 1.0], [False, True, False])
    assert loss.item() == pytest.approx(-0.5 / 3 * (-math.log(2) + ll), abs=1e-6)


def test_pixel_weights_and_void():
    grid = random_grid(seed=1)
    grid.labels[:] = 255
    assert multires_contrastive_loss(grid).item() == 0.0  # nothing to contrast
    grid = random_grid(seed=1)
    halved = ContrastGrid(*leaves(grid), grid.inside, grid.labels, grid.pixel_weight * 0.5)
    full = multires_contrastive_loss(grid)
    # rho_i rho_j: halving every weight quarters the loss
    assert multires_contrastive_loss(halved).item() == pytest.approx(full.item() / 4, rel=1e-6)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("with_rho", [True, False])
def test_streamed_equals_the_released_dense_formula(chunk, with_rho):
    """Released behaviour: pixel-major feature rows, void as a class, ``m = label * box != 0``."""
    grid = random_grid(seed=chunk)
    grid.labels[grid.labels == 255] = 0  # road, so that m's label test matters inside the box
    grid.labels[0, 0, :2] = 255
    refs = [t.detach().clone().requires_grad_() for t in leaves(grid)]
    hr_lbl = grid.labels * grid.inside
    rho = grid.pixel_weight if with_rho else None
    dense = released_multi_resolution_cl(
        refs[0], refs[1], grid.labels[:, None], refs[2][:, None], hr_lbl[:, None],
        None if rho is None else rho[:, None],
    )  # fmt: skip
    released = ContrastGrid(*leaves(grid), hr_lbl != 0, grid.labels, rho)
    streamed = multires_contrastive_loss(
        released, void_as_class=True, faithful_ordering=True, chunk_size=chunk
    )
    assert streamed.item() == pytest.approx(dense.item(), abs=1e-5)
    dense.backward()
    streamed.backward()
    for ours, ref in zip(leaves(grid), refs, strict=True):
        torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=1e-5)


def test_streamed_equals_explicit_sums_intended_version():
    grid = random_grid(seed=11, batch=2, size=4)
    loss = multires_contrastive_loss(grid, chunk_size=5)
    expected = loop_loss(grid)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    for ours, ref in zip(torch.autograd.grad(loss, leaves(grid)),
                         torch.autograd.grad(expected, leaves(grid)), strict=True):  # fmt: skip
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_orderings_agree_for_one_image_and_differ_for_two():
    one = random_grid(seed=2, batch=1)
    assert multires_contrastive_loss(one, faithful_ordering=True).item() == pytest.approx(
        multires_contrastive_loss(one).item(), abs=1e-6
    )
    two = random_grid(seed=2, batch=2)
    faithful = multires_contrastive_loss(two, faithful_ordering=True).item()
    assert abs(faithful - multires_contrastive_loss(two).item()) > 1e-3


def test_float32_at_a_realistic_width_matches_the_dense_formula():
    grid = random_grid(seed=3, batch=2, channels=32, size=12, classes=6, void_share=0.0)
    grid = ContrastGrid(*(t.detach().float().requires_grad_() for t in leaves(grid)),
                        grid.inside, grid.labels, grid.pixel_weight.float())  # fmt: skip
    refs = [t.detach().clone().requires_grad_() for t in leaves(grid)]
    dense = released_multi_resolution_cl(
        refs[0], refs[1], grid.labels[:, None], refs[2][:, None],
        (grid.labels * grid.inside)[:, None], grid.pixel_weight[:, None],
    )  # fmt: skip
    released = ContrastGrid(*leaves(grid), (grid.labels * grid.inside) != 0, grid.labels,
                            grid.pixel_weight)  # fmt: skip
    streamed = multires_contrastive_loss(
        released, void_as_class=True, faithful_ordering=True, chunk_size=64
    )
    assert abs(streamed.item() - dense.item()) < 1e-5
    dense.backward()
    streamed.backward()
    for ours, ref in zip(leaves(grid), refs, strict=True):
        assert (ours.grad - ref.grad).abs().max().item() < 1e-5


def test_no_n_by_n_matrix_is_kept_for_backward():
    grid = random_grid(seed=5, batch=2, channels=8, size=24, classes=4)
    n = 2 * 24 * 24
    saved: dict[tuple[int, int], int] = {}

    def pack(tensor):
        saved[(tensor.untyped_storage().data_ptr(), tensor.numel())] = tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = multires_contrastive_loss(grid, chunk_size=32)
    # only O(N x C) inputs are kept: each chunk's two 32 x N blocks are recomputed in backward
    assert max(saved.values()) <= 8 * n and sum(saved.values()) < n * n / 10, sorted(saved.values())
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves(grid))


# --------------------------------------------------------------------------- grid and model


def test_contrast_grid_bookkeeping_hand_worked():
    # 16 px crop: context maps 2x2, detail crop (0, 8, 8, 16) -> stride-4 cells [0:2, 2:4].
    views = HRDAViews(
        fused_logits=torch.zeros(1, 3, 4, 4), context_logits=torch.zeros(1, 3, 2, 2),
        detail_logits=torch.zeros(1, 3, 2, 2),
        context_fused=torch.tensor([[[[0.0, 3.0], [6.0, 9.0]]]]),
        detail_fused=torch.full((1, 1, 2, 2), 5.0), attention=torch.zeros(1, 3, 2, 2),
        context_features=[], boxes=[(0, 8, 8, 16)], feature_weight=torch.ones(1, 1, 2, 2),
    )  # fmt: skip
    labels = torch.arange(256).view(1, 16, 16)
    grid = contrast_grid(views, labels, None, None)
    # align_corners=True x2: [0, 3] -> [0, 1, 2, 3]; rows add [0, 6] -> [0, 2, 4, 6]
    expected = torch.arange(4.0)[None, :] + torch.tensor([0.0, 2.0, 4.0, 6.0])[:, None]
    torch.testing.assert_close(grid.context[0, 0], expected)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[0:2, 2:4] = True
    assert torch.equal(grid.detail[0, 0], torch.where(inside, 5.0, 0.0))
    assert torch.equal(grid.inside[0], inside)
    assert grid.labels[0].tolist()[1] == [64, 68, 72, 76]  # nearest: every 4th pixel
    torch.testing.assert_close(grid.weight, torch.ones(1, 4, 4))
    assert grid.pixel_weight is None
    coarse = contrast_grid(views, labels, torch.ones(1, 16, 16), (2, 2))
    assert coarse.context[0, 0].tolist() == [[0.0, 3.0], [6.0, 9.0]]  # corners kept
    assert coarse.inside[0].tolist() == [[False, True], [False, False]]
    assert coarse.pixel_weight.shape == (1, 2, 2)
    views.feature_weight = None
    with pytest.raises(ValueError, match="needs the learned weight: build HRDATrainForward"):
        contrast_grid(views, labels, None, None)


def test_feat_weighter_learns_from_the_contrastive_loss_only():
    torch.manual_seed(0)
    segmenter = create_segmenter(TINY).train()
    weighter = feature_weighter(segmenter.backbone.channels, segmenter.backbone.strides, 16)
    model = HRDATrainForward(segmenter, weighter)
    labels = torch.randint(0, 5, (2, 64, 64))
    views = model(torch.randn(2, 3, 64, 64))
    assert views.feature_weight.shape == (2, 1, 8, 8)
    fused, detail = hrda_seg_loss(views, labels)
    (fused + detail).backward(retain_graph=True)
    assert weighter.conv_seg.weight.grad is None
    grid = contrast_grid(views, labels, torch.rand(2, 64, 64), (9, 9))
    multires_contrastive_loss(grid, chunk_size=64).backward()
    assert weighter.conv_seg.weight.grad.abs().sum() > 0
    assert segmenter.decode_head.head.embed_layers[0].proj.weight.grad.abs().sum() > 0
