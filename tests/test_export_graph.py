"""The exported module in eager mode: the keep-ratio rule, the graph against the checkpoint's own
test-time protocol, output contract, HRDA selection and the static-shape requirement."""

from __future__ import annotations

import copy
import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch

from cluda_deploy.checkpoint import save_checkpoint
from cluda_deploy.config import EvalConfig, HRDAConfig, ModelConfig, get_preset
from cluda_deploy.data.transforms import rescale_size
from cluda_deploy.inference import segment_logits
from cluda_deploy.labels import cityscapes_label_space
from cluda_deploy.models import Segmenter, create_segmenter
from export.graph import DeployModule, SizeRule, keep_ratio_size, needs_static_shape, select_network
from export.pipeline import min_side, prepare

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
TINY = ModelConfig(backbone="mit_tiny", embed_dim=32, fusion_channels=32, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def tiny_model() -> Segmenter:
    torch.manual_seed(0)
    return create_segmenter(TINY).eval()


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- keep-ratio rule


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((1024, 2048), (1024, 512), (512, 1024)),  # Cityscapes frame: factor 0.5
        ((2048, 1024), (1024, 512), (1024, 512)),  # portrait: the long side caps at 1024
        # GTA5 frame: min(1024/1914, 512/1052) = 0.48669; h = 512.0 + .5 rounds to 512,
        # w = 1914 * 0.48669 = 931.53 -> 932
        ((1052, 1914), (1024, 512), (512, 932)),
        # min(256/203, 128/97) = 1.26108: h = 122.32 -> 122, w = 256 exactly
        ((97, 203), (256, 128), (122, 256)),
        ((128, 256), (512, 1024), (512, 1024)),  # upscaling; scale given as (short, long)
    ],
)
def test_keep_ratio_size_hand_worked(size, scale, expected):
    assert keep_ratio_size(*size, scale) == expected


def test_keep_ratio_size_matches_mmcv_float_rule_except_half_pixel_ties():
    # The exact-integer rule may differ from mmcv's float rule only where side * factor + 1/2 is
    # exactly an integer that float rounding puts just below (1261 * 720 / 1248 = 727.5).
    assert keep_ratio_size(1261, 1248, (1280, 720)) == (728, 720)
    assert rescale_size(1261, 1248, (1280, 720)) == (727, 720)
    differ = 0
    for scale in ((1024, 512), (256, 128), (1280, 720)):
        for height in range(16, 1400, 11):
            for width in range(16, 1400, 13):
                exact = keep_ratio_size(height, width, scale)
                if exact == rescale_size(height, width, scale):
                    continue
                differ += 1
                factor = min(Fraction(max(scale), max(height, width)), Fraction(min(scale), min(height, width)))
                ties = [(side * factor + Fraction(1, 2)).denominator == 1 for side in (height, width)]
                assert any(ties), (height, width, scale)
    assert differ <= 3


def test_size_rule_names_and_native():
    assert SizeRule(None)(77, 131) == (77, 131) and SizeRule(None).name == "native"
    assert SizeRule((1024, 512)).name == "keep-ratio"
    assert "1024" in SizeRule((1024, 512)).describe()


# --------------------------------------------------------------------------- graph == protocol


@pytest.mark.parametrize(
    ("scale", "size"), [(None, (96, 160)), ((256, 128), (97, 203)), ((256, 128), (200, 150))]
)
def test_deploy_module_matches_segment_logits(tiny_model, scale, size):
    eval_cfg = EvalConfig(mode="whole", scale=scale)
    module = DeployModule(tiny_model, MEAN, STD, SizeRule(scale), eval_cfg, ("labels", "logits", "confidence"))
    image = _image(*size)
    with torch.no_grad():
        labels, logits, confidence = module(torch.from_numpy(image)[None])
    reference = segment_logits(tiny_model, image, eval_cfg, MEAN, STD)
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    assert labels.dtype == torch.uint8 and labels.shape == (1, *size)
    assert torch.equal(labels.long(), reference.argmax(1))
    torch.testing.assert_close(confidence, reference.softmax(1).amax(1))
    assert confidence.dtype == torch.float32 and confidence.shape == (1, *size)


def test_deploy_module_slide_mode_matches_predict(tiny_model):
    eval_cfg = EvalConfig(mode="slide", scale=None, crop_size=(64, 64), stride=(48, 48))
    module = DeployModule(tiny_model, MEAN, STD, SizeRule(None), eval_cfg, ("labels", "logits"))
    image = _image(80, 150, seed=1)
    with torch.no_grad():
        _, logits = module(torch.from_numpy(image)[None])
    torch.testing.assert_close(logits, segment_logits(tiny_model, image, eval_cfg, MEAN, STD), rtol=0, atol=1e-5)


def test_deploy_module_batches_and_output_order(tiny_model):
    module = DeployModule(tiny_model, MEAN, STD, SizeRule(None), EvalConfig(scale=None), ("labels", "confidence"))
    batch = torch.from_numpy(np.stack([_image(64, 96, 2), _image(64, 96, 3)]))
    with torch.no_grad():
        labels, confidence = module(batch)
        single = module(batch[1:])[0]
    assert labels.shape == (2, 64, 96) and confidence.shape == (2, 64, 96)
    assert torch.equal(labels[1:], single)
    assert float(confidence.min()) >= 1 / 19 - 1e-6 and float(confidence.max()) <= 1


def test_deploy_module_rejects_bad_outputs(tiny_model):
    with pytest.raises(ValueError, match="outputs must be 'labels'"):
        DeployModule(tiny_model, MEAN, STD, SizeRule(None), EvalConfig(), ("logits",))


def test_fp16_module_is_close_to_fp32(tiny_model):
    eval_cfg = EvalConfig(scale=None)
    half = DeployModule(
        copy.deepcopy(tiny_model), MEAN, STD, SizeRule(None), eval_cfg, ("labels", "logits"), precision="fp16"
    )
    full = DeployModule(tiny_model, MEAN, STD, SizeRule(None), eval_cfg, ("labels", "logits"))
    x = torch.from_numpy(_image(64, 96, 4))[None]
    with torch.no_grad():
        (_, half_logits), (_, full_logits) = half(x), full(x)
    assert half_logits.dtype == torch.float32
    torch.testing.assert_close(half_logits, full_logits, rtol=0, atol=2e-2)
    assert next(tiny_model.parameters()).dtype == torch.float32  # the original is untouched


# --------------------------------------------------------------------------- HRDA and static needs

TINY_HRDA = dataclasses.replace(
    TINY, hrda=HRDAConfig(enabled=True, detail_crop_size=(32, 32), detail_stride=(16, 16), attention_embed_dim=16)
)


def test_select_network_plain_and_hrda(tiny_model):
    assert select_network(tiny_model, None) == (tiny_model, None)
    with pytest.raises(ValueError, match="applies to HRDA checkpoints"):
        select_network(tiny_model, "student")
    torch.manual_seed(0)
    hrda = create_segmenter(TINY_HRDA).eval()
    assert select_network(hrda, None) == (hrda, "full")
    student, mode = select_network(hrda, "student")
    assert mode == "student" and type(student) is Segmenter
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the student is HRDA's backbone + single-scale head, once
        torch.testing.assert_close(student(x), hrda.decode_head.head(hrda.backbone(x)))


def test_needs_static_shape_reasons():
    assert needs_static_shape("whole", None) is None
    assert needs_static_shape("whole", "student") is None
    assert "window grid" in needs_static_shape("slide", None)
    assert "HRDA full" in needs_static_shape("whole", "full")


def make_checkpoint(path, model_cfg: ModelConfig | None = None, eval_cfg: EvalConfig | None = None, **provenance):
    """A random-weight checkpoint of the demo preset (or ``model_cfg``), native-size whole
    inference unless ``eval_cfg`` says otherwise. Shared by the export tests."""
    cfg = get_preset("demo")
    if model_cfg is not None:
        cfg.model = model_cfg
    cfg.eval = eval_cfg or EvalConfig(mode="whole", scale=None)
    torch.manual_seed(0)
    return save_checkpoint(path, config=cfg, label_space=cityscapes_label_space(),
                           state_dict=create_segmenter(cfg.model).state_dict(), provenance=provenance)  # fmt: skip


def test_prepare_requires_static_for_slide_and_hrda_full(tmp_path):
    slide = make_checkpoint(tmp_path / "slide.pt", TINY, EvalConfig(mode="slide", scale=None, crop_size=(64, 64)))
    with pytest.raises(ValueError, match="--static HxW"):
        prepare(slide)
    assert prepare(slide, mode="whole").eval_cfg.mode == "whole"
    assert prepare(slide, static=(1, 96, 128)).shape.as_list() == [1, 96, 128, 3]
    hrda = make_checkpoint(tmp_path / "hrda.pt", TINY_HRDA)
    with pytest.raises(ValueError, match="HRDA full"):
        prepare(hrda)
    assert prepare(hrda, hrda="student").hrda == "student"


def test_prepare_min_side_and_static_below_it(tmp_path, tiny_model):
    ckpt = make_checkpoint(tmp_path / "c.pt", TINY)
    prepared = prepare(ckpt)
    # MiT needs 29 px at least; twice that, rounded up to a multiple of 32.
    assert min_side(tiny_model, SizeRule(None)) == 64 == prepared.shape.min_side
    assert prepared.shape.as_list() == ["batch", "height", "width", 3]
    assert min_side(tiny_model, SizeRule((1024, 512))) == 32
    with pytest.raises(ValueError, match="below this model's minimum side 64"):
        prepare(ckpt, static=(None, 32, 64))
