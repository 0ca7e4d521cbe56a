"""Typed configuration: one strict tree of dataclasses, named presets, ``--set key=value`` overrides.

Every number from a paper is a named field here with the paper's default. Unknown keys raise.
The resolved config is stored in every checkpoint and rebuilt with :func:`config_from_dict`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class HRDAConfig:
    """HRDA multi-resolution wrapper (research/cluda.md 3.1, 3.2, 3.4; lhoyer/HRDA configs).

    The context crop is the training crop itself (``data.crop_size``, 1024x1024 in HRDA),
    seen at ``context_scale``; the detail crop is a full-resolution part of it.
    """

    enabled: bool = False
    # scales = [0.5, 1]: the context pass sees the window downscaled by this factor.
    context_scale: float = 0.5
    # Full-resolution detail crop (hr_crop_size), and at inference the HR sliding window over
    # the whole input window with this stride (hr_slide_overlapping: half the crop).
    detail_crop_size: tuple[int, int] = (512, 512)
    detail_stride: tuple[int, int] = (256, 256)
    # Off: the detail pass sees the whole full-resolution window at once (hr_slide_inference).
    detail_slide: bool = True
    # Training detail-crop offsets are multiples of this (crop_coord_divisible = 4 x 2).
    crop_coord_divisible: int = 8
    # Scale attention: a DAFormer head with 1x1 conv fusion (attention_embed_dim, channels),
    # one attention map per class (attention_classwise=True) or one for all.
    attention_embed_dim: int = 256
    attention_classwise: bool = True
    # How attention a mixes the scales on the detail grid: 'hrda' = up(a) * detail +
    # up((1 - a) * context) (HRDAHead); 'cluda' = up(a) * detail + (1 - up(a)) * up(context)
    # (CLUDA's hrda_head.py, used by its released inference).
    fusion: str = "hrda"


@dataclass
class ModelConfig:
    """Segmenter architecture (DESIGN.md 'Segmenter')."""

    backbone: str = "mit_b5"  # mit_b0..mit_b5, mit_tiny (demo), resnet101
    head: str = "daformer"  # daformer | segformer | deeplabv2
    num_classes: int = 19
    # DAFormer: per-level embedding width (256 DAFormer/HRDA, 512 CLUDA) and fused map width.
    embed_dim: int = 256
    fusion_channels: int = 256
    aspp_dilations: tuple[int, ...] = (1, 6, 12, 18)
    dropout: float = 0.1
    # MiT: stochastic depth and the reference LayerNorm epsilon (mmseg MiT uses 1e-6).
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    # None = random init; a Hugging Face id ('nvidia/mit-b5') or local directory for MiT;
    # 'imagenet' for torchvision's ResNet-101 weights.
    pretrained: str | None = None
    # HRDA multi-resolution fusion around the segmenter (off: a plain single-scale segmenter).
    hrda: HRDAConfig = field(default_factory=HRDAConfig)


@dataclass
class DataConfig:
    """Datasets and the DAFormer data pipeline (research/cluda.md section 2.1)."""

    source: str = "gta"  # gta | synthia | cityscapes | demo-source
    target: str = "cityscapes"  # cityscapes | folder | demo-target
    root: str = "data"  # <root>/<dataset dir>; or the explicit roots below
    source_root: str | None = None
    target_root: str | None = None
    source_scale: tuple[int, int] = (1280, 720)  # (long, short) keep-ratio resize, mmcv style
    target_scale: tuple[int, int] = (1024, 512)
    crop_size: tuple[int, int] = (512, 512)  # (h, w)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    batch_size: int = 2  # per domain
    workers: int = 4
    val_split: str = "val"
    val_max_images: int | None = None


@dataclass
class OptimConfig:
    """AdamW with head x10 and poly decay after a linear warm-up (research/cluda.md 2.9)."""

    lr: float = 6e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0


@dataclass
class UDAConfig:
    """DAFormer self-training and the CLUDA contrastive loss (research/cluda.md sections 2 and 4).

    Defaults are the reference values for DAFormer 512x512 crops (GTA5 -> Cityscapes).
    """

    # Mean teacher: alpha_t = min(1 - 1/(t+1), ema_alpha) (2.4).
    ema_alpha: float = 0.999
    # Pseudo-labels: weight = share of target pixels with confidence >= threshold (2.5);
    # rows zeroed at the top/bottom of each target crop (DAFormer "cpl v1": ego car, rectification).
    pseudo_threshold: float = 0.968
    pseudo_ignore_top: int = 15
    pseudo_ignore_bottom: int = 120
    # Strong augmentation of the mixed images (2.6): applied when U(0,1) > 1 - prob
    # (the reference's color_jitter_p = 0.2 is 1 - color_jitter_prob).
    color_jitter_prob: float = 0.8
    color_jitter_strength: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.15, 1.15)
    # Rare-class sampling of source images (2.2).
    rcs: bool = True
    rcs_temperature: float = 0.01
    rcs_min_pixels: int = 3000
    rcs_min_crop_ratio: float = 0.5
    # ImageNet feature distance on thing classes (2.7); 0 turns it off.
    fd_lambda: float = 0.005
    fd_classes: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
    fd_min_ratio: float = 0.75
    # CLUDA pixel contrast on the fused decoder map (4.1-4.3): weight, temperature (the release
    # uses 1), the grid features and labels are resampled to (fm_size; None = the map's own),
    # which passes use it, and the row-chunk size of the streamed computation.
    cl_weight: float = 1.0
    cl_temperature: float = 1.0
    cl_grid: tuple[int, int] | None = (65, 65)
    cl_on_source: bool = True
    cl_on_mixed: bool = True
    cl_chunk_size: int = 1024
    # Released-code behaviours the brief lists as bugs (4.5), off by default: void (255) pixels
    # as a class of their own, and features flattened pixel-major against batch-major labels.
    cl_void_as_class: bool = False
    cl_faithful_ordering: bool = False
    # HRDA training (model.hrda.enabled; research/cluda.md 3.3, 4.4): loss (1 - w) CE(fused) +
    # w CE(detail) with w = hr_loss_weight 0.1; CLUDA's entropy-guided detail crop of the mixed
    # images from iteration > 12000 on (the release's local_iter > 12000; None = random crops
    # throughout, as HRDA's own release).
    hrda_detail_loss_weight: float = 0.1
    hrda_entropy_crop_start: int | None = 12000
    # CLUDA's learned-weighted multi-resolution contrast (4.1-4.3), used with HRDA: the release's
    # final factor 0.5 (times cl_weight), and the embedding width of its one-channel weighting
    # head feat_weighter (E = 256, the scale-attention layout).
    cl_multires_scale: float = 0.5
    cl_weighter_embed_dim: int = 256
    # MIC masked image consistency (section 5): off unless --mic; 70 % of 64x64 patches masked
    # (MIC's block size for 1024 crops; its DAFormer 512-crop configs use 32), loss weight 1.
    mic: bool = False
    mic_patch: int = 64
    mic_ratio: float = 0.7
    mic_weight: float = 1.0


@dataclass
class StyleConfig:
    """CONFETI's CUT translator (research/confeti.md sections 3 and 8; CUT's defaults)."""

    # resnet_9blocks generator (ngf 64), basic 70x70 PatchGAN (ndf 64, 3 layers), mlp_sample F.
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    d_layers: int = 3
    mlp_channels: int = 256  # netF_nc
    # Generator layers PatchNCE reads (CUT nce_layers 0,4,8,12,16), patches per layer (negatives
    # from the same image only), temperature nce_T.
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    num_patches: int = 256
    nce_temperature: float = 0.07
    nce_identity: bool = True  # CUT_mode=CUT: identity NCE on G(target), averaged with the NCE
    lambda_gan: float = 1.0  # LSGAN
    lambda_nce: float = 1.0
    init_gain: float = 0.02  # xavier
    # CUT's Adam for G, D and F; constant (CONFETI never steps CUT's schedulers).
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)


@dataclass
class ConfetiConfig:
    """CONFETI (research/confeti.md sections 4-7, 11, 12): cxa9264/CONFETI's values."""

    # Schedule: stages=2 runs stage 1 (segmenter + translator jointly, stage1_iters on
    # stage1_crop_size crops) then stage 2 (a fresh segmenter, stage 1's generator frozen,
    # train.iters on data.crop_size); stages=1 is the authors' one-stage (CONFETII) schedule.
    # stage: 0 = the whole schedule ('cluda adapt'), 1 or 2 = one stage alone (set by the schedule).
    stages: int = 2
    stage: int = 0
    stage1_iters: int = 80000
    stage1_crop_size: tuple[int, int] = (512, 512)
    # Translator to start from (stage 1) or to freeze (stage 2): a confeti checkpoint or a CUT
    # latest_net_G.pth; None = random init in stage 1. The two-stage schedule sets it for stage 2.
    generator: str | None = None
    # Prototypes: K x proto_dim, EMA-projected features of the mixed images, CAM-weighted top-k,
    # momentum update; source pixels with unit weights until proto_warmup_iters (section 5).
    proto_dim: int = 512
    proto_momentum: float = 0.999
    proto_top_k: int = 32
    proto_warmup_iters: int = 3000
    # CAM head: image-level BCE on the stylised source (always), mixed images after cam_mix_start.
    cam_weight: float = 1.0
    cam_mix_start: int = 2000
    # Pixel-to-prototype InfoNCE and the SePiCo regulariser (weight reg_weight / (K ln K)),
    # after contrast_start (section 6). reg_mode: 'reference' (the released sign) | 'uniform'.
    contrast_weight: float = 0.5
    contrast_temperature: float = 0.1
    contrast_samples: int = 4096
    contrast_start: int = 3000
    reg_weight: float = 2.0
    reg_mode: str = "reference"
    target_contrast: bool = True  # stage 1: also on the target crops, x the pseudo-label weight
    # Prototypical semantic consistency of the generator (stage 1), weight 0.1; frozen_bn=True
    # runs those passes on BN running statistics (a deliberate deviation, section 17.4).
    consistency_weight: float = 0.1
    consistency_frozen_bn: bool = False
    style: StyleConfig = field(default_factory=StyleConfig)


@dataclass
class TrainConfig:
    method: str = "cluda"  # source-only | dacs | cluda | confeti
    iters: int = 40000
    seed: int = 0
    eval_interval: int = 4000
    checkpoint_interval: int = 4000
    log_interval: int = 50
    image_log_interval: int = 1000
    amp: str = "bf16"  # bf16 | fp16 | off (only used on CUDA)
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class EvalConfig:
    """Test-time inference (research/cluda.md 2.10)."""

    mode: str = "whole"  # whole | slide
    scale: tuple[int, int] | None = (1024, 512)  # keep-ratio resize before inference; None = native
    crop_size: tuple[int, int] = (1024, 1024)  # slide window (h, w)
    stride: tuple[int, int] = (512, 512)
    batch_size: int = 1


@dataclass
class Config:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    uda: UDAConfig = field(default_factory=UDAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    confeti: ConfetiConfig = field(default_factory=ConfetiConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class ConfigError(ValueError):
    """A config key or value that does not exist or does not parse."""


# --------------------------------------------------------------------------- presets

PRESETS: dict[str, Callable[[], Config]] = {}


def register_preset(name: str):
    def wrap(fn: Callable[[], Config]) -> Callable[[], Config]:
        PRESETS[name] = fn
        return fn

    return wrap


@register_preset("daformer-mitb5")
def _daformer_mitb5() -> Config:
    """DAFormer on MiT-B5, GTA5 -> Cityscapes at 512x512 crops."""
    return Config(preset="daformer-mitb5")


@register_preset("daformer-mitb5-synthia")
def _daformer_mitb5_synthia() -> Config:
    cfg = Config(preset="daformer-mitb5-synthia")
    cfg.data.source = "synthia"
    cfg.data.source_scale = (1280, 760)
    return cfg


@register_preset("cluda-daformer-mitb5")
def _cluda_daformer_mitb5() -> Config:
    """CLUDA on DAFormer / MiT-B5 (decoder embed 512), GTA5 -> Cityscapes at 512x512 crops."""
    cfg = Config(preset="cluda-daformer-mitb5")
    cfg.model.embed_dim = 512  # CLUDA's daformer_conv1_mitb5.py (DAFormer/HRDA: 256)
    return cfg


@register_preset("cluda-daformer-mitb5-synthia")
def _cluda_daformer_mitb5_synthia() -> Config:
    """CLUDA on DAFormer / MiT-B5 (decoder embed 512), Synthia -> Cityscapes."""
    cfg = _daformer_mitb5_synthia()
    cfg.preset = "cluda-daformer-mitb5-synthia"
    cfg.model.embed_dim = 512
    return cfg


def _hrda(cfg: Config) -> Config:
    """HRDA on top of ``cfg``: 1024x1024 training crops of the full-resolution frames
    (GTA5 at 2560x1440, Cityscapes at 2048x1024; research/cluda.md 2.1), and HRDA's test
    protocol (2.10): full resolution, 1024x1024 windows every 512 px, each segmented by
    context + detail fusion (3.4). With a UDA method the training is multi-resolution
    (training/hrda.py)."""
    cfg.model.hrda.enabled = True
    cfg.data.crop_size = (1024, 1024)
    cfg.data.source_scale = (2560, 1440)
    cfg.data.target_scale = (2048, 1024)
    # RCS crops must show 2.0 x 3000 px of the class (4x the pixels of a 512 crop, 3.5), and
    # HRDA's pseudo-label margins ("cpl v2": 30 px top, 240 px bottom of the 1024-px-high frame;
    # its 30 px left/right margins of the full frame are not modelled: crops are margins-agnostic).
    cfg.uda.rcs_min_crop_ratio = 2.0
    cfg.uda.pseudo_ignore_top = 30
    cfg.uda.pseudo_ignore_bottom = 240
    cfg.eval = EvalConfig(mode="slide", scale=(2048, 1024), crop_size=(1024, 1024), stride=(512, 512))
    return cfg


@register_preset("hrda-mitb5")
def _hrda_mitb5() -> Config:
    """HRDA (DAFormer head + scale attention) on MiT-B5: model, crops and test protocol."""
    cfg = _hrda(Config(preset="hrda-mitb5"))
    cfg.uda.hrda_entropy_crop_start = None  # CLUDA's addition; HRDA's release crops at random
    return cfg


@register_preset("cluda-hrda-mitb5")
def _cluda_hrda_mitb5() -> Config:
    """CLUDA on HRDA / MiT-B5 (decoder embed 512): model, crops and test protocol."""
    cfg = _hrda(Config(preset="cluda-hrda-mitb5"))
    cfg.model.embed_dim = 512  # CLUDA's daformer_conv1_mitb5.py; the attention head keeps 256
    cfg.model.hrda.fusion = "cluda"
    return cfg


@register_preset("cluda-hrda-mitb5-synthia")
def _cluda_hrda_mitb5_synthia() -> Config:
    """CLUDA on HRDA / MiT-B5, Synthia (at 2560x1520, research/cluda.md 2.1) -> Cityscapes."""
    cfg = _cluda_hrda_mitb5()
    cfg.preset = "cluda-hrda-mitb5-synthia"
    cfg.data.source = "synthia"
    cfg.data.source_scale = (2560, 1520)
    return cfg


@register_preset("dlv2-r101")
def _dlv2_r101() -> Config:
    """DeepLabV2 / ResNet-101 (ImageNet weights when available)."""
    cfg = Config(preset="dlv2-r101")
    cfg.model = ModelConfig(backbone="resnet101", head="deeplabv2", pretrained="imagenet")
    return cfg


@register_preset("demo")
def _demo() -> Config:
    """Tiny model on the procedural demo domains: a few minutes on a laptop CPU."""
    cfg = Config(preset="demo")
    cfg.model = ModelConfig(
        backbone="mit_tiny", head="daformer", embed_dim=64, fusion_channels=64,
        aspp_dilations=(1, 3, 6, 9), drop_path_rate=0.0,
    )  # fmt: skip
    cfg.data = DataConfig(
        source="demo-source", target="demo-target", root="data/demo",
        source_scale=(320, 180), target_scale=(256, 128), crop_size=(128, 128),
        batch_size=4, workers=0, val_max_images=None,
    )  # fmt: skip
    cfg.optim = OptimConfig(lr=6e-4, warmup_iters=50)
    cfg.train = TrainConfig(
        iters=400, seed=0, eval_interval=200, checkpoint_interval=200, log_interval=20,
        image_log_interval=200, amp="off", method="dacs",
    )  # fmt: skip
    # dacs (DAFormer self-training): on the demo domains it beats source-only by 2.5 mIoU at
    # these 400 iterations (2 seeds) and 3.9 at 1200; cluda's contrast gains 1.3 at 400 and
    # nothing at 1200 there (BENCHMARKS.md, "UDA training step and adaptation").
    # 128x128 crops of 320x180 / 256x128 frames: pixel counts scaled from GTA5's ~2 Mpx frames,
    # the ignored bottom rows are the demo bonnet's, a faster teacher for a short run, a 16x16
    # contrast grid (half the fused map), and no feature distance: there are no ImageNet weights
    # to stay close to.
    cfg.uda = UDAConfig(
        ema_alpha=0.99, pseudo_ignore_top=0, pseudo_ignore_bottom=8, rcs_min_pixels=80,
        fd_lambda=0.0, cl_grid=(16, 16), cl_chunk_size=512,
    )  # fmt: skip
    cfg.eval = EvalConfig(mode="whole", scale=None)
    cfg.confeti = _demo_confeti_section()  # read only by --method confeti
    return cfg


@register_preset("demo-hrda")
def _demo_hrda() -> Config:
    """CLUDA on HRDA on the demo domains, a few seconds per iteration on a CPU: the demo model
    with a scale-attention head; HRDA's sizes divided by 8 (128x128 crops of the native frames,
    a 64x64 context view, 64x64 detail crops every 32 px, 8 px MIC patches), its test protocol
    (128x128 windows every 64 px), the entropy crop from 30 % of the run on (12k of 40k)."""
    cfg = _demo()
    cfg.preset = "demo-hrda"
    cfg.model.hrda = HRDAConfig(
        enabled=True, detail_crop_size=(64, 64), detail_stride=(32, 32), attention_embed_dim=32,
        fusion="cluda",
    )  # fmt: skip
    cfg.train.method = "cluda"
    cfg.uda.cl_weighter_embed_dim = 32
    cfg.uda.hrda_entropy_crop_start = 120
    cfg.uda.mic_patch = 8
    cfg.eval = EvalConfig(mode="slide", scale=None, crop_size=(128, 128), stride=(64, 64))
    return cfg


def _confeti_dlv2(name: str) -> Config:
    """cxa9264/CONFETI's GTA5 -> Cityscapes setup (research/confeti.md section 3): DeepLabV2 /
    ResNet-101 from ImageNet, Cityscapes resized to 1280x640 for training, the DAFormer UDA
    defaults, seed 114, whole-image evaluation at the native 2048x1024 (its test Resize is
    commented out)."""
    cfg = _dlv2_r101()
    cfg.preset = name
    cfg.data.target_scale = (1280, 640)
    cfg.train.method = "confeti"
    cfg.train.seed = 114
    cfg.eval = EvalConfig(mode="whole", scale=None)
    return cfg


@register_preset("confeti-dlv2-r101")
def _confeti_dlv2_r101() -> Config:
    """CONFETI, two stages: 80k joint on 512x512 crops, then 80k with the frozen translator on 640x640."""
    cfg = _confeti_dlv2("confeti-dlv2-r101")
    cfg.train.iters = 80000
    cfg.data.crop_size = (640, 640)  # stage 2; stage 1 uses confeti.stage1_crop_size (512x512)
    return cfg


@register_preset("confeti-dlv2-r101-1stage")
def _confeti_dlv2_r101_1stage() -> Config:
    """CONFETI, the authors' one-stage schedule (cxa9264/CONFETII): 40k joint on 640x640 crops."""
    cfg = _confeti_dlv2("confeti-dlv2-r101-1stage")
    cfg.confeti.stages = 1
    cfg.train.iters = 40000
    cfg.train.seed = 0
    cfg.train.amp = "fp16"  # CONFETII trains with fp16 autocast and a GradScaler
    cfg.data.crop_size = (640, 640)
    return cfg


@register_preset("demo-confeti")
def _demo_confeti() -> Config:
    """CONFETI on the demo domains: the demo model, a tiny translator, two short stages on CPU
    (the same as ``--preset demo --method confeti``)."""
    cfg = _demo()
    cfg.preset = "demo-confeti"
    cfg.train.method = "confeti"
    return cfg


def _demo_confeti_section() -> ConfetiConfig:
    """CONFETI at demo size: the reference's iteration gates (2000/3000 of 80000) scaled to a few
    hundred iterations, 64-d prototypes on the demo's 64-channel fused map, a translator with
    8/16/32 channels and 2 residual blocks, a 200-iteration stage 1 on 128x128 crops."""
    return ConfetiConfig(
        stage1_iters=200, stage1_crop_size=(128, 128), proto_dim=64, proto_warmup_iters=30,
        cam_mix_start=20, contrast_start=30,
        style=StyleConfig(ngf=8, n_blocks=2, ndf=8, mlp_channels=32, nce_layers=(0, 4, 8, 12, 13),
                          num_patches=64),
    )  # fmt: skip


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    return PRESETS[name]()


# --------------------------------------------------------------------------- overrides


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (parsed Python literal or raw string) to the annotated field type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot use {value!r} ({'; '.join(errors)})")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a tuple, got {value!r}")
        item = args[0] if args else str
        return tuple(_coerce(v, item, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float):
        try:
            out = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and out != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return out
    if annotation is str:
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def _parse_literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply one ``section.key=value`` override in place; unknown keys raise and list the known ones."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        hints = _field_types(node)
        if part not in hints:
            where = ".".join(parts[:i]) or "config"
            raise ConfigError(f"unknown key {key!r}: {where} has {', '.join(sorted(hints))}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.<name>=...")
            setattr(node, part, _coerce(_parse_literal(raw.strip()), hints[part], key))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"{'.'.join(parts[: i + 1])!r} is not a section")


def _build(cls: type, data: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(f"unknown key(s) in {path or 'config'}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, annotation in hints.items():
        if name not in data:
            continue
        value = data[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, f"{path}.{name}".strip("."))
        else:
            kwargs[name] = _coerce(value, annotation, f"{path}.{name}".strip("."))
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (strict)."""
    return _build(Config, data, "")


def resolve_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    cfg = get_preset(preset)
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg
