"""``cluda import mmseg`` on small synthetic files that follow the released files' naming.

The backbone keys are written here from mmseg's ``mix_transformer.py`` layout (``patch_embed{i}``,
``block{i}.{j}.attn.kv``, ``norm{i}``, stages numbered from 1), independently of the importer's
rules; the architectures are the released ones shrunk with ``--set`` overrides (a MiT-B5 run of
the same map is in test_import_keymap.py). The numerical check runs an independent MiT forward
straight from the mmseg tensors (fused kv, split by reshape as mmseg does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from cluda_deploy.checkpoint import load_segmenter, read_checkpoint
from cluda_deploy.cli import main
from cluda_deploy.config import get_preset
from cluda_deploy.importers.archs import get_arch
from cluda_deploy.importers.mmseg import (
    KeyMismatchError,
    convert_state_dict,
    import_config,
    import_mmseg,
    target_state,
    training_head_shapes,
)
from cluda_deploy.importers.reader import MMSegImportError, read_mmseg_file
from cluda_deploy.labels import cityscapes_label_space
from cluda_deploy.models.mit import MIT_VARIANTS

TINY = [
    "model.backbone=mit_tiny", "model.embed_dim=32", "model.fusion_channels=32",
    "model.drop_path_rate=0", "model.hrda.attention_embed_dim=16",
    "model.hrda.detail_crop_size=32x32", "model.hrda.detail_stride=16x16",
    "eval.crop_size=64x64", "eval.stride=32x32",
]  # fmt: skip
TINY_MIT = MIT_VARIANTS["mit_tiny"]
MMSEG_CONFIG_TEXT = (
    "data = dict(train=dict(type='UDADataset', source=dict(type='{}', data_root='data/gta/')))"
)


# --------------------------------------------------------------------------- synthetic files


def mmseg_mit_state(gen: torch.Generator, ln_gain: float = 1.0) -> dict[str, torch.Tensor]:
    """mit_tiny weights under mmseg MiT names (random; LayerNorm gains around ``ln_gain``)."""
    state: dict[str, torch.Tensor] = {}

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    def norm(name, c):
        state[f"{name}.weight"] = ln_gain * (1 + rand(c, scale=0.1))
        state[f"{name}.bias"] = ln_gain * rand(c, scale=0.1)

    v, c_in = TINY_MIT, 3
    stages = zip(v.hidden_sizes, v.depths, v.sr_ratios, v.patch_sizes, v.mlp_ratios, strict=True)
    for i, (c, depth, sr, patch, ratio) in enumerate(stages, start=1):
        state[f"backbone.patch_embed{i}.proj.weight"] = rand(c, c_in, patch, patch)
        state[f"backbone.patch_embed{i}.proj.bias"] = rand(c)
        norm(f"backbone.patch_embed{i}.norm", c)
        for j in range(depth):
            p = f"backbone.block{i}.{j}."
            norm(p + "norm1", c)
            state[p + "attn.q.weight"], state[p + "attn.q.bias"] = rand(c, c), rand(c)
            state[p + "attn.kv.weight"], state[p + "attn.kv.bias"] = rand(2 * c, c), rand(2 * c)
            if sr > 1:
                state[p + "attn.sr.weight"] = rand(c, c, sr, sr, scale=0.05)
                state[p + "attn.sr.bias"] = rand(c)
                norm(p + "attn.norm", c)
            state[p + "attn.proj.weight"], state[p + "attn.proj.bias"] = rand(c, c), rand(c)
            norm(p + "norm2", c)
            state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"] = (
                rand(ratio * c, c),
                rand(ratio * c),
            )
            state[p + "mlp.dwconv.dwconv.weight"] = rand(ratio * c, 1, 3, 3)
            state[p + "mlp.dwconv.dwconv.bias"] = rand(ratio * c)
            state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"] = rand(c, ratio * c), rand(c)
        norm(f"backbone.norm{i}", c)
        c_in = c
    return state


def tiny_block(arch: str, seed: int = 0, ln_gain: float = 1.0, overrides=TINY) -> dict:
    """A bare segmentor state_dict of the shrunk ``arch``: mmseg backbone + decode heads."""
    gen = torch.Generator().manual_seed(seed)
    spec = get_arch(arch)
    model_cfg = import_config(spec, "gta", overrides).model
    state = mmseg_mit_state(gen, ln_gain)
    heads = {k: s for k, (s, _) in target_state(model_cfg).items() if k.startswith("decode_head.")}
    heads.update(training_head_shapes(spec, model_cfg))
    for key, shape in heads.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1
    return state


def mmseg_meta(source_type: str = "GTADataset") -> dict:
    labels = cityscapes_label_space()
    return {
        "CLASSES": labels.class_names,
        "PALETTE": [list(c) for c in labels.palette],
        "config": MMSEG_CONFIG_TEXT.format(source_type),
        "mmseg_version": "0.16.0",
        "iter": 40000,
        "hook_msgs": {"best_score": np.float64(0.7438), "last_ckpt": "work_dirs/x/iter_40000.pth"},
    }


def training_file(path, arch: str, **meta_kwargs) -> tuple[dict, dict]:
    """The full training form: three copies, meta (with a numpy scalar), optimizer state."""
    student, teacher = tiny_block(arch, seed=0), tiny_block(arch, seed=1)
    state = {}
    for prefix, block in (("model.", student), ("ema_model.", teacher), ("imnet_model.", student)):
        state.update({prefix + k: v for k, v in block.items()})
    optimizer = {"state": {0: {"step": 40000, "exp_avg": torch.zeros(2)}},
                 "param_groups": [{"lr": 6e-5, "betas": (0.9, 0.999), "params": [0, 1]}]}  # fmt: skip
    torch.save(
        {"meta": mmseg_meta(**meta_kwargs), "state_dict": state, "optimizer": optimizer}, path
    )
    return student, teacher


def kv_split(block: dict, key: str, half: int) -> torch.Tensor:
    kv = block[key]
    c = kv.shape[0] // 2
    return kv[half * c : (half + 1) * c]


# --------------------------------------------------------------------------- an independent MiT


def mmseg_mit_forward(state: dict, x: torch.Tensor, block_eps: float = 1e-6) -> list[torch.Tensor]:
    """MiT forward computed from the mmseg tensors with torch functionals (mix_transformer.py):
    the fused kv projection is split after the matmul by reshape(B, N, 2, heads, d), as mmseg
    does. Block and stage norms use ``block_eps``, patch-embed and sr norms 1e-5."""

    def norm(t, name, eps):
        return F.layer_norm(t, t.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)

    outs, v = [], TINY_MIT
    stages = zip(v.hidden_sizes, v.depths, v.num_attention_heads, v.sr_ratios, v.patch_sizes,
                 v.strides, strict=True)  # fmt: skip
    for i, (c, depth, heads, sr, patch, stride) in enumerate(stages, start=1):
        pe = f"backbone.patch_embed{i}."
        x = F.conv2d(x, state[pe + "proj.weight"], state[pe + "proj.bias"], stride=stride,
                     padding=patch // 2)  # fmt: skip
        b, _, h, w = x.shape
        x = norm(x.flatten(2).transpose(1, 2), pe + "norm", 1e-5)
        d = c // heads
        for j in range(depth):
            p = f"backbone.block{i}.{j}."
            y = norm(x, p + "norm1", block_eps)
            q = F.linear(y, state[p + "attn.q.weight"], state[p + "attn.q.bias"])
            q = q.reshape(b, -1, heads, d).transpose(1, 2)
            reduced = y
            if sr > 1:
                grid = y.transpose(1, 2).reshape(b, c, h, w)
                grid = F.conv2d(
                    grid, state[p + "attn.sr.weight"], state[p + "attn.sr.bias"], stride=sr
                )
                reduced = norm(grid.flatten(2).transpose(1, 2), p + "attn.norm", 1e-5)
            kv = F.linear(reduced, state[p + "attn.kv.weight"], state[p + "attn.kv.bias"])
            k, val = kv.reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1) * d**-0.5).softmax(-1)
            out = (attn @ val).transpose(1, 2).reshape(b, -1, c)
            x = x + F.linear(out, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
            y = F.linear(norm(x, p + "norm2", block_eps), state[p + "mlp.fc1.weight"],
                         state[p + "mlp.fc1.bias"])  # fmt: skip
            grid = y.transpose(1, 2).reshape(b, -1, h, w)
            grid = F.conv2d(grid, state[p + "mlp.dwconv.dwconv.weight"],
                            state[p + "mlp.dwconv.dwconv.bias"], padding=1, groups=grid.shape[1])  # fmt: skip
            y = F.gelu(grid.flatten(2).transpose(1, 2))
            x = x + F.linear(y, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        x = norm(x, f"backbone.norm{i}", block_eps).transpose(1, 2).reshape(b, c, h, w)
        outs.append(x)
    return outs


def converted_backbone_outputs(block: dict, eps: float, x: torch.Tensor) -> list[torch.Tensor]:
    from cluda_deploy.models import create_segmenter

    spec = get_arch("daformer-mitb5")
    model_cfg = import_config(spec, "gta", TINY).model
    conversion = convert_state_dict(block, model_cfg, spec)
    model = create_segmenter(dataclasses.replace(model_cfg, layer_norm_eps=eps)).eval()
    model.load_state_dict(conversion.state_dict, strict=True)
    with torch.no_grad():
        return model.backbone(x)


def max_relative_error(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> list[float]:
    return [float((a - r).abs().max() / r.abs().max()) for a, r in zip(outs, refs, strict=True)]


def test_converted_mit_equals_an_independent_mmseg_forward():
    block = tiny_block("daformer-mitb5")
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        refs = mmseg_mit_forward(block, x)
    outs = converted_backbone_outputs(block, 1e-6, x)
    for out, ref in zip(outs, refs, strict=True):
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # With transformers' default eps the same weights miss the reference by more.
    wrong = converted_backbone_outputs(block, 1e-5, x)
    assert max(float((a - r).abs().max()) for a, r in zip(wrong, refs, strict=True)) > 2e-5


def test_layer_norm_eps_matters_where_activations_are_small():
    """Channels whose variance is near eps (small LayerNorm gains): 1e-5 changes the output
    by orders of magnitude more than float rounding; 1e-6 reproduces mmseg."""
    block = tiny_block("daformer-mitb5", ln_gain=0.03)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        refs = mmseg_mit_forward(block, x)
    right = max_relative_error(converted_backbone_outputs(block, 1e-6, x), refs)
    wrong = max_relative_error(converted_backbone_outputs(block, 1e-5, x), refs)
    assert max(right) < 1e-5
    assert max(wrong) > 1e-4 and max(wrong) > 100 * max(right)


# --------------------------------------------------------------------------- file forms


def test_training_form_student_teacher_meta_and_provenance(tmp_path):
    src = tmp_path / "iter_40000.pth"
    student, teacher = training_file(src, "hrda-mitb5")
    for weights, block in (("student", student), ("teacher", teacher)):
        out = tmp_path / f"{weights}.pt"
        result = import_mmseg(src, "hrda-mitb5", out, weights=weights, overrides=TINY)
        assert (
            result.form == "training"
            and result.prefix == {"student": "model.", "teacher": "ema_model."}[weights]
        )
        model, info = load_segmenter(out)
        state = model.state_dict()
        assert torch.equal(state["backbone.segformer.stages.1.blocks.0.attention.k_proj.weight"],
                           kv_split(block, "backbone.block2.0.attn.kv.weight", 0))  # fmt: skip
        assert torch.equal(state["backbone.segformer.stages.1.blocks.0.attention.v_proj.bias"],
                           kv_split(block, "backbone.block2.0.attn.kv.bias", 1))  # fmt: skip
        assert torch.equal(
            state["backbone.segformer.stages.3.layer_norm.weight"], block["backbone.norm4.weight"]
        )
        for key in [k for k in block if k.startswith("decode_head.")]:
            assert torch.equal(state[key], block[key]), key
    imported = info.provenance["imported"]
    assert imported["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert imported["file"] == "iter_40000.pth" and imported["arch"] == "hrda-mitb5"
    assert imported["meta"]["CLASSES"] == list(cityscapes_label_space().class_names)
    assert imported["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.7438)
    assert info.provenance["method"] == "hrda" and info.provenance["iteration"] == 40000
    assert info.config.model.hrda.enabled and info.config.eval.mode == "slide"
    assert model.backbone.segformer.stages[0].blocks[0].layernorm_before.eps == 1e-6
    # the written checkpoint itself loads with plain weights_only (no numpy allow-list)
    torch.load(out, weights_only=True)


def test_published_and_bare_forms(tmp_path):
    block = tiny_block("daformer-mitb5")
    published, bare, wrapped = (
        tmp_path / "latest.pth",
        tmp_path / "bare.pth",
        tmp_path / "wrapped.pth",
    )
    torch.save(
        {"meta": mmseg_meta(), "state_dict": {"model." + k: v for k, v in block.items()}}, published
    )
    torch.save(block, bare)
    torch.save({"state_dict": block}, wrapped)
    forms = {p: read_mmseg_file(p).form for p in (published, bare, wrapped)}
    assert forms == {published: "published", bare: "bare", wrapped: "bare"}
    outputs = []
    for path in (published, bare, wrapped):
        result = import_mmseg(path, "daformer-mitb5", tmp_path / f"{path.stem}.pt", overrides=TINY)
        model, _ = load_segmenter(result.out)
        outputs.append(model.state_dict())
    for key in outputs[0]:
        assert torch.equal(outputs[0][key], outputs[1][key]) and torch.equal(
            outputs[0][key], outputs[2][key]
        )
    with pytest.raises(MMSegImportError, match="holds no ema_model.* .*use --weights student"):
        import_mmseg(
            published, "daformer-mitb5", tmp_path / "t.pt", weights="teacher", overrides=TINY
        )


def test_synthia_source_is_read_from_the_config_text(tmp_path):
    src = tmp_path / "synthia.pth"
    training_file(src, "daformer-mitb5", source_type="SynthiaDataset")
    result = import_mmseg(src, "daformer-mitb5", tmp_path / "s.pt", overrides=TINY)
    _, info = load_segmenter(result.out)
    assert result.source == "synthia" and info.config.data.source == "synthia"
    assert "mIoU16" in info.label_space.eval_subsets


# --------------------------------------------------------------------------- strictness


def save_student(path, block: dict) -> None:
    torch.save(
        {"meta": mmseg_meta(), "state_dict": {"model." + k: v for k, v in block.items()}}, path
    )


def test_missing_unknown_and_misshaped_keys_are_named(tmp_path):
    block = tiny_block("hrda-mitb5")
    del block["backbone.block1.0.attn.kv.weight"]
    block["decode_head.head.extra.weight"] = torch.zeros(3)
    block["decode_head.head.conv_seg.weight"] = torch.zeros(19, 31, 1, 1)
    save_student(tmp_path / "bad.pth", block)
    with pytest.raises(KeyMismatchError) as info:
        import_mmseg(tmp_path / "bad.pth", "hrda-mitb5", tmp_path / "x.pt", overrides=TINY)
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing: model.backbone.block1.0.attn.kv.weight (expected [32, 16])" in message
    assert "1 unknown: model.decode_head.head.extra.weight [3]" in message
    assert (
        "model.decode_head.head.conv_seg.weight is [19, 31, 1, 1], expected [19, 32, 1, 1]"
        in message
    )
    assert not (tmp_path / "x.pt").exists()


def test_the_wrong_arch_is_refused_and_the_right_one_suggested(tmp_path):
    save_student(tmp_path / "daformer.pth", tiny_block("daformer-mitb5"))
    with pytest.raises(KeyMismatchError, match=r"fit --arch daformer-mitb5$") as info:
        import_mmseg(tmp_path / "daformer.pth", "hrda-mitb5", tmp_path / "x.pt", overrides=TINY)
    assert "missing: model.decode_head.head.conv_seg.weight (expected [19, 32, 1, 1])" in str(
        info.value
    )
    assert "unknown: model.decode_head.conv_seg.weight [19, 32, 1, 1]" in str(info.value)
    assert (
        "decode_head.scale_attention.conv_seg.weight (expected [19, 16, 1, 1])"
        in info.value.missing
    )
    assert not info.value.optional_only


def test_cluda_weighting_head_is_dropped_and_optional(tmp_path):
    overrides = [*TINY, "model.embed_dim=48"]  # CLUDA's wider decoder embedding, shrunk
    block = tiny_block("cluda-hrda-mitb5", overrides=overrides)
    save_student(tmp_path / "cluda.pth", block)
    result = import_mmseg(
        tmp_path / "cluda.pth", "cluda-hrda-mitb5", tmp_path / "c.pt", overrides=overrides
    )
    weighter = sorted(k for k in block if k.startswith("decode_head.feat_weighter."))
    assert len(weighter) == 16 and sorted(result.dropped) == weighter
    model, info = load_segmenter(result.out)
    assert not any("feat_weighter" in k for k in model.state_dict())
    assert info.config.model.hrda.fusion == "cluda" and info.config.model.embed_dim == 48

    pruned = {k: v for k, v in block.items() if not k.startswith("decode_head.feat_weighter.")}
    save_student(tmp_path / "pruned.pth", pruned)
    with pytest.raises(
        KeyMismatchError,
        match=r"16 missing: model.decode_head.feat_weighter.conv_seg.weight \(expected \[1, 16, 1, 1\]\).*optional .*: --allow-missing$",
    ):
        import_mmseg(
            tmp_path / "pruned.pth", "cluda-hrda-mitb5", tmp_path / "p.pt", overrides=overrides
        )
    result = import_mmseg(tmp_path / "pruned.pth", "cluda-hrda-mitb5", tmp_path / "p.pt",
                          overrides=overrides, allow_missing=True)  # fmt: skip
    assert sorted(result.filled) == weighter and result.dropped == []


def test_absent_batchnorm_counters_need_allow_missing(tmp_path):
    full = tiny_block("daformer-mitb5")
    counters = sorted(k for k in full if k.endswith("num_batches_tracked"))
    block = {k: v for k, v in full.items() if k not in counters}
    save_student(tmp_path / "no_counters.pth", block)
    with pytest.raises(KeyMismatchError, match="num_batches_tracked"):
        import_mmseg(
            tmp_path / "no_counters.pth", "daformer-mitb5", tmp_path / "x.pt", overrides=TINY
        )
    result = import_mmseg(tmp_path / "no_counters.pth", "daformer-mitb5", tmp_path / "x.pt",
                          overrides=TINY, allow_missing=True)  # fmt: skip
    model, _ = load_segmenter(result.out)
    assert int(model.decode_head.fuse_layer.bottleneck.bn.num_batches_tracked) == 0
    assert sorted(result.filled) == counters and len(counters) == 8  # 1 + 3 x 2 + bottleneck


def test_mixed_forms_and_foreign_class_lists_are_refused(tmp_path):
    block = tiny_block("daformer-mitb5")
    mixed = {"model." + k: v for k, v in block.items()} | {"backbone.stray.weight": torch.zeros(1)}
    torch.save({"state_dict": mixed}, tmp_path / "mixed.pth")
    with pytest.raises(MMSegImportError, match="backbone.stray.weight"):
        import_mmseg(tmp_path / "mixed.pth", "daformer-mitb5", tmp_path / "x.pt", overrides=TINY)
    meta = mmseg_meta() | {"CLASSES": ("background", "aeroplane")}
    torch.save({"meta": meta, "state_dict": block}, tmp_path / "voc.pth")
    with pytest.raises(MMSegImportError, match="only GTA5/Synthia -> Cityscapes"):
        import_mmseg(tmp_path / "voc.pth", "daformer-mitb5", tmp_path / "x.pt", overrides=TINY)


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    evil = tmp_path / "evil.pth"
    torch.save({"meta": {"note": Payload()}, "state_dict": tiny_block("daformer-mitb5")}, evil)
    with pytest.raises(MMSegImportError, match=r"refused to load: the pickle asks for 'exec'"):
        import_mmseg(evil, "daformer-mitb5", tmp_path / "x.pt", overrides=TINY)
    assert not marker.exists()
    # the same payload in a plain pickle (not a torch zip file)
    with open(tmp_path / "evil_plain.pth", "wb") as handle:
        pickle.dump({"state_dict": Payload()}, handle, protocol=2)
    with pytest.raises(MMSegImportError, match="refused to load"):
        read_mmseg_file(tmp_path / "evil_plain.pth")
    assert not marker.exists()


def test_unreadable_and_absent_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(MMSegImportError, match="not a readable PyTorch checkpoint"):
        read_mmseg_file(tmp_path / "junk.pth")
    with pytest.raises(MMSegImportError, match="does not exist"):
        read_mmseg_file(tmp_path / "absent.pth")
    torch.save({"epoch": 3}, tmp_path / "other.pth")
    with pytest.raises(MMSegImportError, match="not an mmseg checkpoint"):
        read_mmseg_file(tmp_path / "other.pth")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_import_then_evaluate_and_predict_unchanged(tiny_demo_root, tmp_path):
    src = tmp_path / "iter_40000_relevant.pth"
    save_student(src, tiny_block("mic-hrda-mitb5"))
    runner = CliRunner()
    sets = [arg for item in TINY for arg in ("--set", item)]
    out = tmp_path / "mic.pt"
    result = runner.invoke(
        main, ["import", "mmseg", str(src), "--arch", "mic-hrda-mitb5", "--out", str(out), *sets]
    )
    assert result.exit_code == 0, result.output
    assert f"-> {out}" in result.output and read_checkpoint(out)["provenance"]["method"] == "mic"

    result = runner.invoke(main, ["evaluate", "-c", str(out), "--dataset", "demo-target", "--data-root",
                                  str(tiny_demo_root), "--scale", "native", "--json",
                                  str(tmp_path / "scores.json"), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output

    Image.fromarray(np.full((72, 100, 3), 90, dtype=np.uint8)).save(tmp_path / "frame.png")
    result = runner.invoke(main, ["predict", "-c", str(out), str(tmp_path / "frame.png"), "--out",
                                  str(tmp_path / "pred"), "--scale", "native", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "pred" / "frame_labelTrainIds.png")).shape == (72, 100)


def test_cli_errors_are_one_line(tmp_path):
    save_student(tmp_path / "daformer.pth", tiny_block("daformer-mitb5"))
    sets = [arg for item in TINY for arg in ("--set", item)]
    result = CliRunner().invoke(main, ["import", "mmseg", str(tmp_path / "daformer.pth"), "--arch",
                                       "hrda-mitb5", "--out", str(tmp_path / "x.pt"), *sets])  # fmt: skip
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "KeyMismatchError" in result.output and "--arch daformer-mitb5" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_every_arch_preset_is_importable_config():
    for arch in ("daformer-mitb5", "hrda-mitb5", "mic-hrda-mitb5", "cluda-hrda-mitb5"):
        cfg = import_config(get_arch(arch), "gta")
        assert cfg.model.layer_norm_eps == 1e-6 and cfg.model.pretrained is None
        assert cfg.model.hrda.enabled == (arch != "daformer-mitb5")
        assert cfg.model == get_preset(get_arch(arch).preset).model
    assert math.isclose(import_config(get_arch("hrda-mitb5"), "gta").model.hrda.context_scale, 0.5)
