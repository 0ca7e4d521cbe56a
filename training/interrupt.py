"""Ctrl-C handling for the loop: the first SIGINT asks for a stop at the end of the current
iteration (so the saved checkpoint resumes exactly); a second one interrupts at once."""

from __future__ import annotations

import signal
import threading

from tqdm import tqdm


class StopRequest:
    """Context manager installing the SIGINT handler (main thread only); ``requested`` is the flag."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: saving a checkpoint after this iteration (press again to stop at once)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
