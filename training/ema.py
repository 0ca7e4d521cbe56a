"""Mean teacher: an exponential moving average of the student (research/cluda.md section 2.4).

DAFormer/HRDA/CLUDA (``dacs.py``: ``_init_ema_weights``, ``_update_ema``): the teacher starts as
a copy of the student; before step t >= 1 its parameters become
``alpha_t * teacher + (1 - alpha_t) * student`` with ``alpha_t = min(1 - 1/(t+1), alpha)``.
Only parameters are averaged; BatchNorm buffers are the teacher's own. The teacher runs in train
mode (BatchNorm on the target batch's statistics) with every dropout and drop-path switched off.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_alpha(iteration: int, alpha: float) -> float:
    """``min(1 - 1/(t+1), alpha)``: 0 at t=0 (a copy), 0.5 at t=1, ... , ``alpha`` from t = 1/(1-alpha) - 1."""
    return min(1.0 - 1.0 / (iteration + 1), alpha)


def create_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` (parameters without gradients) in teacher mode."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return set_teacher_mode(teacher)


def set_teacher_mode(model: nn.Module) -> nn.Module:
    """Train mode, but every ``Dropout*`` and ``*DropPath`` module in eval mode (the reference's
    teacher forward); BatchNorm keeps using batch statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__.endswith(
            "DropPath"
        ):
            module.eval()
    return model


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``teacher_p <- alpha * teacher_p + (1 - alpha) * student_p`` for every parameter, in place.

    Buffers (BatchNorm running statistics) are left alone, as in the reference.
    """
    teacher_params = [p.detach() for p in teacher.parameters()]
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"teacher has {len(teacher_params)} parameters, student {len(student_params)}; "
            "build the teacher with create_teacher(student)"
        )
    torch._foreach_mul_(teacher_params, alpha)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - alpha)
