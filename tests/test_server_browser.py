"""The demo page in headless Chromium (Debian's ``chromium`` + Playwright): upload, see the overlay.

Skipped, with the reason, where Chromium or Playwright is not installed
(``apt-get install -y chromium`` and ``pip install playwright``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from server.process import ServerProcess
from tests.test_server_engines import make_demo_checkpoint
from tests.test_server_units import encode

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)"),
]


def test_demo_page_uploads_an_image_and_shows_the_overlay(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    checkpoint = make_demo_checkpoint(tmp_path / "demo.pt")
    image = np.zeros((90, 160, 3), np.uint8)
    image[:45] = (70, 130, 180)  # two flat halves: a tiny "sky" over a "road"
    image[45:] = (128, 64, 128)
    upload = tmp_path / "frame.png"
    upload.write_bytes(encode(image))
    server = ServerProcess(checkpoint, ["--device", "cpu", "--warmup-size", "90x160"])
    try:
        url = server.wait_ready()
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda request: errors.append(request.url))
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('demo.pt')")
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("body[data-done='1']", timeout=60_000)
            size = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight]")
            legend = page.eval_on_selector_all("#legend li", "items => items.map(li => li.textContent)")
            status = page.text_content("#status")
            input_size = page.eval_on_selector("#input", "img => [img.naturalWidth, img.naturalHeight]")
            browser.close()
    finally:
        server.stop()
    assert size == [160, 90] and input_size == [160, 90]  # overlay beside the input, same size
    assert legend and all("%" in item for item in legend)
    assert "round trip" in status and "inference" in status and "160×90" in status
    assert not errors, errors
    assert any('"POST /v1/segment?format=json&overlay=true' in line for line in server.lines)
