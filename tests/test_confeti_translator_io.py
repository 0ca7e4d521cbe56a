"""Reading CONFETI's translator from files (cluda checkpoints and CUT's latest_net_G.pth) and
applying it to whole images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.confeti.generator_io import read_style_state, split_state
from training.confeti.style import StyleTransfer
from training.confeti.stylize import stylize_array


def tiny_style() -> StyleTransfer:
    torch.manual_seed(0)
    return StyleTransfer(
        ngf=4, n_blocks=1, ndf=4, d_layers=3, mlp_channels=8, nce_layers=(0, 4),
        init_gain=0.02, with_critics=False,
    )  # fmt: skip


def test_a_cut_generator_file_loads_with_its_own_keys(tmp_path):
    """CUT's netG keys are ``model.<i>...`` (DataParallel adds ``module.``): ours are the same."""
    style = tiny_style()
    path = tmp_path / "latest_net_G.pth"
    torch.save({f"module.{k}": v for k, v in style.generator.state_dict().items()}, path)
    state, checkpoint = read_style_state(path)
    assert checkpoint is None and "generator.model.1.weight" in state
    fresh = tiny_style()
    torch.nn.init.zeros_(fresh.generator.model[1].weight)
    fresh.generator.load_state_dict(split_state(state, "generator."))
    assert torch.equal(fresh.generator.model[1].weight, style.generator.model[1].weight)


def test_foreign_and_missing_files_fail_with_a_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--method confeti"):
        read_style_state(tmp_path / "nope.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a cluda checkpoint nor a CUT generator"):
        read_style_state(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch file"):
        read_style_state(tmp_path / "text.pt")


@pytest.mark.parametrize("size", [(16, 24), (13, 10), (8, 9)])
def test_stylize_array_keeps_size_and_dtype(size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = stylize_array(tiny_style().generator.eval(), image)
    assert out.shape == image.shape and out.dtype == np.uint8


def test_stylize_array_rejects_tiny_images():
    with pytest.raises(ValueError, match="too small for the translator"):
        stylize_array(tiny_style().generator.eval(), np.zeros((7, 30, 3), dtype=np.uint8))
