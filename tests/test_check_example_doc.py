"""docs/check_example.md shows real output: rerun its examples and compare."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from symce.cli import main
from symce.testing import assert_gradient_formula

DOC = Path(__file__).parent.parent / "docs" / "check_example.md"


def _block(name: str) -> str:
    """The fenced block that follows ``<!-- check-example: name -->``."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- check-example: {name} -->\n```\w*\n(.*?)```", text, re.S)
    assert found, f"no '{name}' block in {DOC}"
    return found.group(1)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


#: example → (the function in ``my_loss.py``, the command-line options after
#: ``my_loss.py:FUNCTION``, exit status)
EXAMPLES = {
    "buggy": ("cross_entropy", (), 1),
    "fixed": ("cross_entropy", (), 0),
    "options": ("cross_entropy", ("--weight", "random", "--label-smoothing", "0.1"), 1),
    "timeout": ("cross_entropy", ("--target", "index", "--timeout", "2"), 1),
    "focal": ("focal_loss", ("--loss", "focal_loss", "--param", "gamma=0.5"), 0),
    "distillation": ("distillation",
                     ("--loss", "kl_distillation", "--param", "temperature=2"), 1),
}


@pytest.mark.parametrize("which", EXAMPLES)
def test_check_output_in_the_doc_is_current(which, tmp_path, monkeypatch, capsys):
    function, options, code = EXAMPLES[which]
    (tmp_path / "my_loss.py").write_text(_block(f"{which} code"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", f"my_loss.py:{function}", *options]) == code
    assert _lines(capsys.readouterr().out) == _lines(_block(f"{which} output"))


def test_the_doc_shows_the_commands_it_ran():
    text = DOC.read_text(encoding="utf-8")
    for function, options, _ in EXAMPLES.values():
        assert " ".join([f"$ symce check my_loss.py:{function}", *options]) + "\n" in text


def _formula_text() -> str:
    """What the doc's three assert_gradient_formula calls say."""
    shown = []
    for claim, assume in [("q - p", "normalised"), ("q*sum(p) - p", ()), ("q - p", ())]:
        try:
            shown.append(str(assert_gradient_formula(claim, assume=assume)))
        except AssertionError as exc:
            shown.append(f"AssertionError: {exc}")
    return "\n".join(_lines("\n".join(shown))) + "\n"


def test_formula_output_in_the_doc_is_current():
    assert _lines(_formula_text()) == _lines(_block("formula output"))


def _regenerate() -> None:
    """Rewrite the doc's output blocks from today's symce (run this file as a script)."""
    import contextlib
    import io
    import os
    import tempfile

    def replace(text: str, name: str, body: str) -> str:
        found = re.search(rf"<!-- check-example: {name} -->\n```\w*\n(.*?)```", text, re.S)
        return text[: found.start(1)] + body + text[found.end(1) :]

    text = DOC.read_text(encoding="utf-8")
    here = os.getcwd()
    for which, (function, options, _) in EXAMPLES.items():
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "my_loss.py").write_text(_block(f"{which} code"), encoding="utf-8")
            os.chdir(tmp)
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    main(["check", f"my_loss.py:{function}", *options])
            finally:
                os.chdir(here)
        text = replace(text, f"{which} output", "\n".join(_lines(out.getvalue())) + "\n")
    text = replace(text, "formula output", _formula_text())
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    _regenerate()
