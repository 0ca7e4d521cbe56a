"""Everything around the TensorRT builder: the typing plan per TensorRT version, optimisation
profiles from the options, cache keys, the clear error without TensorRT. Building and running an
engine needs TensorRT and a GPU; that test skips, saying so, where they are missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluda_deploy.cli import main
from export.tensorrt import (
    BuildPlan,
    GpuIdentity,
    Profile,
    TensorRTUnavailable,
    engine_cache_key,
    import_tensorrt,
    plan_build,
    profile_for,
    timing_cache_path,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize(
    ("version", "precision", "expected"),
    [
        ("11.4.0", "fp32", BuildPlan("fp32", "fp32", True)),
        ("11.4.0", "fp16", BuildPlan("fp16", "fp16", True)),  # AutoCast-style fp16 ONNX
        ("11.4.0", "int8", BuildPlan("int8", "int8", True)),  # Q/DQ ONNX
        ("10.13.0.35", "fp32", BuildPlan("fp32", "fp32", True)),
        ("10.13.0.35", "int8", BuildPlan("int8", "int8", True)),
        ("10.13.0.35", "fp16", BuildPlan("fp16", "fp32", False, ("FP16",))),  # builder-flag fallback
    ],
)
def test_plan_build_strongly_typed_with_trt10_fallback(version, precision, expected):
    assert plan_build(version, precision) == expected


def test_plan_build_rejects_old_tensorrt_and_unknown_precision():
    with pytest.raises(TensorRTUnavailable, match="TensorRT >= 10"):
        plan_build("8.6.1", "fp32")
    with pytest.raises(ValueError, match="unknown TensorRT precision 'bf16'"):
        plan_build("11.0", "bf16")


def test_profile_defaults_for_dynamic_input():
    profile = profile_for((None, None, None), min_side=32)
    assert profile == Profile((1, 512, 1024, 3), (1, 1024, 2048, 3), (4, 2048, 2048, 3))
    assert profile.to_dict()["opt"] == [1, 1024, 2048, 3]


def test_profile_static_axes_are_fixed_and_overrides_apply():
    static = profile_for((None, 512, 1024), min_side=32, trt_max=(8, 512, 1024))
    assert static == Profile((1, 512, 1024, 3), (1, 512, 1024, 3), (8, 512, 1024, 3))
    fixed = profile_for((2, 512, 1024), min_side=32)
    assert fixed.min == fixed.opt == fixed.max == (2, 512, 1024, 3)
    # The defaults never go below the model's minimum side.
    assert profile_for((None, None, None), 600, trt_min=(1, 100, 100)).min == (1, 600, 600, 3)


def test_profile_errors_name_the_axis():
    with pytest.raises(ValueError, match="--trt-min height 256 contradicts the static height 512"):
        profile_for((None, 512, 1024), 32, trt_min=(1, 256, 1024))
    with pytest.raises(ValueError, match="profile width: need 1 <= min <= opt <= max, got 1024, 512"):
        profile_for((None, None, None), 32, trt_min=(1, 256, 1024), trt_opt=(1, 256, 512), trt_max=(1, 256, 2048))


def test_engine_cache_key_covers_gpu_version_onnx_precision_and_shapes():
    gpu = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0")
    plan = plan_build("10.13.0", "fp32")
    profile = profile_for((None, None, None), 32)
    key = engine_cache_key(gpu, "10.13.0", "ab" * 32, plan, profile)
    assert key == engine_cache_key(gpu, "10.13.0", "ab" * 32, plan, profile) and len(key) == 32
    variants = [
        engine_cache_key(GpuIdentity("NVIDIA H200", "9.0"), "10.13.0", "ab" * 32, plan, profile),
        engine_cache_key(GpuIdentity("NVIDIA H100 80GB HBM3", "8.9"), "10.13.0", "ab" * 32, plan, profile),
        engine_cache_key(gpu, "11.4.0", "ab" * 32, plan, profile),
        engine_cache_key(gpu, "10.13.0", "cd" * 32, plan, profile),
        engine_cache_key(gpu, "10.13.0", "ab" * 32, plan_build("10.13.0", "fp16"), profile),
        engine_cache_key(gpu, "10.13.0", "ab" * 32, plan, profile_for((None, 512, 1024), 32)),
    ]
    assert len({key, *variants}) == 7


def test_timing_cache_is_per_gpu_and_version(tmp_path):
    path = timing_cache_path(tmp_path, GpuIdentity("NVIDIA H100 80GB HBM3", "9.0"), "10.13.0")
    assert path == tmp_path / "timing_nvidia-h100-80gb-hbm3_sm90_trt10.13.0.cache"


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here; this checks the error without it")
def test_missing_tensorrt_is_a_clear_error(tmp_path):
    with pytest.raises(TensorRTUnavailable, match="--trt needs NVIDIA TensorRT >= 10 and a CUDA GPU"):
        import_tensorrt()
    # The CLI stops before loading or tracing anything.
    bogus = tmp_path / "never-read.pt"
    result = CliRunner().invoke(main, ["export", "-c", str(bogus), "-o", str(tmp_path / "out"), "--trt"])
    assert result.exit_code != 0 and "TensorRTUnavailable: --trt needs NVIDIA TensorRT" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs NVIDIA TensorRT (not installable in this environment: "
                    "its PyPI wheels download from pypi.nvidia.com) and a CUDA GPU")  # fmt: skip
def test_tensorrt_engine_build_cache_and_parity(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but there is no CUDA GPU")
    from export.options import ExportOptions
    from export.pipeline import export_model
    from tests.test_export_graph import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "c.pt")
    options = ExportOptions(static=(1, 128, 256), trt=True, trt_cache=tmp_path / "cache")
    result = export_model(ckpt, tmp_path / "out", options, echo=lambda _: None)
    assert result.reports["trt_fp32"].passed
    engines = list(Path(tmp_path / "cache" / "engines").glob("*.engine"))
    assert len(engines) == 1 and list((tmp_path / "cache").glob("timing_*.cache"))
    again = export_model(ckpt, tmp_path / "out2", options, echo=lambda _: None)
    assert again.artefacts["trt_fp32"].read_bytes() == result.artefacts["trt_fp32"].read_bytes()
