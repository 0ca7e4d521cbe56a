"""A real ``cluda serve`` process on a free loopback port, talked to over HTTP with httpx.

Three servers start together (their start-ups overlap): ``main`` (API key, small limits) for the
endpoints, formats, bad input and the demo page in headless Chromium (Debian's ``chromium`` with
Playwright; skipped with the reason where either is missing); ``limits`` (queue of 1, short timeout) for 503/504/408; and
``lifecycle`` for readiness during warm-up and the drain on SIGTERM.
"""

from __future__ import annotations

import base64
import io
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from server.process import ServerProcess
from tests.test_server_engines import make_demo_checkpoint
from tests.test_server_units import bad_uploads, cmyk_jpeg, encode, rgb_image, sixteen_bit_png

pytestmark = pytest.mark.timeout(300)

API_KEY = "test-key-0123"
MAX_PIXELS = 1_000_000
MAX_BODY = 2_000_000
KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    checkpoint = make_demo_checkpoint(tmp_path_factory.mktemp("serve") / "demo.pt")
    started = {
        "main": ServerProcess(checkpoint, [
            "--device", "cpu", "--warmup-size", "40x60", "--max-wait-ms", "20",
            "--max-pixels", str(MAX_PIXELS), "--max-body-bytes", str(MAX_BODY)],
            env={"CLUDA_SERVE_API_KEY": API_KEY}),
        "limits": ServerProcess(checkpoint, [
            "--device", "cpu", "--warmup-size", "32x32", "--max-batch", "1", "--max-queue", "1",
            "--request-timeout-s", "0.3"]),
        "lifecycle": ServerProcess(checkpoint, [
            "--device", "cpu", "--warmup-size", "256x512", "--max-batch", "1"],
            env={"CLUDA_SERVE_DRAIN_GRACE_S": "1.5"}),
    }  # fmt: skip
    started["lifecycle"].readiness = []
    started["lifecycle"].watcher = threading.Thread(target=_watch_readiness, args=(started["lifecycle"],), daemon=True)
    started["lifecycle"].watcher.start()
    yield started
    for server in started.values():
        server.stop()


def _watch_readiness(server: ServerProcess) -> None:
    """Record /health/ready from the moment the server listens until it first says ready."""
    url = server.wait_listening()
    while True:  # segment first: if that is refused, readiness read after it cannot be ahead
        early = httpx.post(f"{url}/v1/segment", content=encode(rgb_image(8, 8)), timeout=30,
                           headers={"Content-Type": "image/png"})  # fmt: skip
        response = httpx.get(f"{url}/health/ready", timeout=30)
        server.readiness.append((response.status_code, response.json()["status"],
                                 response.headers.get("retry-after"), early.status_code))  # fmt: skip
        if response.status_code == 200:
            return
        time.sleep(0.05)


def _raw_exchange(base_url: str, request: bytes) -> str:
    """Send raw bytes, return the response head and body as text (read up to Content-Length)."""
    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or b"EOF"
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:]).get(b"content-length", 0))
        while len(body) < length:
            body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode()


@pytest.fixture(scope="module")
def api(servers):
    url = servers["main"].wait_ready()
    with httpx.Client(base_url=url, headers=KEY, timeout=60) as client:
        yield client


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _post_image(client, image_bytes: bytes, content_type: str = "image/png", **params):
    return client.post("/v1/segment", content=image_bytes, headers={"Content-Type": content_type}, params=params)


# --------------------------------------------------------------------------- endpoints


def test_health_model_metrics_and_demo_page(api):
    assert api.get("/health/live").json() == {"status": "alive"}
    assert api.get("/health/ready").json() == {"status": "ready"}
    model = api.get("/v1/model").json()
    assert model["backend"] == "torch" and model["file"] == "demo.pt" and model["devices"] == ["cpu"]
    assert model["label_space"]["num_classes"] == 19 and model["label_space"]["classes"][0] == {
        "id": 0, "name": "road", "color": [128, 64, 128]}  # fmt: skip
    assert model["warmup_sizes"] == [[40, 60]] and model["max_batch"] == 4
    assert model["provenance"]["preset"] == "demo" and model["limits"]["max_pixels"] == MAX_PIXELS
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/segment" in page.text and "http://" not in page.text and "https://" not in page.text
    assert api.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]["requestBody"]


@pytest.mark.parametrize(("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_label_png_has_the_input_size(api, fmt, content_type):
    response = _post_image(api, encode(rgb_image(77, 131), fmt), content_type)
    assert response.status_code == 200, response.text
    labels = _png_array(response.content)
    assert labels.shape == (77, 131) and labels.dtype == np.uint8 and labels.max() < 19
    assert response.headers["x-image-size"] == "131x77" and "infer;dur=" in response.headers["server-timing"]


def test_overlay_confidence_and_json_agree(api):
    body = encode(rgb_image(50, 70, seed=3))
    labels = _png_array(_post_image(api, body).content)
    overlay = _png_array(_post_image(api, body, format="overlay").content)
    assert overlay.shape == (50, 70, 3)
    confidence = _png_array(_post_image(api, body, confidence="true").content)
    assert confidence.shape == (50, 70) and confidence.min() >= 255 // 19  # max softmax >= 1/19
    result = _post_image(api, body, format="json", rle="true", confidence="true", overlay="true").json()
    assert (result["width"], result["height"]) == (70, 50)
    assert sum(c["pixels"] for c in result["classes"]) == 50 * 70
    assert abs(sum(c["share"] for c in result["classes"]) - 1) < 1e-4
    rebuilt = np.full(50 * 70, 255, np.uint8)  # decode the per-class COCO RLE masks
    for item in result["classes"]:
        assert item["name"] and item["mean_confidence"] > 0
        flat, pos, value = np.zeros(50 * 70, bool), 0, False
        for run in item["rle"]["counts"]:
            flat[pos : pos + run] = value
            pos, value = pos + run, not value
        rebuilt[flat] = item["id"]
    np.testing.assert_array_equal(rebuilt.reshape(70, 50).T, labels)
    np.testing.assert_array_equal(_png_array(base64.b64decode(result["overlay_png"])), overlay)
    np.testing.assert_array_equal(_png_array(base64.b64decode(result["confidence_png"])), confidence)
    assert set(result["timing"]) == {"decode_ms", "queue_ms", "infer_ms", "encode_ms", "total_ms", "batch_size"}


def test_multipart_upload_and_batch(api):
    a, b = encode(rgb_image(30, 40, seed=1)), encode(rgb_image(45, 20, seed=2), "JPEG")
    single = api.post("/v1/segment", files={"image": ("a.png", a, "image/png")})
    assert single.status_code == 200
    files = [("images", ("a.png", a, "image/png")), ("images", ("b.jpg", b, "image/jpeg"))]
    batch = api.post("/v1/segment/batch", files=files, params={"format": "png"})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [(r["filename"], r["width"], r["height"]) for r in results] == [("a.png", 40, 30), ("b.jpg", 20, 45)]
    np.testing.assert_array_equal(_png_array(base64.b64decode(results[0]["label_png"])), _png_array(single.content))
    too_many = [("images", (f"{i}.png", a, "image/png")) for i in range(17)]
    response = api.post("/v1/segment/batch", files=too_many)
    assert response.status_code == 413 and "limit is 16" in response.json()["detail"]
    two = api.post("/v1/segment", files=files)
    assert two.status_code == 422 and "/v1/segment/batch" in two.json()["detail"]


def test_concurrent_mixed_sizes_equal_single_results(api):
    sizes = [(33, 47), (60, 40), (33, 47), (25, 25)] * 3
    bodies = [encode(rgb_image(h, w, seed=i % 4)) for i, (h, w) in enumerate(sizes)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: _post_image(api, body), bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for i, response in enumerate(responses):
        assert _png_array(response.content).shape == sizes[i]
        np.testing.assert_array_equal(_png_array(response.content), _png_array(responses[i % 4].content))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")
def test_demo_page_in_headless_chromium_uploads_and_shows_the_overlay(api, servers, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    image = np.zeros((90, 160, 3), np.uint8)
    image[:45], image[45:] = (70, 130, 180), (128, 64, 128)  # "sky" over "road"
    upload = tmp_path / "frame.png"
    upload.write_bytes(encode(image))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(str(api.base_url) + "/")
        page.locator("#model", has_text="needs an API key").wait_for()  # the page's CSP forbids eval
        page.fill("#key", API_KEY)
        page.dispatch_event("#key", "change")
        page.locator("#model", has_text="demo.pt").wait_for()
        page.set_input_files("#file", str(upload))
        page.locator("body[data-done='1']").wait_for(timeout=60_000)
        overlay = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight]")
        shown = page.eval_on_selector("#input", "img => [img.naturalWidth, img.naturalHeight]")
        legend = page.eval_on_selector_all("#legend li", "items => items.map(li => li.textContent)")
        status = page.text_content("#status")
        browser.close()
    assert overlay == shown == [160, 90]  # the overlay beside the input, at its size
    assert legend and all("%" in item for item in legend)
    assert "round trip" in status and "inference" in status and "160×90" in status
    assert not errors, errors
    assert any('"POST /v1/segment?format=json&overlay=true' in line for line in servers["main"].lines)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", list(bad_uploads(MAX_PIXELS)))
def test_bad_uploads_get_their_code_over_http(api, name):
    body, content_type, status, words = bad_uploads(MAX_PIXELS)[name]
    response = _post_image(api, body, content_type)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_sixteen_bit_and_cmyk_images_are_served(api):
    assert _png_array(_post_image(api, sixteen_bit_png()).content).shape == (16, 16)
    assert _png_array(_post_image(api, cmyk_jpeg(), "image/jpeg").content).shape == (30, 40)


def test_wrong_types_params_and_parts_are_4xx(api):
    png = encode(rgb_image(8, 8))
    assert _post_image(api, png, "application/octet-stream").status_code == 415
    assert api.post("/v1/segment", files={"image": ("a.txt", b"hello", "text/plain")}).status_code == 415
    assert api.post("/v1/segment", files={"note": (None, "no file")}).status_code == 422
    for params in ({"format": "bogus"}, {"alpha": "2"}, {"format": "overlay", "confidence": "true"}):
        response = _post_image(api, png, **params)
        assert response.status_code == 422 and response.json()["detail"], params
    assert api.post("/v1/segment/batch", content=png, headers={"Content-Type": "image/png"}).status_code == 415


def test_body_cap_on_declared_and_streamed_bytes(api):
    reply = _raw_exchange(str(api.base_url), (  # declares 100 GB, sends nothing
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-API-Key: "
        + API_KEY.encode() + b"\r\nContent-Length: 100000000000\r\n\r\n"))  # fmt: skip
    assert reply.startswith("HTTP/1.1 413") and "over the limit of 2000000" in reply

    def chunks():  # no Content-Length: the cap must count the streamed bytes
        for _ in range(24):
            yield b"\0" * 100_000

    response = api.post("/v1/segment", content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]


def test_api_key_is_required_on_v1_only(api):
    url = str(api.base_url)
    png = encode(rgb_image(8, 8))
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(f"{url}/v1/segment", content=png, headers={"Content-Type": "image/png", **headers})
        assert response.status_code == 401 and "API key" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/model").status_code == 401
    bearer = {"Authorization": f"Bearer {API_KEY}".encode(), "Content-Type": "image/png"}
    assert httpx.post(f"{url}/v1/segment", content=png, headers=bearer).status_code == 200
    for path in ("/health/live", "/health/ready", "/metrics", "/"):
        assert httpx.get(url + path).status_code == 200


def test_metrics_count_requests_stages_and_batches(api):
    _post_image(api, encode(rgb_image(20, 20)))
    _post_image(api, b"")
    text = api.get("/metrics").text
    assert 'cluda_http_requests_total{method="POST",route="/v1/segment",status="200"}' in text
    assert 'cluda_http_requests_total{method="POST",route="/v1/segment",status="422"}' in text
    for stage in ("decode", "queue", "infer", "encode"):
        assert f'cluda_stage_duration_seconds_count{{stage="{stage}"}}' in text
    for name in ("cluda_queue_depth", "cluda_batch_size_bucket", "cluda_batch_inference_seconds_sum",
                 "cluda_http_request_duration_seconds_bucket", "cluda_ready 1.0"):  # fmt: skip
        assert name in text


# --------------------------------------------------------------------------- limits server


def test_queue_full_is_503_with_retry_after_and_slow_inference_504(servers):
    url = servers["limits"].wait_ready()
    flat = encode(np.full((512, 1024, 3), 90, np.uint8))  # ~1 s of inference, a tiny PNG
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _post_image(client, flat), range(8)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {503, 504} and 503 in codes and 504 in codes, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
        assert "within 0.3 s" in next(r for r in responses if r.status_code == 504).json()["detail"]
        assert client.get("/health/live").status_code == 200  # still up


def test_slow_upload_is_408(servers):
    reply = _raw_exchange(servers["limits"].wait_ready(), (
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000\r\n\r\n\x89PNG"))  # and then nothing more  # fmt: skip
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 0.3 s" in reply


# --------------------------------------------------------------------------- lifecycle server


def test_ready_only_after_warmup_and_drain_on_sigterm(servers):
    server = servers["lifecycle"]
    url = server.wait_ready()
    server.watcher.join(60)
    seen = server.readiness  # recorded from the first moment it listened (see _watch_readiness)
    assert seen[-1][:2] == (200, "ready") and len(seen) >= 2, seen
    for status, state, retry_after, segment_status in seen[:-1]:
        assert (status, retry_after, segment_status) == (503, "1", 503) and state in ("loading", "warming_up")
    assert httpx.get(f"{url}/health/live").status_code == 200

    body = encode(np.full((256, 512, 3), 60, np.uint8))
    in_flight = []
    worker = threading.Thread(target=lambda: in_flight.append(_post_image(httpx.Client(base_url=url, timeout=60), body)))
    worker.start()
    time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    draining = httpx.get(f"{url}/health/ready", timeout=10)
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    late = _post_image(httpx.Client(base_url=url, timeout=60), body)  # still served while draining
    assert late.status_code == 200
    worker.join(60)
    assert in_flight and in_flight[0].status_code == 200
    code = server.proc.wait(30)
    assert code in (0, -signal.SIGTERM), server.log[-2000:]
    assert "draining" in server.log and "drained in" in server.log and "server stopped" in server.log
