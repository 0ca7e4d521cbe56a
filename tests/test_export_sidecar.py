"""The sidecar contract: what export writes reads back, and every broken sidecar or input that
does not fit the artefact fails with one line naming the problem and the fix."""

from __future__ import annotations

import json

import pytest

from cluda_deploy.config import EvalConfig
from cluda_deploy.sidecar import (
    SidecarError,
    check_input_shape,
    read_sidecar,
    sidecar_path,
    static_dims,
    write_sidecar,
)
from export.pipeline import prepare, sidecar_data
from tests.test_export_graph import make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "demo.pt"
    return make_checkpoint(path, eval_cfg=EvalConfig(mode="whole", scale=(256, 128)), iteration=9)


@pytest.fixture
def artefact(tmp_path, checkpoint):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"pretend graph bytes")
    data = sidecar_data(prepare(checkpoint), "onnx", "fp32", ["labels", "confidence"])
    write_sidecar(path, data)
    return path


def test_round_trip_contract(artefact, checkpoint):
    data = read_sidecar(artefact)
    assert read_sidecar(sidecar_path(artefact)) == data  # the artefact or its .json
    assert sidecar_path(artefact).name == "model.onnx.json"
    assert data["format"] == "cluda-deploy/exported-model" and data["version"] == 1
    assert (data["backend"], data["precision"], data["file"]) == ("onnx", "fp32", "model.onnx")
    assert data["label_space"]["class_names"][0] == "road" and len(data["label_space"]["palette"]) == 19
    assert data["normalization"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    spec = data["input"]
    assert (spec["name"], spec["dtype"], spec["layout"], spec["channels"]) == ("images", "uint8", "NHWC", 3)
    assert spec["shape"] == ["batch", "height", "width", 3] and spec["dynamic_axes"] == {
        "0": "batch", "1": "height", "2": "width"}  # fmt: skip
    assert spec["inference_size"]["rule"] == "keep-ratio" and spec["inference_size"]["scale"] == [256, 128]
    assert [(o["name"], o["dtype"]) for o in data["outputs"]] == [("labels", "uint8"), ("confidence", "float32")]
    assert data["provenance"]["iteration"] == 9 and data["provenance"]["checkpoint"] == str(checkpoint)
    assert {"torch", "onnx", "onnxruntime"} <= set(data["provenance"]["versions"])
    assert len(data["hashes"]["artefact_sha256"]) == 64 and len(data["hashes"]["checkpoint_sha256"]) == 64
    assert static_dims(data) == [None, None, None, 3]


def test_missing_sidecar_is_a_foreign_file(tmp_path):
    model = tmp_path / "elsewhere.onnx"
    model.write_bytes(b"x")
    with pytest.raises(SidecarError, match="has no sidecar elsewhere.onnx.json: it was not written by 'cluda export'"):
        read_sidecar(model)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "not json {", "is not valid JSON"),
        (lambda d: {**d, "format": "someone/else"}, "is not a cluda-deploy sidecar"),
        (lambda d: {**d, "version": 2}, "upgrade cluda-deploy"),
        (lambda d: {k: v for k, v in d.items() if k != "label_space"}, "lacks 'label_space'"),
        (lambda d: {**d, "backend": "tflite"}, "unknown backend 'tflite'"),
        (lambda d: {**d, "precision": "int4"}, "unknown precision 'int4'"),
        (lambda d: {**d, "input": {**d["input"], "layout": "NCHW"}}, "input must be 'images' uint8 NHWC"),
        (lambda d: {**d, "outputs": [{"name": "logits"}]}, "outputs must start with 'labels'"),
    ],
)
def test_broken_sidecar_errors(artefact, edit, message):
    path = sidecar_path(artefact)
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(SidecarError, match=message):
        read_sidecar(artefact)


def test_replaced_artefact_fails_the_hash_check(artefact):
    artefact.write_bytes(b"another model")
    with pytest.raises(SidecarError, match="does not match its sidecar"):
        read_sidecar(artefact)
    assert read_sidecar(artefact, check_hash=False)["backend"] == "onnx"


def test_check_input_shape_static_min_side_and_profile(artefact):
    data = read_sidecar(artefact)
    check_input_shape(data, (2, 1024, 2048, 3))
    with pytest.raises(SidecarError, match=r"takes a \(N, H, W, 3\)"):
        check_input_shape(data, (1, 3, 64, 64))
    with pytest.raises(SidecarError, match="at least 32x32 px"):
        check_input_shape(data, (1, 16, 64, 3))
    static = {**data, "input": {**data["input"], "shape": [1, 512, 1024, 3]}}
    check_input_shape(static, (1, 512, 1024, 3))
    with pytest.raises(SidecarError, match=r"exported for input 1x512x1024x3 \(static axis 1\)"):
        check_input_shape(static, (1, 256, 1024, 3))
    engine = {**data, "tensorrt": {"profile": {"min": [1, 256, 512, 3], "opt": [1, 512, 1024, 3],
                                               "max": [2, 1024, 2048, 3]}}}  # fmt: skip
    check_input_shape(engine, (2, 1024, 2048, 3))
    with pytest.raises(SidecarError, match="outside the engine.s optimisation profile .* --trt-min/--trt-max"):
        check_input_shape(engine, (4, 512, 1024, 3))
    with pytest.raises(SidecarError, match="outside the engine's optimisation profile"):
        check_input_shape(engine, (1, 128, 1024, 3))
