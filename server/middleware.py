"""Pure ASGI middleware: request metrics and in-flight count; the streamed body-size cap.

The body cap counts bytes as they arrive (research/deploy.md 5.5: never trust Content-Length
alone), answers 413 before reading anything when Content-Length already says too much, and
answers 408 when the body does not arrive within the request timeout.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.state import ServerState


async def send_json(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"), *(headers or [])],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 past ``max_bytes`` of request body (declared or streamed); 408 past ``timeout_s``."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def _too_large(self, size: int | str) -> str:
        return (f"request body of {size} bytes is over the limit of {self.max_bytes}; send a smaller "
                "image (or start the server with a larger --max-body-bytes)")  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await send_json(send, 400, "Content-Length is not a number")
            if length > self.max_bytes:
                return await send_json(send, 413, self._too_large(length))
        received = 0
        deadline = time.perf_counter() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received
            remaining = deadline - time.perf_counter()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large(f"more than {self.max_bytes}"),
                                        headers={"Connection": "close"})  # fmt: skip
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Counts every request by route template and status, times it, tracks /v1 requests in flight."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics, state = self.state.metrics, self.state
        counted = scope["path"].startswith("/v1/")
        status = 500
        start = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_flight.inc()
        state.in_flight += counted
        try:
            await self.app(scope, receive, recording_send)
        finally:
            state.in_flight -= counted
            metrics.in_flight.dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            metrics.requests.labels(route=name, method=scope["method"], status=str(status)).inc()
            metrics.request_seconds.labels(route=name).observe(time.perf_counter() - start)
