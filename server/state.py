"""What one server process knows at run time: settings, engines, batcher, metrics, lifecycle."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fastapi import Request

from server.batcher import MicroBatcher
from server.engines import Engine
from server.metrics import ServerMetrics
from server.settings import ServerSettings


class Status(str, enum.Enum):
    """Lifecycle: loading -> warming_up -> ready -> draining (on SIGTERM); or failed."""

    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    status: Status = Status.LOADING
    error: str | None = None
    engines: list[Engine] = field(default_factory=list)
    batcher: MicroBatcher | None = None
    warmup_sizes: list[tuple[int, int]] = field(default_factory=list)
    in_flight: int = 0  # /v1 requests being handled (what draining waits for)

    @property
    def serving(self) -> bool:
        """Inference is possible: ready, or draining but still finishing work."""
        return self.batcher is not None and self.status in (Status.READY, Status.DRAINING)

    def set_status(self, status: Status, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.metrics.ready.set(1 if status is Status.READY else 0)


def get_state(request: Request) -> ServerState:
    return request.app.state.server
