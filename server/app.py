"""The FastAPI app: ``create_app(settings)``; engines load in the lifespan, not at import.

Start-up returns at once so ``/health/live`` answers while the engines load and warm up in the
background (``/health/ready`` is 503 until then). Shutdown lets queued images finish. SIGTERM
first drains (see :func:`install_drain_handler`), then hands over to uvicorn's own shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cluda_deploy import __version__
from server.batcher import MicroBatcher
from server.engines import load_engine
from server.imaging import promote_decompression_bomb_warning
from server.metrics import ServerMetrics
from server.middleware import BodyLimitMiddleware, MetricsMiddleware
from server.routers import demo, health, metrics, model, segment
from server.settings import ServerSettings
from server.state import ServerState, Status

log = logging.getLogger("cluda.serve")


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The app for ``settings`` (default: read from ``CLUDA_SERVE_*`` environment variables)."""
    settings = settings or ServerSettings()
    state = ServerState(settings=settings, metrics=ServerMetrics())
    app = FastAPI(
        title="cluda-deploy segmentation server", version=__version__, lifespan=_lifespan,
        description="Semantic segmentation of driving images (Cityscapes train ids).",
    )  # fmt: skip
    app.state.server = state
    for router in (health.router, model.router, segment.router, metrics.router, demo.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.request_timeout_s)
    app.add_middleware(MetricsMiddleware, state=state)  # outermost: sees every status code
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers`` > 1: each worker process reads the same environment."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    return create_app()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return JSONResponse({"detail": "bad request parameters: " + "; ".join(parts)}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    state: ServerState = app.state.server
    promote_decompression_bomb_warning()
    loader = asyncio.create_task(load_and_warm(state))
    install_drain_handler(state)
    try:
        yield
    finally:
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        if state.batcher is not None:
            await state.batcher.close(timeout=state.settings.drain_timeout_s)
        for engine in state.engines:
            engine.close()
        log.info("server stopped")


async def load_and_warm(state: ServerState) -> None:
    """Load one engine per device (off the event loop), warm them up, then mark ready."""
    settings = state.settings
    try:
        started = time.perf_counter()
        for device in settings.devices:
            engine = await asyncio.to_thread(
                load_engine, settings.model, device, settings.onnx_providers, settings.engine_cache
            )
            state.engines.append(engine)
        info = state.engines[0].info
        log.info("loaded %s (%s) on %s in %.1f s", info.path.name, info.backend,
                 ", ".join(e.info.device for e in state.engines), time.perf_counter() - started)  # fmt: skip
        batcher = MicroBatcher(state.engines, settings.max_batch, settings.max_wait_ms / 1e3,
                               settings.max_queue, state.metrics)  # fmt: skip
        batcher.start()
        state.batcher = batcher
        state.set_status(Status.WARMING_UP)
        state.warmup_sizes = settings.warmup_shapes() or info.default_warmup_sizes
        started = time.perf_counter()
        await batcher.warmup(state.warmup_sizes, settings.warmup_runs)
        log.info("warmed up at %s (batch 1 and %d) in %.1f s; ready", state.warmup_sizes,
                 batcher.max_batch, time.perf_counter() - started)  # fmt: skip
        if state.status is Status.WARMING_UP:
            state.set_status(Status.READY)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any load failure: report it on /health and in the log
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        state.set_status(Status.FAILED, f"{type(exc).__name__}: {first}")
        log.error("cannot serve %s: %s", settings.model, state.error)


def install_drain_handler(state: ServerState) -> None:
    """On SIGTERM: readiness 503 at once, keep serving, then let uvicorn shut down once idle.

    uvicorn stops accepting connections as soon as it sees SIGTERM. We take the signal first:
    ``/health/ready`` turns 503 (``draining``) so load balancers stop sending traffic, requests
    keep being served for ``drain_grace_s``, and once no /v1 request is in flight and the queue
    is empty (or ``drain_timeout_s`` passed) uvicorn's handler runs. A second signal skips ahead.
    Signals can only be caught in the main thread; elsewhere (tests) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        return

    def hand_over() -> None:
        signal.signal(signal.SIGTERM, uvicorn_handler)
        uvicorn_handler(signal.SIGTERM, None)

    async def drain() -> None:
        settings = state.settings
        state.set_status(Status.DRAINING, "the server is shutting down")
        log.info("SIGTERM: draining (ready -> 503), up to %g s", settings.drain_timeout_s)
        started = time.perf_counter()
        await asyncio.sleep(settings.drain_grace_s)
        while time.perf_counter() - started < settings.drain_timeout_s:
            if state.in_flight == 0 and (state.batcher is None or state.batcher.idle):
                break
            await asyncio.sleep(0.05)
        log.info("drained in %.1f s; shutting down", time.perf_counter() - started)
        hand_over()

    def on_sigterm(signum, frame) -> None:
        if state.status is Status.DRAINING:
            loop.call_soon_threadsafe(hand_over)
        else:
            loop.call_soon_threadsafe(lambda: loop.create_task(drain()))

    signal.signal(signal.SIGTERM, on_sigterm)
