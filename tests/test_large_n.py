"""Large n: a documented limit, refused in one line; matrices abbreviated beyond 8 classes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import symce
from symce.api import MAX_CLASSES
from symce.cli import main
from symce.render.layout import FULL_N

ROOT = Path(__file__).resolve().parent.parent


def test_the_limit_is_at_least_1024_and_documented():
    assert MAX_CLASSES >= 1024
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"{MAX_CLASSES}" in readme and "--n" in readme


@pytest.mark.parametrize("command", ["derive", "doc"])
def test_n_above_the_limit_is_refused_in_one_line(capsys, command):
    assert main([command, "--n", str(MAX_CLASSES + 1)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"symce {command}: error: argument --n: "), lines[0]
    assert f"above the limit of {MAX_CLASSES} classes" in lines[0]


def test_the_limit_itself_is_accepted_by_the_parser():
    from symce.commands._common import class_count

    assert class_count(str(MAX_CLASSES)) == MAX_CLASSES


def test_the_library_refuses_it_too():
    with pytest.raises(ValueError, match=f"limit of {MAX_CLASSES}"):
        symce.derive("cross_entropy", n=MAX_CLASSES + 1)


def test_help_names_the_limit(capsys):
    with pytest.raises(SystemExit):
        main(["derive", "--help"])
    assert f"1 to {MAX_CLASSES}" in capsys.readouterr().out


def test_64_classes_print_abbreviated_in_seconds_and_small():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "symce", "derive", "cross_entropy", "--n", "64"],
                          capture_output=True, timeout=600)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode("utf-8")
    assert len(proc.stdout) < 200_000
    assert max(len(line) for line in out.splitlines()) <= 250
    assert "⋯" in out and "q₁(1 − q₁)" in out and "q₆₄(1 − q₆₄)" in out
    assert "q₃(1 − q₃)" not in out  # the middle of the matrix is not printed
    assert "general entry (symbolic n):" in out and "∂qᵢ/∂xₖ = qᵢ(δᵢₖ − qₖ)" in out
    assert "c₁ + c₂ + ⋯ + c₆₄" in out  # a sum over the classes, first two and last
    assert elapsed < 120  # ~10 s on a 2-core machine; generous for a loaded CI


def test_up_to_eight_classes_everything_is_written_out():
    d = symce.derive("cross_entropy", n=FULL_N)
    out = d.to_text()
    assert "⋯" not in out.split("== Result ==")[0]
    assert f"q₁q{chr(0x2080 + FULL_N)}" in out  # entry (1, n) of the Jacobian, no dots
