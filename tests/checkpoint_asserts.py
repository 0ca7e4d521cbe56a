"""Bit-exact comparisons of two checkpoints, for the resume tests of every method."""

from __future__ import annotations

import torch


def assert_states_equal(a: dict, b: dict, where: str = "") -> None:
    """Every tensor of state dict ``a`` equals ``b``'s of the same name, bit for bit."""
    for name, value in a.items():
        assert torch.equal(value, b[name]), (where, name)


def assert_same_weights(a: dict, b: dict) -> None:
    """Student and EMA teacher of checkpoints ``a`` and ``b`` are identical."""
    for key in ("state_dict", "teacher_state_dict"):
        assert_states_equal(a[key], b[key], key)
