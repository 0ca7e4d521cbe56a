"""Run the server with uvicorn: ``run_server(settings)`` (what ``cluda serve`` calls)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from server.settings import ServerSettings

# uvicorn's own grace for open connections after our drain (research/deploy.md 5.9).
GRACEFUL_SHUTDOWN_S = 10


def check_model(settings: ServerSettings) -> str:
    """Fail fast (before uvicorn starts) on a missing or unknown model file; returns the backend."""
    from server.engines import backend_for
    from server.engines.sidecar import read_model_sidecar

    backend = backend_for(settings.model)
    if backend != "torch":
        read_model_sidecar(settings.model)
    return backend


def run_server(settings: ServerSettings) -> None:
    """Serve ``settings.model`` until SIGTERM/SIGINT; one process, or ``settings.workers`` of them."""
    import uvicorn

    check_model(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(message)s")
    common = dict(
        host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, proxy_headers=False, server_header=False,
        access_log=settings.access_log,
    )  # fmt: skip
    if settings.workers == 1:
        from server.app import create_app

        uvicorn.run(create_app(settings), **common)
        return
    # Worker processes rebuild the settings from the environment; metrics are merged on disk.
    os.environ.update(settings.to_env())
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="cluda-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        uvicorn.run("server.app:create_app_from_env", factory=True, workers=settings.workers, **common)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
