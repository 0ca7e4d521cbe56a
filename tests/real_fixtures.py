"""Test data locations.

* Real Cityscapes/GTA5 sample files (research-only pixels, never committed here) sit in
  ``../shared/fixtures/real`` beside the checkout, or wherever ``CLUDA_REAL_FIXTURES`` points.
  Tests that need them skip, saying so, when they are absent.
* Key manifests of the released mmseg checkpoints (names and shapes only, no weights) are
  committed under ``tests/fixtures/mmseg_checkpoints`` (copied from shared/fixtures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_FIXTURES = Path(os.environ.get("CLUDA_REAL_FIXTURES", REPO_ROOT.parent / "shared/fixtures/real"))


def real_fixture(name: str) -> Path:
    """Path of one real-fixture folder, or skip the test with the reason."""
    path = REAL_FIXTURES / name
    if not path.exists():
        pytest.skip(
            f"real fixture {name} not found under {REAL_FIXTURES} "
            "(set CLUDA_REAL_FIXTURES to the shared/fixtures/real folder)"
        )
    return path


CHECKPOINT_MANIFESTS = REPO_ROOT / "tests" / "fixtures" / "mmseg_checkpoints"


def checkpoint_manifest(name: str) -> dict:
    """A key manifest of a released checkpoint (tests/fixtures/mmseg_checkpoints/README.md)."""
    return json.loads((CHECKPOINT_MANIFESTS / name).read_text())
