"""A check run in a forked child, for the tests of fork safety."""

from __future__ import annotations

import os
import time
import warnings


def passes_in_forked_child(check, timeout: float = 60.0) -> bool:
    """Fork, run ``check()`` in the child; whether it returned true.

    The child exits at once (no test teardown runs twice); an exception there
    counts as False.  A child still running after ``timeout`` seconds is
    killed and raises AssertionError: a hang is the failure these tests look
    for, and it must not hang the suite.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = bool(check())
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child hung for {timeout:g} s")
        time.sleep(0.05)
