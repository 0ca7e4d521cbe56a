"""An export without onnxruntime stops before any work with the install command; the demo keeps
its trained model and skips only the export."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from cluda_deploy.cli import main
from export.pipeline import OnnxRuntimeMissing, require_onnxruntime

_real_find_spec = importlib.util.find_spec


@pytest.fixture
def no_onnxruntime(monkeypatch):
    def find_spec(name, *args, **kwargs):
        return None if name == "onnxruntime" else _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_require_onnxruntime_passes_when_installed():
    require_onnxruntime()  # the dev extra installs the CPU wheel


def test_missing_onnxruntime_names_the_fix(no_onnxruntime):
    with pytest.raises(OnnxRuntimeMissing, match=r"pip install .*\.\[cpu\]"):
        require_onnxruntime()


def test_cli_export_without_onnxruntime_is_one_line(no_onnxruntime, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not needed: the check runs first")
    result = CliRunner().invoke(main, ["export", "-c", str(ckpt), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "onnxruntime is not installed" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_demo_without_onnxruntime_keeps_its_results(no_onnxruntime, tiny_demo_root, tmp_path):
    from cluda_deploy.demo_flow import run_demo

    lines: list[str] = []
    summary = run_demo(tiny_demo_root, tmp_path / "demo", method="source-only", iters=2,
                       progress=False, echo=lines.append)  # fmt: skip
    assert summary["onnx"] is None and summary["iterations"] == 2
    assert any("export skipped: onnxruntime is not installed" in line for line in lines)
    assert (tmp_path / "demo" / "adapt" / "checkpoints" / "latest.pt").is_file()
    assert list((tmp_path / "demo" / "predictions").glob("*_overlay.png"))
    assert not (tmp_path / "demo" / "export").exists()
