"""Progress on a terminal: step names on stderr while long work runs; never in a pipe."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

from symce import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_step_being_worked_on_and_then_a_clean_line():
    stream = _Terminal()
    with progress.terminal_progress("symce derive: ", stream=stream, delay=0.0):
        progress.report("checking step 14/27: hessian")
        time.sleep(0.35)
    out = stream.getvalue()
    assert "\r\x1b[Ksymce derive: checking step 14/27: hessian (0 s)" in out
    assert out.endswith("\r\x1b[K")  # erased: what follows starts on a clean line


def test_quick_work_shows_nothing():
    stream = _Terminal()
    with progress.terminal_progress(stream=stream, delay=5.0):
        progress.report("checking step 1/27: softmax")
    assert stream.getvalue() == ""


def test_not_a_terminal_gets_nothing():
    stream = io.StringIO()  # a pipe, a log file, a test's captured stderr
    with progress.terminal_progress(stream=stream, delay=0.0):
        progress.report("checking step 1/27: softmax")
        time.sleep(0.25)
    assert stream.getvalue() == ""


def test_report_without_a_listener_does_nothing():
    progress.report("nobody listens")  # no error, no output


def _symce(args, stderr_tty: bool):
    """Run symce with stderr on a pseudo-terminal (or a pipe); return its stderr bytes."""
    env = {**os.environ, "COLUMNS": "120"}
    if not stderr_tty:
        proc = subprocess.run([sys.executable, "-m", "symce", *args], capture_output=True,
                              env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "symce", *args], stdout=subprocess.DEVNULL,
                            stderr=slave, env=env)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0, seen
    return seen


def test_symce_derive_shows_progress_on_a_terminal():
    # the symbolic focal loss takes seconds: longer than the status line's delay
    seen = _symce(["derive", "focal_loss"], stderr_tty=True)
    assert b"\x1b[Ksymce derive: " in seen
    assert b"checking step" in seen or b"deriving" in seen
    assert b"steps checked in" in seen  # the closing summary, on a clean line


def test_symce_derive_shows_no_progress_in_a_pipe():
    err = _symce(["derive", "focal_loss"], stderr_tty=False)
    assert b"\r" not in err and b"\x1b[" not in err
    assert b"steps checked in" in err
