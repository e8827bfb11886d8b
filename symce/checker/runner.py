"""Where the implementation runs: under a time limit, somewhere it can be abandoned.

Every call of the user's function goes through a runner's ``call``, which
returns an :class:`~symce.checker.adapter.Outcome` and never hangs longer than
the limit.  Which runner (:func:`make_runner`):

- ``timeout=None``: :class:`InProcess`, a plain call, no limit (for debuggers).
- ``"PATH.py:NAME"`` (the command line): :class:`SubprocessRunner`.  One
  worker process (:mod:`symce.checker.worker`) imports the file and serves
  every call of the battery; it is killed when a call runs past the limit and
  started again only when a later call needs it (after a crash).  Importing
  the file is under the limit too.  What the function prints goes to stderr.
- a function object (the Python API; it may not be importable by path):
  :class:`ForkRunner` on Linux, a forked worker that inherits the function,
  unless CUDA is already initialised in this process (a forked child cannot
  use it); otherwise :class:`ThreadRunner`, which calls the function in a
  daemon thread and, past the limit, abandons it: the call may still be
  running in the background, and the report says so.

After a call times out the runner is spent: later calls return at once with a
``timeout`` outcome, so a broken function cannot make the checker wait twice.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import queue
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from symce.checker.adapter import CheckUsageError, Outcome, call, load

#: The default limit per call, in seconds (command line and API alike).
DEFAULT_TIMEOUT = 60.0

#: How long a worker may take to start (import numpy and torch) before it counts as broken.
_STARTUP_LIMIT = 300.0


class Runner:
    """Calls the implementation; subclasses decide where."""

    backend: str
    timeout: float | None = None
    abandoned = False  # a call was left running in a thread
    spent = False  # a call timed out: nothing more is run

    def call(
        self, logits: np.ndarray, target: np.ndarray, dtype: str, options: dict[str, Any]
    ) -> Outcome:
        if self.spent:
            return Outcome(
                error="not run: an earlier call did not return within the limit",
                failure="timeout",
            )
        outcome = self._call(logits, target, dtype, options)
        if outcome.timed_out:
            self.spent = True
            self.close()
        return outcome

    def _call(self, logits, target, dtype, options) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever runs the implementation (idempotent)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timed_out(self, what: str = "") -> Outcome:
        text = f"did not return within the time limit ({self.timeout:g} s)"
        return Outcome(error=text + what, failure="timeout")


class InProcess(Runner):
    def __init__(self, fn: Callable[..., Any], backend: str):
        self.fn, self.backend = fn, backend

    def _call(self, logits, target, dtype, options) -> Outcome:
        return call(self.fn, self.backend, logits, target, dtype, options)


class ThreadRunner(Runner):
    """A daemon thread per call; past the limit the thread is left behind, still running."""

    def __init__(self, fn: Callable[..., Any], backend: str, timeout: float):
        self.fn, self.backend, self.timeout = fn, backend, timeout

    def _call(self, logits, target, dtype, options) -> Outcome:
        box: list[Outcome] = []

        def work() -> None:
            box.append(call(self.fn, self.backend, logits, target, dtype, options))

        thread = threading.Thread(target=work, name="symce-check-call", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if box:
            return box[0]
        self.abandoned = True
        return self._timed_out("; the call was abandoned and may still be running in a thread")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it did not say why"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


def _died(code: int | None) -> Outcome:
    return Outcome(
        error=f"the process running it died ({_describe_exit(code)}): a crash, os._exit "
        "or a kill, not an exception",
        failure="died",
    )


# -- a forked worker (function objects, Linux) -------------------------------
def _serve_forked(conn: Any, other_end: Any, fn: Callable[..., Any], backend: str) -> None:
    other_end.close()  # so that the parent's end closing (or the parent dying) ends recv()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends this process
    _end_with_parent()  # and a parent killed outright, even while a call never returns
    _one_thread()
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        conn.send(call(fn, backend, *request))


def _end_with_parent() -> None:
    from symce.checker.worker import end_with_parent

    end_with_parent()


class ForkRunner(Runner):
    """A forked child serves the calls; it inherits the function (nothing is imported)."""

    def __init__(self, fn: Callable[..., Any], backend: str, timeout: float):
        self.fn, self.backend, self.timeout = fn, backend, timeout
        self._process: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve_forked, args=(child, parent, self.fn, self.backend), daemon=True
        )
        with warnings.catch_warnings():  # Python >= 3.12 warns on fork with threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            process.start()
        child.close()
        self._process, self._conn = process, parent

    def _call(self, logits, target, dtype, options) -> Outcome:
        if self._process is None:
            self._start()
        try:
            self._conn.send((logits, target, dtype, options))
            if self._conn.poll(self.timeout):
                return self._conn.recv()
        except (EOFError, OSError):
            return self._lost()
        return self._timed_out()

    def _lost(self) -> Outcome:
        self._process.join(5)
        code = self._process.exitcode
        self.close()
        return _died(code)

    def close(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(Exception):
            self._conn.close()
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)
        self._process = self._conn = None


# -- a worker process that imports PATH.py:NAME (the command line) -----------
class SubprocessRunner(Runner):
    """A worker process (:mod:`symce.checker.worker`) imports the file and serves every call.

    Messages are pickles on the child's stdin and on a copy of its original
    stdout (the child points its own stdout at stderr, so what the function
    prints cannot garble them); a thread here reads the replies so that every
    wait has a deadline, on any platform.
    """

    def __init__(self, spec: str, backend: str, timeout: float):
        self.spec, self.backend, self.timeout = spec, backend, timeout
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self.start()

    def start(self) -> None:
        """Start the worker and import the implementation; ``CheckUsageError`` if that fails."""
        self._process = subprocess.Popen(
            [sys.executable, "-c", WORKER, self.backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._replies = queue.Queue()
        threading.Thread(
            target=self._read, args=(self._process.stdout, self._replies), daemon=True
        ).start()
        ready = self._receive(_STARTUP_LIMIT)
        if ready != ("ready",):
            self.close()
            raise CheckUsageError(f"the worker process for {self.spec} did not start: {ready}")
        self._send(("load", self.spec))
        loaded = self._receive(self.timeout)
        if loaded == ("loaded",):
            return
        self.close()
        if loaded is _TIMEOUT:
            raise CheckUsageError(
                f"importing {self.spec.rpartition(':')[0]} did not finish within the "
                f"time limit ({self.timeout:g} s, --timeout)"
            )
        if isinstance(loaded, tuple) and loaded[0] == "usage":
            raise CheckUsageError(loaded[1])
        raise CheckUsageError(f"the worker process for {self.spec} died while importing it")

    @staticmethod
    def _read(stream: Any, replies: queue.Queue) -> None:
        while True:
            try:
                replies.put(pickle.load(stream))
            except Exception:  # EOF or a torn message: the worker is gone
                replies.put(_EOF)
                return

    def _send(self, message: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        pickle.dump(message, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._process.stdin.flush()

    def _receive(self, timeout: float) -> object:
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            return _TIMEOUT

    def _call(self, logits, target, dtype, options) -> Outcome:
        if self._process is None:
            self.start()  # after a crash: a fresh worker for the next case
        try:
            self._send(("call", logits, target, dtype, options))
        except OSError:
            return self._lost()
        reply = self._receive(self.timeout)
        if reply is _TIMEOUT:
            return self._timed_out()
        if reply is _EOF:
            return self._lost()
        return Outcome(**reply)

    def _lost(self) -> Outcome:
        assert self._process is not None
        try:
            code = self._process.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        return _died(code)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        with contextlib.suppress(OSError):
            process.stdout.close()


_TIMEOUT = object()
_EOF = object()

#: The worker's command line (``python -c WORKER BACKEND``): worker.py run from its file.
WORKER = (
    "import importlib.util, sys\n"
    f"spec = importlib.util.spec_from_file_location('_symce_check_worker', "
    f"{str(Path(__file__).with_name('worker.py'))!r})\n"
    "worker = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(worker)\n"
    "sys.exit(worker.main())\n"
)


def _one_thread() -> None:
    """The battery's tensors are tiny: thread start-up and contention would dominate."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def make_runner(
    implementation: str | Callable[..., Any], backend: str, timeout: float | None
) -> Runner:
    """The runner for ``implementation`` (a ``PATH.py:NAME`` or a callable); see the module doc."""
    if isinstance(implementation, str):
        if timeout is None:
            return InProcess(load(implementation), backend)
        return SubprocessRunner(implementation, backend, timeout)
    if timeout is None:
        return InProcess(implementation, backend)
    if fork_is_safe():
        return ForkRunner(implementation, backend, timeout)
    return ThreadRunner(implementation, backend, timeout)


def fork_is_safe() -> bool:
    """Linux (elsewhere fork is unavailable or unsafe with system frameworks), no CUDA yet.

    Not in a daemonic multiprocessing worker either: those may not have children.
    """
    return (
        sys.platform.startswith("linux")
        and not _cuda_initialised()
        and not multiprocessing.current_process().daemon
    )
