"""Start ``cluda serve`` as a child process and talk to it: for the tests and ``bench/serve.py``.

The child listens on a free loopback port (``--port 0``); the port is read from uvicorn's
start-up line, so there is no race for it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_LISTENING = re.compile(r"Uvicorn running on http://([\d.]+):(\d+)")


class ServerProcess:
    """``cluda serve MODEL ARGS`` in a child process; ``url`` once it listens.

    Needs uvicorn's info-level start-up line: keep ``--log-level`` at info or debug.
    """

    def __init__(self, model: str | Path, args: Sequence[str] = (), env: dict[str, str] | None = None):
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        command = [sys.executable, "-m", "cluda_deploy.cli", "serve", str(model), "--port", "0", *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env,
        )  # fmt: skip
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.url: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and self.url is None:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {self.proc.poll()}):\n{self.log[-3000:]}")
        return self.url

    def wait_ready(self, timeout: float = 120.0, headers: dict | None = None) -> str:
        import httpx

        url = self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready in {timeout} s (exit {self.proc.poll()}):\n{self.log[-3000:]}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the drain and exit; kill only if it hangs. Returns the exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
