"""Reading a CONFETI translator's generator from a file: a ``cluda adapt --method confeti``
checkpoint, or a CUT/CONFETI ``latest_net_G.pth`` (the authors' released translator).

:class:`training.confeti.style_nets.ResnetGenerator` keeps CUT's module layout (``model.<i>``,
``model.<i>.conv_block.<j>``, the blur buffers ``filt``), so a CUT generator state dict loads as is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cluda_deploy.checkpoint import CHECKPOINT_FORMAT

# The name under which a checkpoint's ``modules`` hold CONFETI's translator (G, D and F).
STYLE_MODULE = "confeti_style"
GENERATOR_PREFIX = "generator."


def _load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(
            f"translator file {path} does not exist; pass a checkpoint written by 'cluda adapt "
            "--method confeti' or a CUT latest_net_G.pth"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise ValueError(f"{path} is not a readable PyTorch file ({type(exc).__name__})") from None


def style_state_from_checkpoint(data: dict[str, Any], path: str | os.PathLike) -> dict[str, Tensor]:
    """The translator's full state (``generator.*``, maybe ``discriminator.*``, ``patch_mlp.*``)
    from a loaded cluda checkpoint; a one-line error if the run had no translator."""
    state = (data.get("modules") or {}).get(STYLE_MODULE)
    if state is None:
        method = data.get("provenance", {}).get("method", "?")
        raise ValueError(
            f"{path} holds no CONFETI translator (written by method {method!r}); pass a checkpoint "
            "of 'cluda adapt --method confeti' or a CUT latest_net_G.pth"
        )
    return state


def read_style_state(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """``(state, checkpoint)`` from ``path``: the translator state with ``generator.*`` keys (and
    D/F keys when a checkpoint has them), and the loaded checkpoint (None for a bare CUT file)."""
    path = Path(path)
    data = _load(path)
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return style_state_from_checkpoint(data, path), data
    if isinstance(data, dict) and data and all(isinstance(v, Tensor) for v in data.values()):
        state = {k.removeprefix("module."): v for k, v in data.items()}
        if "model.1.weight" in state:
            return {GENERATOR_PREFIX + k: v for k, v in state.items()}, None
    raise ValueError(
        f"{path} is neither a cluda checkpoint nor a CUT generator state dict (no 'model.1.weight');"
        " pass a checkpoint of 'cluda adapt --method confeti' or a CUT latest_net_G.pth"
    )


def split_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix`` (e.g. ``'generator.'``), with it removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
