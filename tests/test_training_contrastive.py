"""CLUDA's pixel contrastive loss: hand-worked values, equality with the dense reference formula
(loss and gradients, within 1e-5), and no N x N matrix kept for backward (research/cluda.md 4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.contrastive import (
    cluda_contrastive_loss,
    flatten_pixels,
    pixel_contrastive_loss,
    resample_to_grid,
)


def released_contrastive_loss(feats, labels, pseudo_weight=None, faithful_ordering=True):
    """user0407/CLUDA ``contrastive_loss`` (tau = 1, no fdist classes), dense N x N, ported
    line by line to run on the CPU. ``faithful_ordering=False`` flattens features batch-major."""
    feats = feats.permute(0, 2, 3, 1)
    feats = feats.reshape(feats.shape[0], -1, feats.shape[3])
    feats = F.normalize(feats, dim=-1)
    labels = labels.reshape(-1, 1)
    if pseudo_weight is not None:
        pw = pseudo_weight.reshape(-1, 1)
        sim_weight = pw @ pw.T
    mask = torch.eq(labels, labels.T).float()
    if faithful_ordering:
        contrast_feature = torch.cat(torch.unbind(feats, dim=1), dim=0)
    else:
        contrast_feature = feats.reshape(-1, feats.shape[-1])
    anchor_dot_contrast = contrast_feature @ contrast_feature.T
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    neg_mask = 1 - mask
    logits_mask = torch.eye(mask.shape[0]).logical_not()
    mask = mask * logits_mask
    neg_logits = (torch.exp(logits) * neg_mask).sum(1, keepdim=True)
    log_prob = logits - torch.log(torch.exp(logits) + neg_logits)
    den = mask.sum(1)
    den[den == 0] = 1
    if pseudo_weight is not None:
        log_prob = log_prob * sim_weight
    mean_log_prob_pos = (mask * log_prob).sum(1) / den
    return -mean_log_prob_pos.mean()


def loop_loss(rows, labels, weights, void=255):
    """The module docstring's formula with explicit sums, void pixels taking no part."""
    u = F.normalize(rows, dim=1)
    n = len(labels)
    valid = [int(y) != void for y in labels]
    total = rows.new_zeros(())
    for i in range(n):
        if not valid[i]:
            continue
        positives = [j for j in range(n) if j != i and valid[j] and labels[j] == labels[i]]
        negatives = [k for k in range(n) if valid[k] and labels[k] != labels[i]]
        neg = sum((torch.exp(u[i] @ u[k]) for k in negatives), rows.new_zeros(()))
        acc = rows.new_zeros(())
        for j in positives:
            s = u[i] @ u[j]
            acc = acc + weights[j] * (s - torch.log(torch.exp(s) + neg))
        total = total - weights[i] * acc / max(len(positives), 1)
    return total / sum(valid)


def random_case(seed=0, batch=2, channels=6, size=5, classes=3, void_share=0.2):
    gen = torch.Generator().manual_seed(seed)
    # non-negative like the post-ReLU fused map, but never an all-zero vector (whose normalised
    # gradient is 1/eps in both implementations)
    feats = torch.rand(batch, channels, size, size, generator=gen).double()
    labels = torch.randint(0, classes, (batch, size, size), generator=gen)
    labels[torch.rand(batch, size, size, generator=gen) < void_share] = 255
    weights = torch.rand(batch, size, size, generator=gen).double()
    return feats.requires_grad_(), labels, weights


def test_hand_worked_three_pixels():
    # u1 = u2 = (1, 0) class 0, u3 = (0, 1) class 1: anchors 1, 2 have one positive and one
    # negative, l = 1 - log(e + 1); anchor 3 has no positive. L = 2/3 (log(e + 1) - 1).
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    loss = pixel_contrastive_loss(rows, torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(2 / 3 * (math.log(math.e + 1) - 1), abs=1e-6)
    # weights rho multiply anchor and positive: rho = (0.5, 1, 1) halves both anchors' terms
    weighted = pixel_contrastive_loss(rows, torch.tensor([0, 0, 1]), torch.tensor([0.5, 1.0, 1.0]))
    assert weighted.item() == pytest.approx(1 / 3 * (math.log(math.e + 1) - 1), abs=1e-6)
    # a void pixel takes no part by default (mean over the 2 remaining anchors, no negative)
    void = pixel_contrastive_loss(rows, torch.tensor([0, 0, 255]))
    assert void.item() == pytest.approx(0.0, abs=1e-7)  # l = s - log(exp(s)) = 0
    as_class = pixel_contrastive_loss(rows, torch.tensor([0, 0, 255]), void_as_class=True)
    assert as_class.item() == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("faithful", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_streamed_equals_released_dense_formula(faithful, chunk):
    feats, labels, weights = random_case(seed=chunk)
    ref_feats = feats.detach().clone().requires_grad_()
    dense = released_contrastive_loss(ref_feats, labels, weights, faithful_ordering=faithful)
    rows, flat_labels, flat_weights = flatten_pixels(
        feats, labels, weights, faithful_ordering=faithful
    )
    streamed = pixel_contrastive_loss(rows, flat_labels, flat_weights, void_as_class=True,
                                      chunk_size=chunk)  # fmt: skip
    assert streamed.item() == pytest.approx(dense.item(), abs=1e-5)
    dense.backward()
    streamed.backward()
    torch.testing.assert_close(feats.grad, ref_feats.grad, rtol=0, atol=1e-5)


def test_streamed_equals_explicit_sums_without_void():
    feats, labels, weights = random_case(seed=11, batch=2, size=4)
    rows, flat_labels, flat_weights = flatten_pixels(feats, labels, weights)
    expected = loop_loss(rows, flat_labels, flat_weights)
    loss = pixel_contrastive_loss(rows, flat_labels, flat_weights, chunk_size=5)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    grad = torch.autograd.grad(loss, feats)[0]
    expected_grad = torch.autograd.grad(expected, feats)[0]
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-5)


def test_float32_random_inputs_match_dense_within_1e5():
    feats, labels, weights = random_case(seed=3, batch=2, channels=32, size=12, classes=6)
    feats = feats.detach().float().requires_grad_()
    weights = weights.float()
    ref = feats.detach().clone().requires_grad_()
    dense = released_contrastive_loss(ref, labels, weights, faithful_ordering=False)
    rows, flat_labels, flat_weights = flatten_pixels(feats, labels, weights)
    streamed = pixel_contrastive_loss(rows, flat_labels, flat_weights, void_as_class=True,
                                      chunk_size=64)  # fmt: skip
    assert abs(streamed.item() - dense.item()) < 1e-5
    dense.backward()
    streamed.backward()
    assert (feats.grad - ref.grad).abs().max().item() < 1e-5


def test_no_n_by_n_matrix_is_kept_for_backward():
    feats, labels, weights = random_case(seed=5, batch=2, channels=8, size=16, classes=4)
    n = 2 * 16 * 16
    saved: dict[tuple[int, int], int] = {}  # distinct storages kept for backward

    def pack(tensor):
        saved[(tensor.untyped_storage().data_ptr(), tensor.numel())] = tensor.numel()
        return tensor

    rows, flat_labels, flat_weights = flatten_pixels(feats, labels, weights)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pixel_contrastive_loss(rows, flat_labels, flat_weights, chunk_size=32)
    assert sum(saved.values()) < n * n / 10, sorted(saved.values())
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        released_contrastive_loss(feats, labels, weights)
    assert max(saved.values()) == n * n  # the dense form keeps several N x N matrices
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_resample_to_grid():
    feats = torch.arange(16.0).view(1, 1, 4, 4)
    labels = torch.arange(64).view(1, 8, 8)
    weights = torch.ones(1, 8, 8)
    weights[:, :, 4:] = 0.0
    f, y, w = resample_to_grid(feats, labels, weights, (2, 2))
    assert f.flatten().tolist() == [0.0, 3.0, 12.0, 15.0]  # align_corners=True keeps the corners
    assert y.flatten().tolist() == [0, 4, 32, 36]  # nearest: top-left of each 4x4 block
    assert w.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    same_f, _, none_w = resample_to_grid(feats, labels, None, None)
    assert same_f is feats and none_w is None


def test_cluda_loss_runs_on_a_fused_map_and_backpropagates():
    torch.manual_seed(0)
    fused = torch.relu(torch.randn(2, 16, 8, 8)).requires_grad_()
    labels = torch.randint(0, 4, (2, 32, 32))
    weight = torch.rand(2, 32, 32)
    loss = cluda_contrastive_loss(fused, labels, weight, grid=(5, 5), chunk_size=16)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert fused.grad.abs().sum() > 0
    all_void = cluda_contrastive_loss(fused, torch.full((2, 32, 32), 255), None, grid=None)
    assert all_void.item() == 0.0
