"""Image/label readers: palette images, label ids, the Synthia 16-bit pitfall, corrupt files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from cluda_deploy.data.io import (
    ImageReadError,
    LabelFormatError,
    read_color_label,
    read_image,
    read_label_ids,
    read_synthia_label,
    read_train_ids,
    write_image_png,
    write_json,
    write_label_png,
)


def _palette_png(path, indices, palette):
    img = Image.fromarray(indices.astype(np.uint8))
    img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    img.save(path)
    assert Image.open(path).mode == "P"


def test_palette_image_reads_as_rgb(tmp_path):
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1], palette[2] = (10, 20, 30), (200, 100, 50)
    _palette_png(tmp_path / "p.png", np.array([[1, 2], [2, 1]]), palette)
    rgb = read_image(tmp_path / "p.png")
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [200, 100, 50]


def test_grey_and_rgba_images_become_rgb(tmp_path):
    Image.fromarray(np.full((3, 4), 77, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((3, 4, 4), 9, np.uint8)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "g.png").shape == (3, 4, 3)
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [9, 9, 9]


def test_gta_palette_label_keeps_indices(tmp_path):
    """GTA5 labels: the palette index is the id; the palette colour must be ignored."""
    palette = np.random.default_rng(0).integers(0, 256, (256, 3))
    ids = np.array([[7, 26], [33, 0]])
    _palette_png(tmp_path / "00001.png", ids, palette)
    out = read_label_ids(tmp_path / "00001.png")
    assert out.dtype == np.uint8 and out.tolist() == ids.tolist()


def test_rgb_png_given_as_label_is_refused(tmp_path):
    path = tmp_path / "labels" / "00001.png"
    path.parent.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(LabelFormatError) as err:
        read_label_ids(path)
    message = str(err.value)
    assert str(path) in message and "mode RGB colour image" in message
    assert "expected a label-id PNG (mode P or L" in message
    with pytest.raises(LabelFormatError, match="expected a train-id PNG"):
        read_train_ids(path)


def test_synthia_label_pitfall(tmp_path):
    """Pillow keeps the high byte of 16-bit samples (zeros for ids < 256); our reader does not."""
    ids = np.array([[3, 10], [22, 21]], dtype=np.uint16)
    instance = np.full_like(ids, 1000)
    cv2.imwrite(str(tmp_path / "0000000.png"), np.stack([np.zeros_like(ids), instance, ids], -1))

    pil = np.asarray(Image.open(tmp_path / "0000000.png"))
    assert pil[..., 0].tolist() == [[0, 0], [0, 0]]  # what a PIL-based loader would train on

    out = read_synthia_label(tmp_path / "0000000.png")
    assert out.dtype == np.uint16 and out.tolist() == ids.tolist()


def test_synthia_reader_refuses_8bit_or_single_channel(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(LabelFormatError, match=r"grey\.png has 1 channel.*16-bit 3-channel"):
        read_synthia_label(tmp_path / "grey.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "color.png")
    with pytest.raises(LabelFormatError, match="GT/COLOR"):
        read_synthia_label(tmp_path / "color.png")


def _truncated_png(path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_png_gives_one_clear_line(tmp_path):
    path = tmp_path / "00001.png"
    _truncated_png(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    message = str(err.value)
    assert message == f"cannot decode {path} (truncated PNG?); re-download or delete it"
    with pytest.raises(ImageReadError, match="cannot decode .*00001.png"):
        read_label_ids(path)
    with pytest.raises(ImageReadError, match="cannot decode .*re-download or delete it"):
        read_synthia_label(path)


def test_garbage_file_and_missing_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match=r"cannot decode .*bad\.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_color_label_reader(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (128, 64, 128)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "c.png")
    assert read_color_label(tmp_path / "c.png")[1, 1].tolist() == [128, 64, 128]
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "l.png")
    with pytest.raises(LabelFormatError, match="RGB"):
        read_color_label(tmp_path / "l.png")


def test_writers_are_atomic_and_round_trip(tmp_path):
    label = np.array([[0, 255], [18, 7]], dtype=np.uint8)
    write_label_png(tmp_path / "a" / "x_labelTrainIds.png", label)
    palette = np.zeros((256, 3), np.uint8)
    write_label_png(tmp_path / "a" / "p.png", label, palette=palette)
    write_image_png(tmp_path / "a" / "i.png", np.zeros((2, 2, 3), np.uint8))
    write_json(tmp_path / "a" / "s.json", {"k": [1, 2]})
    assert Image.open(tmp_path / "a" / "x_labelTrainIds.png").mode == "L"
    assert Image.open(tmp_path / "a" / "p.png").mode == "P"
    assert read_train_ids(tmp_path / "a" / "x_labelTrainIds.png").tolist() == label.tolist()
    assert json.loads((tmp_path / "a" / "s.json").read_text()) == {"k": [1, 2]}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "i.png",
        "p.png",
        "s.json",
        "x_labelTrainIds.png",
    ]  # fmt: skip  (no temp files left behind)
    with pytest.raises(ValueError, match="uint8"):
        write_label_png(tmp_path / "bad.png", label.astype(np.int32))


def test_readers_return_writable_arrays(tmp_path):
    """Pillow's array interface is read-only; callers (and torch.as_tensor) expect writable arrays."""
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "l.png")
    assert read_image(tmp_path / "i.png").flags.writeable
    assert read_label_ids(tmp_path / "l.png").flags.writeable
    assert read_color_label(tmp_path / "i.png").flags.writeable
