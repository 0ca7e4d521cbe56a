"""``GET /``: the demo page (one self-contained HTML file, no external assets)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["demo"])


@lru_cache(maxsize=1)
def _page() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def demo_page() -> HTMLResponse:
    return HTMLResponse(_page(), headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
    })  # fmt: skip
