"""LaTeX for the documents: SymPy's printer in a textbook's order and notation.

``\\log q_j`` (no parentheses around a symbol), ``e^{x_j - m}``, ``\\ell``,
``\\partial L / \\partial x_k``, ``−\\sum_j c_j \\log q_j``; term and factor
order from :mod:`symce.render.order`.  :meth:`TexPrinter.pieces` gives the
places where a long expression may be broken across lines.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE, precedence_traditional

from symce.render.order import (
    DDOTS,
    HDOTS,
    VDOTS,
    SignedTerms,
    breakable,
    display_form,
    ordered_terms,
    split_product,
)

_MARKERS = {HDOTS: r"\cdots", VDOTS: r"\vdots", DDOTS: r"\ddots"}
_NAMES = {"ell": r"\ell", "ell_t": r"\ell_{t}"}


class TexPrinter(SignedTerms, LatexPrinter):
    """LaTeX in conventional order; ``runs``: abbreviate class families of that size."""

    def __init__(self, params: frozenset[sp.Symbol] = frozenset(), runs: int | None = None,
                 short_fractions: bool = False):
        super().__init__({"mat_delim": "(", "mat_str": "matrix",
                          "fold_short_frac": short_fractions})
        self.params = params
        self.runs = runs

    # -- atoms ------------------------------------------------------------------
    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        if expr in _MARKERS:
            return _MARKERS[expr]
        if expr.name in _NAMES:
            return _NAMES[expr.name]
        return super()._print_Symbol(expr, style=style)

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        indices = "".join(self._print(i) for i in expr.indices)
        return f"{self._print(expr.base.label)}_{{{indices}}}"

    def _print_KroneckerDelta(self, expr, exp=None) -> str:
        tex = r"\delta_{" + "".join(self._print(a) for a in expr.args) + "}"
        return f"{tex}^{{{exp}}}" if exp else tex

    def _print_UnevaluatedExpr(self, expr: sp.UnevaluatedExpr) -> str:
        return self._print(expr.args[0])

    # -- functions --------------------------------------------------------------
    def _print_log(self, expr: sp.log, exp: str | None = None) -> str:
        arg = expr.args[0]
        if isinstance(arg, (sp.Symbol, sp.Indexed, sp.Sum)):
            inner = self._print(arg)
            return rf"\log^{{{exp}}} {inner}" if exp else rf"\log {inner}"
        inner = self._print(arg)
        return rf"\log^{{{exp}}}\left({inner}\right)" if exp else rf"\log\left({inner}\right)"

    def _print_exp(self, expr: sp.exp, exp: str | None = None) -> str:
        power = TexPrinter(self.params, self.runs, short_fractions=True)._print(expr.args[0])
        tex = f"e^{{{power}}}"
        return rf"\left({tex}\right)^{{{exp}}}" if exp else tex

    def _print_tanh(self, expr: sp.tanh, exp: str | None = None) -> str:
        inner = TexPrinter(self.params, self.runs, short_fractions=True)._print(expr.args[0])
        tex = rf"\tanh\left({inner}\right)"
        return rf"\tanh^{{{exp}}}\left({inner}\right)" if exp else tex

    def _derivative_head(self, expr: sp.Derivative) -> str:
        variables = expr.variables
        top = f"\\partial^{{{len(variables)}}}" if len(variables) > 1 else r"\partial"
        bottom = " ".join(rf"\partial {self._print(v)}" for v in variables)
        return rf"\frac{{{top}}}{{{bottom}}}"

    def _print_Derivative(self, expr: sp.Derivative) -> str:
        variables = expr.variables
        top = f"\\partial^{{{len(variables)}}}" if len(variables) > 1 else r"\partial"
        bottom = " ".join(rf"\partial {self._print(v)}" for v in variables)
        inner = expr.expr
        if isinstance(inner, (sp.Symbol, sp.Indexed)):
            if self._settings["fold_short_frac"]:  # in a matrix: ∂q_1/∂x_1
                return rf"{top} {self._print(inner)} / {bottom}"
            return rf"\frac{{{top} {self._print(inner)}}}{{{bottom}}}"
        body = self._print(inner)
        if inner.is_Add or inner.is_Mul or isinstance(inner, sp.Sum):
            body = rf"\left({body}\right)"
        return rf"\frac{{{top}}}{{{bottom}}} {body}"

    def _sum_head(self, idx, lo, hi) -> str:
        return rf"\sum_{{{self._print(idx)}={self._print(lo)}}}^{{{self._print(hi)}}}"

    def _print_Sum(self, expr: sp.Sum) -> str:
        if len(expr.limits) != 1:
            return super()._print_Sum(expr)
        (idx, lo, hi), = expr.limits
        head = self._sum_head(idx, lo, hi) + " "
        body = expr.function
        text = self._print(body)
        if body.is_Add:
            text = rf"\left({text}\right)"
        return head + text

    # -- sums and products ------------------------------------------------------
    def _as_ordered_terms(self, expr, order=None):
        return ordered_terms(expr)

    def bracketed(self, text: str) -> str:
        return rf"\left({text}\right)"

    def _needs_mul_brackets(self, expr, first=False, last=False) -> bool:
        if isinstance(expr, sp.UnevaluatedExpr):
            inner = expr.args[0]
            fraction = inner.is_Mul and bool(split_product(inner, self.params).denominator)
            return bool(inner.is_Add or inner.could_extract_minus_sign()
                        or (fraction and not last))
        if expr.is_Mul:
            return not first and expr.could_extract_minus_sign()
        if precedence_traditional(expr) < PRECEDENCE["Mul"]:
            return True
        if not last and isinstance(expr, (sp.Sum, sp.Derivative)):
            return True
        if not last and any(isinstance(a, sp.Sum) for a in sp.preorder_traversal(expr)):
            return not isinstance(expr, sp.Function)
        return False

    def _factors(self, factors: tuple[sp.Expr, ...]) -> str:
        out = []
        for i, f in enumerate(factors):
            text = self._print(f)
            if isinstance(f, sp.log) and isinstance(f.args[0], sp.Sum) and i < len(factors) - 1:
                text = rf"\left({text}\right)"
            elif self._needs_mul_brackets(f, first=(i == 0), last=(i == len(factors) - 1)):
                text = rf"\left({text}\right)"
            out.append(text)
        return " ".join(out)

    def _print_Mul(self, expr: sp.Expr) -> str:
        product = split_product(expr, self.params)
        numerator = self._factors(product.numerator) if product.numerator else "1"
        if product.denominator:
            denominator = self._factors(product.denominator)
            if len(product.denominator) == 1 and product.denominator[0].is_Add:
                denominator = self._print(product.denominator[0])  # the bar groups it
            if len(product.numerator) == 1 and product.numerator[0].is_Add:
                numerator = self._print(product.numerator[0])
            tex = rf"\frac{{{numerator}}}{{{denominator}}}"
            if self._settings["fold_short_frac"]:
                tex = f"{_bracketed(numerator, product.numerator)} / " \
                      f"{_bracketed(denominator, product.denominator)}"
        else:
            tex = numerator
        return f"- {tex}" if product.negative else tex

    def _print_Pow(self, expr: sp.Pow) -> str:
        if expr.exp.is_number and expr.exp.is_negative:
            return self._print_Mul(expr)
        return super()._print_Pow(expr)

    # -- breaking long expressions ------------------------------------------------
    OPEN, CLOSE = r"\biggl(", r"\biggr)"

    def pieces(self, expr: sp.Expr) -> list[str]:
        """``expr`` printed in pieces that may each start a new line (joined: the whole)."""
        return breakable(self, expr)


def _bracketed(text: str, factors: tuple[sp.Expr, ...]) -> str:
    inner = [f.args[0] if isinstance(f, sp.UnevaluatedExpr) else f for f in factors]
    if len(factors) > 1 or any(f.is_Add or f.is_Mul for f in inner):
        return rf"\left({text}\right)"
    return text


# -- how wide a piece of LaTeX is ---------------------------------------------------
_WIDE = {r"\sum": 2.0, r"\log": 2.2, r"\tanh": 3.0, r"\cdots": 2.0, r"\ell": 0.6,
         r"\partial": 1.0, r"\quad": 2.0, r"\qquad": 4.0, r"\operatorname": 0.0}
_ZERO = {r"\left", r"\right", r"\Bigl", r"\Bigr", r"\bigl", r"\bigr", r"\biggl",
         r"\biggr", r"\,", r"\;",
         r"\!", r"\phantom"}


def _token(tex: str, i: int) -> tuple[str, int]:
    """The group or token at ``i`` (braces stripped) and where it ends."""
    if tex[i] == "{":
        depth = 0
        for j in range(i, len(tex)):
            depth += {"{": 1, "}": -1}.get(tex[j], 0)
            if depth == 0:
                return tex[i + 1:j], j + 1
        return tex[i + 1:], len(tex)
    if tex[i] == "\\":
        j = i + 1
        while j < len(tex) and tex[j].isalpha():
            j += 1
        return tex[i:max(j, i + 2)], max(j, i + 2)
    return tex[i], i + 1


def width(tex: str) -> float:
    """A rough width of ``tex`` in characters of the body font (for line breaking)."""
    total, i = 0.0, 0
    while i < len(tex):
        c = tex[i]
        if tex.startswith(r"\frac", i):
            top, i = _token(tex, i + len(r"\frac"))
            bottom, i = _token(tex, i)
            total += max(width(top), width(bottom))
        elif c in "_^":
            group, i = _token(tex, i + 1)
            total += 0.7 * width(group)
        elif c == "{":
            group, i = _token(tex, i)
            total += width(group)
        elif c == "\\":
            command, i = _token(tex, i)
            if command not in _ZERO:
                total += _WIDE.get(command, 1.0)
        else:
            total += 0.0 if c in " }&" else 1.0
            i += 1
    return total


def latex(expr, params: frozenset[sp.Symbol] = frozenset(), runs: int | None = None) -> str:
    """``expr`` as document LaTeX (display form, conventional order)."""
    return TexPrinter(params, runs).doprint(display_form(expr))
