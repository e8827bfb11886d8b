"""``symce check`` on the command line: exit codes and clear messages, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from symce.cli import main

GALLERY = Path(__file__).parent / "gallery"


def _run(capsys, *argv):
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_correct_implementation_exits_0(capsys):
    code, out, _ = _run(capsys, f"{GALLERY}/correct.py:torch_builtin")
    assert code == 0
    assert "PASS: all 15 cases agree" in out and "FAIL" not in out


def test_options_are_passed_through(capsys):
    code, out, _ = _run(
        capsys,
        f"{GALLERY}/correct.py:numpy_probs_with_grad",
        "--backend",
        "numpy",
        "--target",
        "probs",
        "--reduction",
        "sum",
    )
    assert code == 0
    assert "backend numpy, target probs, reduction sum" in out


def test_buggy_implementation_exits_1_with_counterexample_and_diagnosis(capsys):
    code, out, _ = _run(capsys, f"{GALLERY}/buggy.py:eps_in_log")
    assert code == 1
    assert "first failure:" in out and "logits (float64):" in out
    assert "diagnosis:" in out and "inside the log" in out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.py:f", "no such file"),
        ("bad_usage.py:nothing", "has no attribute 'nothing'"),
        ("bad_usage.py:NOT_CALLABLE", "is not callable"),
        ("bad_usage.py:NeedsArguments", "could not instantiate NeedsArguments"),
        ("broken_import.py:f", "importing"),
        ("bad_usage.py", "expected PATH.py:NAME"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, spec, message):
    code, out, err = _run(capsys, f"{GALLERY}/{spec}")
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_option_is_a_usage_error(capsys):
    code, _, err = _run(capsys, f"{GALLERY}/correct.py:torch_builtin", "--reduction", "avg")
    assert code == 2 and "invalid choice" in err


def test_function_that_raises_is_reported_not_traced(capsys):
    code, out, _ = _run(capsys, f"{GALLERY}/bad_usage.py:raises", "--target", "index")
    assert code == 1
    assert "raised NotImplementedError: TODO: write the loss" in out
    assert "it raised on every case (the same error each time)" in out


def test_sys_exit_inside_the_implementation_is_a_failure(capsys):
    code, out, _ = _run(capsys, f"{GALLERY}/bad_usage.py:exits", "--target", "index")
    assert code == 1 and "raised SystemExit: 3" in out


def test_raising_with_every_target_kind_is_said(capsys):
    code, out, _ = _run(capsys, f"{GALLERY}/bad_usage.py:raises")
    assert code == 1 and "it raised with class-index and with probability targets" in out


def test_wrong_shape_is_reported(capsys):
    code, out, _ = _run(capsys, f"{GALLERY}/bad_usage.py:wrong_shape")
    assert code == 1
    assert "loss has shape [4, 5], expected []" in out


def test_python_m_symce_check_and_help():
    done = subprocess.run(
        [sys.executable, "-m", "symce", "check", f"{GALLERY}/buggy.py:sum_not_mean"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "are N times the reference" in done.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "symce", "--help"], capture_output=True, text=True, timeout=120
    )
    assert "check" in helped.stdout and "your own loss implementation" in helped.stdout
