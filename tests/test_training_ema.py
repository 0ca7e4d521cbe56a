"""Mean teacher: alpha schedule, parameter-only EMA, teacher mode (research/cluda.md 2.4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cluda_deploy.config import ModelConfig
from cluda_deploy.models import create_segmenter
from training.ema import create_teacher, ema_alpha, ema_update, set_teacher_mode


def test_alpha_schedule_hand_values():
    assert ema_alpha(0, 0.999) == 0.0  # t=0: the teacher is a copy
    assert ema_alpha(1, 0.999) == 0.5
    assert ema_alpha(2, 0.999) == pytest.approx(2 / 3)
    assert ema_alpha(998, 0.999) == pytest.approx(1 - 1 / 999)  # still below the cap
    assert ema_alpha(999, 0.999) == 0.999
    assert ema_alpha(40000, 0.999) == 0.999
    assert ema_alpha(5, 0.99) == pytest.approx(5 / 6)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)
        self.drop = nn.Dropout(0.5)


def test_update_averages_parameters_not_buffers():
    student, teacher = Tiny(), Tiny()
    with torch.no_grad():
        student.lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        teacher.lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.lin.bias.fill_(10.0)
        teacher.lin.bias.fill_(0.0)
        student.bn.running_mean.fill_(7.0)
        teacher.bn.running_mean.fill_(-1.0)
    ema_update(teacher, student, alpha=0.5)
    assert torch.equal(teacher.lin.weight, torch.tensor([[2.0, 3.0]]))  # 0.5*[1,2] + 0.5*[3,4]
    assert torch.equal(teacher.lin.bias, torch.tensor([5.0]))
    assert teacher.bn.running_mean.item() == -1.0  # buffers are the teacher's own
    ema_update(teacher, student, alpha=0.75)  # 0.75*2 + 0.25*3 = 2.25
    assert teacher.lin.weight[0, 0].item() == pytest.approx(2.25)


def test_update_matches_reference_formula_on_a_segmenter():
    torch.manual_seed(0)
    student = create_segmenter(ModelConfig(backbone="mit_tiny", embed_dim=8, fusion_channels=8,
                                           aspp_dilations=(1, 2)))  # fmt: skip
    teacher = create_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    alpha = ema_alpha(3, 0.999)
    ema_update(teacher, student, alpha)
    for old, new, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, alpha * old + (1 - alpha) * s, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_mode_turns_off_dropout_and_drop_path_only():
    student = create_segmenter(ModelConfig(backbone="mit_tiny", embed_dim=8, fusion_channels=8,
                                           aspp_dilations=(1, 2), drop_path_rate=0.5))  # fmt: skip
    teacher = create_teacher(student)
    kinds = {type(m).__name__: m.training for m in teacher.modules()}
    assert kinds["SegformerDropPath"] is False and kinds["Dropout2d"] is False
    assert kinds["BatchNorm2d"] is True  # batch statistics, as the reference teacher
    set_teacher_mode(teacher.eval())
    assert teacher.training
    # Deterministic although drop path and dropout exist: they are off.
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), teacher(x))
