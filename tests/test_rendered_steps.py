"""Every rendered step of every loss, in every format, against its golden file.

Golden files live in ``tests/cases/steps/<loss>[_n<N>]/<step>.<tex|md|txt>``: the
equations one step shows (what ``symce.render.documents.render_step`` returns),
for the symbolic derivation of each registered loss, for 3 classes (matrices
written out) and for 12 (abbreviated: corner entries and ``⋯``).  Set
``SYMCE_UPDATE_GOLDEN=1`` to rewrite them after an intended change, and read the
diff.
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

import pytest

import symce
from symce.losses import list_losses
from symce.render.documents import FORMATS, render_step

CASES_DIR = Path(__file__).parent / "cases" / "steps"

#: (loss, n) whose every step has golden files; concrete n only for cross_entropy,
#: whose 3- and 12-class derivations take a second (focal_loss's take minutes)
DERIVATIONS = [(loss, None) for loss in list_losses()] + [("cross_entropy", 3),
                                                         ("cross_entropy", 12)]


@functools.cache
def _derivation(loss: str, n: int | None):
    return symce.derive(loss, n=n)


def _folder(loss: str, n: int | None) -> Path:
    return CASES_DIR / (loss if n is None else f"{loss}_n{n}")


def _cases():
    for loss, n in DERIVATIONS:
        names = [p.stem for p in sorted(_folder(loss, n).glob("*.txt"))]
        if os.environ.get("SYMCE_UPDATE_GOLDEN"):
            names = [s.name for s in _derivation(loss, n).steps]
        for name in names:
            for fmt in FORMATS:
                yield pytest.param(loss, n, name, fmt, id=f"{_folder(loss, n).name}-{name}-{fmt}")


@pytest.mark.parametrize(("loss", "n", "step", "fmt"), list(_cases()))
def test_rendered_step_matches_its_golden_file(loss, n, step, fmt):
    derivation = _derivation(loss, n)
    got = render_step(derivation.step(step), derivation, fmt) + "\n"
    path = _folder(loss, n) / f"{step}.{fmt}"
    if os.environ.get("SYMCE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
    want = path.read_text(encoding="utf-8")
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            str(path), "rendered now"))
        pytest.fail(f"{path.name} differs (SYMCE_UPDATE_GOLDEN=1 rewrites it):\n{diff}")


def test_every_step_has_a_golden_file():
    for loss, n in DERIVATIONS:
        names = {s.name for s in _derivation(loss, n).steps}
        for fmt in FORMATS:
            found = {p.stem for p in _folder(loss, n).glob(f"*.{fmt}")}
            assert found == names, (loss, n, fmt, sorted(names ^ found))
