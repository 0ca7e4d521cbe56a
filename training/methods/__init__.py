"""UDA methods: each computes the named loss terms of one step (DESIGN.md 'UDA method').

The loop owns the optimizer, AMP, teacher update, logging, evaluation and checkpoints; a method
only turns (networks, source batch, target batch, step) into losses.
"""

from __future__ import annotations

from collections.abc import Callable

from cluda_deploy.config import Config
from training.methods.base import Networks, SegmenterForward, StepBatch, StepOutput, UDAMethod
from training.methods.cluda import CLUDA
from training.methods.confeti import Confeti
from training.methods.dacs import DACS
from training.methods.source_only import SourceOnly

METHODS: dict[str, Callable[[Config], UDAMethod]] = {
    "source-only": SourceOnly,
    "dacs": DACS,
    "cluda": CLUDA,
    "confeti": Confeti,
}


def method_names() -> list[str]:
    return sorted(METHODS)


def create_method(name: str, cfg: Config) -> UDAMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return METHODS[name](cfg)


__all__ = [
    "METHODS",
    "Networks",
    "SegmenterForward",
    "StepBatch",
    "StepOutput",
    "UDAMethod",
    "create_method",
    "method_names",
]
