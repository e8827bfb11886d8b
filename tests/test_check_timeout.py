"""symce check never hangs: a time limit per call, the battery stopped after an overrun,
each case's line printed as it finishes, crashes contained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.nn.functional as F

from symce.checker import CheckUsageError, check_implementation, runner
from symce.testing import assert_cross_entropy

GALLERY = Path(__file__).parent / "gallery"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")) if p
)}


def symce_check(*args, timeout=120):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "symce", "check", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)
    return proc, time.monotonic() - start


# -- the command line ---------------------------------------------------------
def test_a_function_that_never_returns_fails_within_seconds():
    proc, took = symce_check(f"{GALLERY}/bad_usage.py:hangs", "--target", "index",
                             "--timeout", "2")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert "  FAIL  basic                 N=4 C=5 float64 |x|<=3, index targets" in lines
    assert "          did not return within the time limit (2 s)" in lines
    assert lines[-1] == ("FAIL: case 'basic' did not return within the time limit (2 s); "
                         "the battery was stopped after 1 of 15 cases")
    assert "PASS" not in proc.stdout and "first failure" not in proc.stdout  # no shrinking
    assert took < 30  # start-up (a few seconds) plus one limit, not 15 of them


def test_the_first_call_that_tells_the_target_kind_is_limited_too():
    proc, took = symce_check(f"{GALLERY}/bad_usage.py:hangs", "--timeout", "2")
    assert proc.returncode == 1
    assert "target index (not told: the first call did not return)" in proc.stdout
    assert proc.stdout.rstrip().endswith("the battery was stopped before the first of 15 cases")
    assert took < 30


def test_case_lines_are_printed_as_they_finish():
    """The third case hangs for a minute: the first two lines must be out long before that."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "symce", "check", f"{GALLERY}/bad_usage.py:hangs_at_one_class",
         "--target", "index", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    seen = []
    try:
        start = time.monotonic()
        for line in proc.stdout:
            seen.append(line.rstrip())
            if line.startswith("  PASS  single row"):
                break
        assert time.monotonic() - start < 45  # well before the 60 s limit of case three
        assert proc.poll() is None  # still waiting on 'single class'
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert seen[0].startswith("symce check") and seen[2].startswith("  PASS  basic")


def _children(pid):
    """The ids of the processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_ends_when_symce_check_is_killed_during_an_endless_call():
    """SIGKILL cannot be caught: the worker, busy in the endless call, must notice alone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "symce", "check", f"{GALLERY}/bad_usage.py:hangs_at_one_class",
         "--target", "index", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV,
    )
    workers = []
    try:
        for line in proc.stdout:
            if line.startswith("  PASS  single row"):
                break
        time.sleep(1.0)  # the third call (C = 1) is sent and spinning
        workers = _children(proc.pid)
        assert workers, "no worker process found"
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
        for w in workers:  # never leave one spinning, even when the test fails
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_a_process_that_dies_fails_its_case_and_the_rest_still_run():
    proc, _ = symce_check(f"{GALLERY}/bad_usage.py:crashes_at_one_class", "--target", "index")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    out = proc.stdout
    assert "  FAIL  single class" in out
    assert "the process running it died (exit status 7)" in out
    assert "PASS  random shape float32" in out  # a fresh worker ran the cases after it
    assert "FAIL: 1 of 15 cases disagree" in out
    assert "the process running it died on 1 case(s) ('single class') instead of raising" in out


def test_an_import_that_never_finishes_is_a_usage_error():
    proc, took = symce_check(f"{GALLERY}/hangs_on_import.py:f", "--timeout", "2")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"symce check: error: importing {GALLERY}/hangs_on_import.py did not finish within "
        "the time limit (2 s, --timeout)"
    )
    assert took < 30


def test_what_the_function_prints_goes_to_stderr_not_into_the_report(tmp_path):
    (tmp_path / "chatty.py").write_text(
        "import torch.nn.functional as F\n"
        "def loss(logits, target):\n"
        "    print('computing', tuple(logits.shape))\n"
        "    return F.cross_entropy(logits, target)\n"
    )
    proc, _ = symce_check(f"{tmp_path}/chatty.py:loss", "--target", "index")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "computing (4, 5)" in proc.stderr and "computing" not in proc.stdout


# -- the Python API -----------------------------------------------------------
def test_a_closure_that_hangs_is_stopped_by_the_limit():
    def closure_hangs(logits, target):  # not importable by path: runs in a forked worker
        if len(target) > 3:
            while True:
                pass
        return F.cross_entropy(logits, target)

    start = time.monotonic()
    report = check_implementation(closure_hangs, target="index", timeout=1)
    assert time.monotonic() - start < 20
    assert not report.passed and report.stopped
    assert [r.case.spec.name for r in report.results] == ["basic"]
    assert "did not return within the time limit (1 s)" in str(report)
    assert report.counterexample is None  # no shrinking after an overrun


def test_the_limit_is_per_call_not_for_the_battery():
    def slow(logits, target):
        time.sleep(0.1)
        return F.cross_entropy(logits, target)

    report = check_implementation(slow, target="index", timeout=0.6)  # 15 calls: 1.5 s in all
    assert report.passed, str(report)


def test_without_fork_a_thread_is_abandoned_and_the_report_says_so(monkeypatch):
    release = threading.Event()

    def waits(logits, target):
        release.wait(60)
        return F.cross_entropy(logits, target)

    monkeypatch.setattr(runner, "fork_is_safe", lambda: False)
    try:
        report = check_implementation(waits, target="index", timeout=0.5)
    finally:
        release.set()  # let the abandoned thread finish
    assert not report.passed and report.stopped
    text = str(report)
    assert "the call was abandoned and may still be running in a thread" in text
    assert "left running in a background thread of this process" in text


def test_timeout_none_calls_in_this_process():
    calls = []

    def counting(logits, target):
        calls.append(logits.shape)
        return F.cross_entropy(logits, target)

    assert check_implementation(counting, target="index", timeout=None).passed
    assert len(calls) == 15  # seen here: no worker process in between


def test_a_forked_worker_runs_the_calls_elsewhere():
    if not runner.fork_is_safe():
        pytest.skip("fork is used on Linux only")
    parent = os.getpid()
    pids = set()

    def where(logits, target):
        pids.add(os.getpid())  # in the worker's copy of this set
        return F.cross_entropy(logits, target)

    assert check_implementation(where, target="index", timeout=30).passed
    assert pids == set() and os.getpid() == parent


def test_a_path_spec_runs_in_a_worker_process():
    report = check_implementation(f"{GALLERY}/correct.py:torch_builtin", timeout=30)
    assert report.passed and report.label.endswith("correct.py:torch_builtin")
    with pytest.raises(CheckUsageError, match="has no attribute 'nothing'"):
        check_implementation(f"{GALLERY}/correct.py:nothing", timeout=30)


def test_assert_cross_entropy_fails_on_a_timeout():
    def hangs(logits, target):
        while True:
            pass

    with pytest.raises(AssertionError, match=r"did not return within the time limit \(1 s\)"):
        assert_cross_entropy(hangs, timeout=1)


def test_ctrl_c_ends_the_check_and_its_worker_in_one_line():
    proc = subprocess.Popen(
        [sys.executable, "-m", "symce", "check", f"{GALLERY}/bad_usage.py:hangs", "--target",
         "index", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
    )
    try:
        assert proc.stdout.readline().startswith("symce check")  # the worker is running
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == "symce check: interrupted\n"  # the worker ignores it: no second traceback
