"""Typed config: presets, overrides, strictness, round trip."""

from __future__ import annotations

import pytest

from cluda_deploy.config import (
    Config,
    ConfigError,
    apply_override,
    config_from_dict,
    get_preset,
    preset_names,
    resolve_config,
)


def test_every_preset_builds_and_round_trips():
    for name in preset_names():
        cfg = get_preset(name)
        assert cfg.preset == name
        assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_are_typed():
    cfg = resolve_config(
        "demo",
        ["train.iters=12", "optim.lr=1e-3", "data.crop_size=64x96", "model.pretrained=none",
         "eval.scale=None", "data.source_root=/tmp/x", "optim.betas=(0.8, 0.9)"],
    )  # fmt: skip
    assert cfg.train.iters == 12 and isinstance(cfg.train.iters, int)
    assert cfg.optim.lr == 1e-3
    assert cfg.data.crop_size == (64, 96)
    assert cfg.model.pretrained is None and cfg.eval.scale is None
    assert cfg.data.source_root == "/tmp/x"
    assert cfg.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.itres=5", "train has"),
        ("nope.x=1", "config has"),
        ("train.iters=five", "expected int"),
        ("train.iters=1.5", "expected an integer"),
        ("train", "section.key=value"),
        ("model=3", "is a section"),
    ],
)
def test_bad_overrides_name_the_problem(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(Config(), assignment)


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="known presets: .*demo"):
        get_preset("daformer-mitb7")


def test_unknown_keys_in_stored_config_raise():
    data = Config().to_dict()
    data["train"]["warp_speed"] = 9
    with pytest.raises(ConfigError, match="warp_speed"):
        config_from_dict(data)
