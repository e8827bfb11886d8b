"""Progress of long work (deriving, checking, rendering), for a person at a terminal.

Library code says what it is doing with :func:`report` (``"checking step 14/27:
hessian"``); nothing is shown unless someone listens.  The command line
listens with :func:`terminal_progress`: a status line on stderr that appears
only once the work has taken longer than a moment, is rewritten in place and
erased at the end, and only when stderr is a terminal (never in a pipe, a log
or a test's captured output).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

_listener: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "symce_progress", default=None)

#: seconds of work before a status line appears
DELAY = 1.0


def report(message: str) -> None:
    """Say what is being done now (a no-op unless someone listens)."""
    listener = _listener.get()
    if listener is not None:
        listener(message)


@contextlib.contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Send every :func:`report` inside the block to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class _StatusLine:
    """The latest message, drawn on ``stream`` by a timer thread after ``delay`` seconds."""

    def __init__(self, stream: TextIO, prefix: str, delay: float):
        self.stream, self.prefix, self.delay = stream, prefix, delay
        self.message = ""
        self.shown = ""
        self.start = time.monotonic()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="symce-progress", daemon=True)

    def __call__(self, message: str) -> None:
        self.message = message

    def _run(self) -> None:
        if self.done.wait(self.delay):
            return
        while not self.done.is_set():
            self._draw()
            self.done.wait(0.1)

    def _draw(self) -> None:
        with self.lock:
            seconds = time.monotonic() - self.start
            line = f"{self.prefix}{self.message} ({seconds:.0f} s)"[:_columns() - 1]
            if self.message and line != self.shown:  # a new step, or a second later
                self.stream.write("\r\x1b[K" + line)
                self.stream.flush()
                self.shown = line

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        with self.lock:
            if self.shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


@contextlib.contextmanager
def terminal_progress(prefix: str = "", stream: TextIO | None = None,
                      delay: float = DELAY) -> Iterator[None]:
    """Show :func:`report` messages as a status line on ``stream`` (stderr) if it is a TTY."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        yield
        return
    status = _StatusLine(stream, prefix, delay)
    status.thread.start()
    try:
        with listening(status):
            yield
    finally:
        status.close()
