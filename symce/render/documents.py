"""Derivation → document: LaTeX, Markdown (GitHub math) or terminal text.

Python computes every string (printed expressions, justifications); the
templates under ``templates/{latex,markdown,text}/`` only lay them out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sympy as sp
from sympy.printing.latex import LatexPrinter

from symce.losses import get_loss
from symce.render.env import header_lines, render

if TYPE_CHECKING:
    from symce.proof import Derivation, Step

FORMATS = {"tex": "latex/derivation.tex.j2", "md": "markdown/derivation.md.j2",
           "txt": "text/derivation.txt.j2"}
EXAMPLE_N = 3


class _DocLatexPrinter(LatexPrinter):
    """SymPy's LaTeX with textbook partial derivatives and plain subscripts."""

    def _print_Derivative(self, expr: sp.Derivative) -> str:
        if len(expr.variables) == 1 and (expr.expr.is_Symbol or isinstance(expr.expr, sp.Indexed)):
            return (rf"\frac{{\partial {self._print(expr.expr)}}}"
                    rf"{{\partial {self._print(expr.variables[0])}}}")
        return super()._print_Derivative(expr)

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        indices = "".join(self._print(i) for i in expr.indices)
        return f"{self._print(expr.base.label)}_{{{indices}}}"


def latex(expr: Any) -> str:
    return _DocLatexPrinter({"mat_delim": "(", "mat_str": "matrix"}).doprint(expr)


def pretty(lhs: Any, rhs: Any) -> str:
    return sp.pretty(sp.Eq(lhs, rhs, evaluate=False), use_unicode=True, wrap_line=False)


_TEXT_MATH = [
    (r"\operatorname{log\_softmax}", "log_softmax"), (r"\|", "‖"), (r"\log", "log"),
    (r"^{T}", "ᵀ"), (r"\operatorname{", ""), ("}", ""), ("{", ""), ("$", ""),
]


def plain(tex: str) -> str:
    """A ``$…$``-carrying justification as plain Unicode for the terminal."""
    for old, new in _TEXT_MATH:
        tex = tex.replace(old, new)
    return re.sub(r"\\([a-zA-Z]+)", r"\1", tex)


def _step_context(number: int, step: Step, derivation: Derivation) -> dict[str, Any]:
    return {
        "number": number,
        "name": step.name,
        "title": step.title,
        "rule": step.rule,
        "rule_text": plain(step.rule),
        "assumptions": [derivation.assumptions[a] for a in step.assumptions],
        "assumptions_text": [plain(derivation.assumptions[a]) for a in step.assumptions],
        "lhs": latex(step.lhs),
        "rhs": latex(step.rhs),
        "text": pretty(step.lhs, step.rhs),
    }


def _example(derivation: Derivation) -> dict[str, Any] | None:
    """The explicit 3-class Jacobian and gradient, entry by entry."""
    if derivation.n is not None:
        return None
    from symce.api import derive

    small = derive(derivation.loss, n=EXAMPLE_N)
    jac = small.step("jacobian")
    entries = [
        {"lhs": latex(jac.lhs[a, b]), "rhs": latex(jac.rhs[a, b]),
         "text": pretty(jac.lhs[a, b], jac.rhs[a, b])}
        for a in range(EXAMPLE_N) for b in range(EXAMPLE_N)
    ]
    grad = small.step("gradient")
    return {
        "n": EXAMPLE_N,
        "entries": entries,
        "jacobian": latex(jac.rhs),
        "jacobian_text": sp.pretty(jac.rhs, use_unicode=True),
        "gradient": latex(grad.rhs),
        "gradient_text": sp.pretty(grad.rhs, use_unicode=True, wrap_line=False),
    }


def render_document(derivation: Derivation, fmt: str) -> str:
    """Render ``derivation`` as ``fmt`` (``tex``, ``md`` or ``txt``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown document format {fmt!r} (choose from {', '.join(FORMATS)})")
    template = FORMATS[fmt]
    n_text = "a symbolic number of classes $n$" if derivation.n is None else f"$n = {derivation.n}$"
    if fmt == "txt":
        n_text = plain(n_text)
    return render(
        template,
        header=header_lines(
            derivation.loss, template, f"symce doc {derivation.loss} --format {fmt}"
        ),
        loss=derivation.loss,
        title=derivation.loss.replace("_", " ").capitalize(),
        notation=get_loss(derivation.loss).notation,
        description=derivation.description,
        n_text=n_text,
        steps=[_step_context(i, s, derivation) for i, s in enumerate(derivation.steps, 1)],
        result=latex(derivation.result),
        result_text=sp.pretty(derivation.result, use_unicode=True, wrap_line=False),
        example=_example(derivation),
    )
