"""Temporarily frozen parameters: a pass whose gradient must flow *through* a network, not into it.

Autograd decides at each operation whether a parameter takes part, so parameters switched to
``requires_grad=False`` for the duration of a forward pass receive no gradient from that pass's
graph, even when ``backward`` runs later (the loop's single backward); other passes are unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen_parameters(*modules: nn.Module | None) -> Iterator[None]:
    """Inside the block every parameter of ``modules`` has ``requires_grad=False``; each one's
    previous flag is restored on exit (also on error). ``None`` entries are skipped."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def frozen_batchnorm(module: nn.Module | None, enabled: bool = True) -> Iterator[None]:
    """Inside the block every BatchNorm of ``module`` is in eval mode (running statistics, no
    update); each one's mode is restored on exit. A no-op when ``enabled`` is False."""
    norms = (
        []
        if module is None or not enabled
        else [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    )
    modes = [m.training for m in norms]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(norms, modes, strict=True):
            m.train(mode)
