"""Server building blocks in-process: decoding (with real malformed files), RLE, shares, settings,
auth, and the micro-batcher (grouping by size, max batch, max wait, inference off the event loop).

The malformed files built here (``bad_uploads``) are also sent to a real server in
``test_server_http.py``.
"""

from __future__ import annotations

import asyncio
import functools
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from cluda_deploy.labels import cityscapes_label_space
from server import imaging
from server.auth import keys_match
from server.batcher import MicroBatcher, QueueFull
from server.engines.base import EngineInfo, EngineOutput, max_softmax
from server.routers.segment import class_shares
from server.settings import ServerSettings, load_settings, parse_size

# --------------------------------------------------------------------------- files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A hand-written 8-bit grey PNG of zeros; ``rows`` < height writes only that many (tiny IDAT)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    data = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
    data += packer.flush()
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def sixteen_bit_png() -> bytes:
    grey = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    return encode(np.kron(grey, np.ones((8, 8), dtype=np.uint16)))  # mode I;16, 16x16


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def bomb_png() -> bytes:
    """12000 x 12000 zeros: 144 M pixels (over Pillow's 89 M warning limit) in about 140 kB."""
    return grey_png(12000, 12000)


def bad_uploads(max_pixels: int) -> dict[str, tuple[bytes, str, int, str]]:
    """name -> (body, content type, expected status, words the error must contain)."""
    good = encode(rgb_image(40, 60))
    over = int(max_pixels**0.5) + 16
    return {
        "zero-byte body": (b"", "image/png", 422, "zero bytes"),
        "truncated PNG": (good[: len(good) // 2], "image/png", 422, "truncated"),
        "random bytes": (bytes(range(256)) * 8, "image/jpeg", 422, "not a decodable"),
        "GIF sent as PNG": (encode(rgb_image(8, 8), "GIF"), "image/png", 422, "not a decodable"),
        "GIF content type": (encode(rgb_image(8, 8), "GIF"), "image/gif", 415, "Content-Type"),
        "decompression bomb": (bomb_png(), "image/png", 413, "decompression bomb"),
        "huge declared size": (grey_png(100_000, 100_000, rows=1), "image/png", 413, "decompression bomb"),
        "over the pixel cap": (grey_png(over, over, rows=1), "image/png", 413, "over the limit"),
    }


# --------------------------------------------------------------------------- decoding


pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.mark.parametrize("name", list(bad_uploads(1_000_000)))
def test_bad_uploads_are_rejected_with_their_code(name):
    body, content_type, status, words = bad_uploads(1_000_000)[name]
    if status == 415:  # decided on the Content-Type, before decoding: see test_server_http
        assert content_type not in imaging.CONTENT_TYPES
        return
    with pytest.raises(imaging.ImageRejected) as info:
        imaging.decode_image(body, max_pixels=1_000_000)
    assert info.value.status == status
    assert words in info.value.detail and "\n" not in info.value.detail


def test_bomb_warning_fires_even_when_our_cap_is_higher():
    # The bomb (144 M pixels) is under a 200 M cap of ours: Pillow's warning, promoted, stops it.
    with pytest.raises(imaging.ImageRejected, match="decompression bomb") as info:
        imaging.decode_image(bomb_png(), max_pixels=200_000_000)
    assert info.value.status == 413


def test_pixel_cap_is_checked_before_decoding():
    # A 4000x4000 PNG cut in half: decoding it fails as truncated (422); under a lower cap the
    # header alone answers (413), so no pixel was decoded.
    whole = grey_png(4000, 4000)
    body = whole[: len(whole) // 2]
    with pytest.raises(imaging.ImageRejected, match="over the limit") as info:
        imaging.decode_image(body, max_pixels=4000 * 4000 - 1)
    assert info.value.status == 413
    with pytest.raises(imaging.ImageRejected, match="truncated"):
        imaging.decode_image(body, max_pixels=4000 * 4000)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    image = imaging.decode_image(sixteen_bit_png(), max_pixels=10_000)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    # 65535 -> 255, 25700 -> 100, 51400 -> 200 (Pillow's convert('RGB') would clip all to 255)
    assert image[0, 0].tolist() == [0, 0, 0] and image[0, 8].tolist() == [100, 100, 100]
    assert image[8, 0].tolist() == [255, 255, 255] and image[8, 8].tolist() == [200, 200, 200]


def test_cmyk_jpeg_is_converted_to_rgb():
    image = imaging.decode_image(cmyk_jpeg(), max_pixels=10_000)
    assert image.shape == (30, 40, 3)
    red, green, blue = image.reshape(-1, 3).mean(axis=0)
    assert red > 240 and green < 15 and blue < 15  # CMYK (0, 255, 255, 0) is pure red


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode_at_their_size(fmt):
    array = rgb_image(37, 53)
    image = imaging.decode_image(encode(array, fmt, **({"lossless": True} if fmt == "WEBP" else {})), 10_000)
    assert image.shape == (37, 53, 3)
    if fmt != "JPEG":
        np.testing.assert_array_equal(image, array)


def test_palette_and_alpha_modes_become_rgb():
    rgba = np.dstack([rgb_image(5, 7), np.full((5, 7), 7, np.uint8)])
    np.testing.assert_array_equal(imaging.decode_image(encode(rgba), 100), rgba[..., :3])
    pal = Image.fromarray(rgb_image(5, 7)).convert("P")
    buffer = io.BytesIO()
    pal.save(buffer, format="PNG")
    assert imaging.decode_image(buffer.getvalue(), 100).shape == (5, 7, 3)


# --------------------------------------------------------------------------- encoders, shares


def test_rle_encode_hand_worked():
    assert imaging.rle_encode(np.array([[0, 1], [1, 1]], bool)) == [1, 3]
    assert imaging.rle_encode(np.array([[1, 0], [0, 0]], bool)) == [0, 1, 3]
    assert imaging.rle_encode(np.zeros((2, 3), bool)) == [6]
    # column-major: columns (1,0), (1,1), (0,0) -> 1 0 1 1 0 0 -> [0, 1, 1, 2, 2]
    assert imaging.rle_encode(np.array([[1, 1, 0], [0, 1, 0]], bool)) == [0, 1, 1, 2, 2]


def test_confidence_to_uint8_hand_worked():
    conf = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    assert imaging.confidence_to_uint8(conf).tolist() == [[0, 128], [255, 64]]


def test_max_softmax_hand_worked():
    # logits (1, 2, 1, 2): pixel 0 ties -> 0.5; pixel 1: softmax(0, ln 3) = (0.25, 0.75) -> 0.75
    logits = np.array([[[[0.0, 0.0]], [[0.0, np.log(3.0)]]]], np.float32)
    np.testing.assert_allclose(max_softmax(logits), [[[0.5, 0.75]]], rtol=1e-6)


def test_class_shares_counts_confidence_and_rle():
    space = cityscapes_label_space()
    labels = np.array([[0, 0, 13], [0, 255, 13]], np.uint8)
    conf = np.array([[0.5, 0.7, 0.9], [0.6, 0.1, 0.3]], np.float32)
    shares = class_shares(labels, space, conf, rle=True)
    assert [(s.id, s.name, s.pixels) for s in shares] == [(0, "road", 3), (13, "car", 2), (255, "ignore", 1)]
    assert shares[0].share == pytest.approx(0.5) and shares[0].mean_confidence == pytest.approx(0.6)
    assert shares[1].color == [0, 0, 142] and shares[1].rle.counts == [4, 2]
    # road [[1,1,0],[1,0,0]] column-major: 1 1 1 0 0 0 -> [0, 3, 3]
    assert shares[0].rle.size == [2, 3] and shares[0].rle.counts == [0, 3, 3]


# --------------------------------------------------------------------------- settings, auth


def test_settings_from_environment_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUDA_SERVE_MODEL", str(tmp_path / "m.onnx"))
    monkeypatch.setenv("CLUDA_SERVE_DEVICES", "cuda:0, cuda:1")
    monkeypatch.setenv("CLUDA_SERVE_WARMUP_SIZES", "512x1024,256x512")
    monkeypatch.setenv("CLUDA_SERVE_MAX_BATCH", "8")
    settings = load_settings(max_batch=2, port=None)
    assert settings.devices == ["cuda:0", "cuda:1"] and settings.max_batch == 2
    assert settings.warmup_shapes() == [(512, 1024), (256, 512)]
    assert ServerSettings(**{k: v for k, v in settings.model_dump().items()}).port == 8000
    env = settings.to_env()
    assert env["CLUDA_SERVE_DEVICES"] == "cuda:0,cuda:1" and env["CLUDA_SERVE_MAX_BATCH"] == "2"


def test_bad_settings_are_one_line_errors(monkeypatch):
    monkeypatch.delenv("CLUDA_SERVE_MODEL", raising=False)
    with pytest.raises(ValueError, match=r"^no model given: pass MODEL"):
        load_settings()
    with pytest.raises(ValueError, match=r"^--max-batch: Input should be greater than or equal to 1$"):
        load_settings(model="m.pt", max_batch=0)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        load_settings(model="m.pt", warmup_sizes="512by1024")
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("12")


def test_keys_match_is_exact_and_takes_any_text():
    assert keys_match("s3cret", "s3cret")
    assert not keys_match("s3cre", "s3cret") and not keys_match("", "s3cret")
    assert not keys_match("schlüssel", "s3cret")  # non-ASCII does not raise (compare_digest on bytes)


# --------------------------------------------------------------------------- micro-batcher


class RecordingEngine:
    """A real engine over a fixed rule (label = red channel // 16) that records its calls."""

    def __init__(self, delay: float = 0.0, max_batch: int | None = None):
        self.info = EngineInfo(backend="test", path=None, sha256="", label_space=cityscapes_label_space(),
                               device="cpu", max_batch=max_batch)  # fmt: skip
        self.calls: list[tuple[tuple[int, ...], str]] = []
        self.delay = delay

    def infer(self, images: np.ndarray, confidence: bool = False) -> EngineOutput:
        self.calls.append((images.shape, threading.current_thread().name))
        time.sleep(self.delay)
        labels = images[..., 0] // 16
        return EngineOutput(labels, np.full(labels.shape, 0.5, np.float32) if confidence else None)

    def close(self) -> None:
        pass


def _run(coro):
    return asyncio.run(coro)


def test_batcher_groups_by_size_up_to_max_batch_off_the_event_loop():
    engine = RecordingEngine()
    sizes = [(8, 12), (8, 12), (5, 7), (8, 12), (5, 7), (8, 12), (8, 12)]
    images = [rgb_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]

    async def main():
        batcher = MicroBatcher([engine], max_batch=3, max_wait_s=0.2, max_queue=16)
        batcher.start()
        futures = [batcher.submit(image, confidence=i == 2) for i, image in enumerate(images)]
        results = await asyncio.gather(*futures)
        loop_thread = threading.current_thread().name
        await batcher.close(timeout=1)
        return results, loop_thread

    results, loop_thread = _run(main())
    # oldest first: three 8x12, then both 5x7, then the last two 8x12
    assert [shape for shape, _ in engine.calls] == [(3, 8, 12, 3), (2, 5, 7, 3), (2, 8, 12, 3)]
    assert all(thread != loop_thread and thread.startswith("infer-cpu") for _, thread in engine.calls)
    for image, result in zip(images, results, strict=True):
        np.testing.assert_array_equal(result.labels, image[..., 0] // 16)
    assert results[2].confidence is not None and results[0].confidence is None
    assert [r.batch_size for r in results] == [3, 3, 2, 3, 2, 2, 2]


def test_batcher_waits_at_most_max_wait_for_a_full_batch():
    engine = RecordingEngine()

    async def main():
        batcher = MicroBatcher([engine], max_batch=4, max_wait_s=0.15, max_queue=16)
        batcher.start()
        first = batcher.submit(rgb_image(4, 4))
        await asyncio.sleep(0.05)
        second = batcher.submit(rgb_image(4, 4, seed=1))  # joins: still inside the window
        started = time.perf_counter()
        await asyncio.gather(first, second)
        waited = time.perf_counter() - started
        late = await batcher.submit(rgb_image(4, 4, seed=2))  # alone: runs after max_wait
        await batcher.close(timeout=1)
        return waited, late

    waited, late = _run(main())
    assert [shape[0] for shape, _ in engine.calls] == [2, 1]
    assert waited < 1.0 and late.batch_size == 1 and late.queue_s >= 0.14


def test_batcher_queue_full_and_cancelled_jobs_are_skipped():
    engine = RecordingEngine(delay=0.2)

    async def main():
        batcher = MicroBatcher([engine], max_batch=1, max_wait_s=0.0, max_queue=2)
        batcher.start()
        running = batcher.submit(rgb_image(4, 4))
        await asyncio.sleep(0.05)  # the worker took it; the queue is empty again
        queued = [batcher.submit(rgb_image(4, 4, seed=s)) for s in (1, 2)]
        with pytest.raises(QueueFull):
            batcher.submit(rgb_image(4, 4, seed=3))
        queued[0].cancel()  # its request timed out: never inferred
        await asyncio.gather(running, queued[1])
        await batcher.close(timeout=1)

    _run(main())
    assert len(engine.calls) == 2


def test_batcher_respects_the_engine_batch_limit_and_spreads_over_devices():
    engines = [RecordingEngine(delay=0.05, max_batch=2), RecordingEngine(delay=0.05, max_batch=2)]
    for index, engine in enumerate(engines):
        engine.info.device = f"cpu{index}"

    async def main():
        batcher = MicroBatcher(engines, max_batch=8, max_wait_s=0.01, max_queue=32)
        assert batcher.max_batch == 2
        batcher.start()
        await asyncio.gather(*[batcher.submit(rgb_image(6, 6, seed=s)) for s in range(8)])
        await batcher.close(timeout=1)

    _run(main())
    calls = engines[0].calls + engines[1].calls
    assert sum(shape[0] for shape, _ in calls) == 8 and max(shape[0] for shape, _ in calls) <= 2
    assert engines[0].calls and engines[1].calls  # both devices worked


# --------------------------------------------------------------------------- app, in process


def test_a_model_that_cannot_load_turns_live_and_ready_503_with_the_reason(tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    app = create_app(ServerSettings(model=broken, devices=["cpu"]))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/health/live").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        live, ready = client.get("/health/live"), client.get("/health/ready")
        segment = client.post("/v1/segment", content=encode(rgb_image(8, 8)), headers={"Content-Type": "image/png"})
    assert live.status_code == 503 and live.json()["status"] == "failed"
    assert ready.status_code == 503 and "not a readable cluda-deploy checkpoint" in ready.json()["detail"]
    assert segment.status_code == 503 and "not a readable cluda-deploy checkpoint" in segment.json()["detail"]
