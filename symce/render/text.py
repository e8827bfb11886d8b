"""Unicode text for the terminal: expressions on one line, justifications without LaTeX.

``qₖ − pₖ``, ``−Σⱼ cⱼ log qⱼ``, ``e^(xₖ − m)``, ``∂L/∂xₖ``, ``ℓ``: the order of
:mod:`symce.render.order`, the notation of the LaTeX documents.  :func:`plain`
turns a justification written in LaTeX (``$\\sum_j c_j = 1$``) into the same
words in Unicode (``Σⱼ cⱼ = 1``).
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from symce.render.order import (
    DDOTS,
    HDOTS,
    VDOTS,
    SignedTerms,
    breakable,
    display_form,
    split_product,
)

MINUS = "−"
_SUB = dict(zip("0123456789aehijklmnoprstuvx+-=()", "₀₁₂₃₄₅₆₇₈₉ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ₊₋₌₍₎",
                strict=True))
_SUP = dict(zip("0123456789ni+-T", "⁰¹²³⁴⁵⁶⁷⁸⁹ⁿⁱ⁺⁻ᵀ", strict=True))
_GREEK = {"lambda": "λ", "gamma": "γ", "delta": "δ", "epsilon": "ε", "ell": "ℓ", "alpha": "α",
          "beta": "β", "mu": "μ", "sigma": "σ", "tau": "τ", "theta": "θ", "phi": "φ",
          "partial": "∂", "infty": "∞"}
_MARKERS = {HDOTS: "⋯", VDOTS: "⋮", DDOTS: "⋱"}


def subscript(text: str) -> str:
    """``text`` in Unicode subscripts where every character has one, else ``_text``."""
    if text and all(c in _SUB for c in text):
        return "".join(_SUB[c] for c in text)
    return f"_{text}" if len(text) == 1 else f"_({text})"


def superscript(text: str) -> str | None:
    if text and all(c in _SUP for c in text):
        return "".join(_SUP[c] for c in text)
    return None


def symbol_name(name: str) -> str:
    """``q_12`` → ``q₁₂``, ``lambda`` → ``λ``, ``ell_t`` → ``ℓₜ``."""
    base, _, index = name.partition("_")
    base = _GREEK.get(base, base)
    return base + subscript(index) if index else base


class TextPrinter(SignedTerms, StrPrinter):
    """One-line Unicode; ``runs``: abbreviate class families of that size."""

    LEADING_MINUS = MINUS  # (before MINUS is rebound in this class's body)
    MINUS = f" {MINUS} "
    DOTS = "⋯"
    printmethod = "_symce_text"  # not the objects' own ``_sympystr`` (``q[k]``)

    def __init__(self, params: frozenset[sp.Symbol] = frozenset(), runs: int | None = None):
        super().__init__()
        self.params = params
        self.runs = runs

    def parenthesize(self, item, level, strict=False) -> str:
        text = self._print(item)
        if precedence(item) < level or (strict and precedence(item) == level):
            return f"({text})"
        return text

    # -- atoms ------------------------------------------------------------------
    def _print_Symbol(self, expr: sp.Symbol) -> str:
        if expr in _MARKERS:
            return _MARKERS[expr]
        return symbol_name(expr.name)

    _print_Dummy = _print_Symbol

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        return self._print(expr.base.label) + subscript("".join(map(str, expr.indices)))

    def _print_KroneckerDelta(self, expr) -> str:
        return "δ" + subscript("".join(map(str, expr.args)))

    def _print_UnevaluatedExpr(self, expr) -> str:
        return self._print(expr.args[0])

    def _print_Rational(self, expr) -> str:
        return f"{MINUS if expr.p < 0 else ''}{abs(expr.p)}/{expr.q}"

    def _print_Integer(self, expr) -> str:
        return f"{MINUS}{-expr.p}" if expr.p < 0 else str(expr.p)

    # -- functions --------------------------------------------------------------
    def _atomic(self, expr) -> bool:
        return isinstance(expr, (sp.Symbol, sp.Indexed)) or (expr.is_Integer and expr >= 0)

    def _print_exp(self, expr) -> str:
        arg = expr.args[0]
        return f"e^{self._print(arg)}" if self._atomic(arg) else f"e^({self._print(arg)})"

    def _print_log(self, expr) -> str:
        arg = expr.args[0]
        if self._atomic(arg) or isinstance(arg, sp.Sum):
            return f"log {self._print(arg)}"
        return f"log({self._print(arg)})"

    def _print_Function(self, expr) -> str:
        args = ", ".join(self._print(a) for a in expr.args)
        return f"{expr.func.__name__}({args})"

    def _derivative_head(self, expr) -> str:
        variables = expr.variables
        top = "∂" + (superscript(str(len(variables))) if len(variables) > 1 else "")
        return f"{top}/" + "".join(f"∂{self._print(v)}" for v in variables)

    def _print_Derivative(self, expr) -> str:
        variables = expr.variables
        top = "∂" + (superscript(str(len(variables))) if len(variables) > 1 else "")
        bottom = "".join(f"∂{self._print(v)}" for v in variables)
        inner = expr.expr
        if isinstance(inner, (sp.Symbol, sp.Indexed)):
            return f"{top}{self._print(inner)}/{bottom}"
        return f"{top}/{bottom} ({self._print(inner)})"

    def _print_Sum(self, expr) -> str:
        if len(expr.limits) != 1:
            return super()._print_Sum(expr)
        (idx, lo, hi), = expr.limits
        head = self._sum_head(idx, lo, hi)
        body = expr.function
        text = self._print(body)
        return f"{head} ({text})" if body.is_Add else f"{head} {text}"

    # -- sums and products ------------------------------------------------------
    def _factor(self, f, first: bool, last: bool) -> str:
        text = self._print(f)
        if isinstance(f, sp.UnevaluatedExpr):
            inner = f.args[0]
            fraction = inner.is_Mul and bool(split_product(inner).denominator)
            if inner.is_Add or inner.could_extract_minus_sign() or (fraction and not last):
                return f"({text})"
            return text
        if f.is_Add or (f.is_Mul and f.could_extract_minus_sign() and not first):
            return f"({text})"
        if not last and (isinstance(f, (sp.Sum, sp.Derivative))
                         or (isinstance(f, sp.log) and isinstance(f.args[0], sp.Sum))):
            return f"({text})"
        return text

    def _factors(self, factors) -> str:
        out = ""
        for i, f in enumerate(factors):
            text = self._factor(f, i == 0, i == len(factors) - 1)
            if out:
                loose = isinstance(f, (sp.Function, sp.Sum, sp.Derivative)) or isinstance(
                    factors[i - 1], (sp.Function, sp.Sum, sp.Derivative, sp.UnevaluatedExpr)) \
                    or isinstance(f, sp.UnevaluatedExpr) or factors[i - 1].is_Number \
                    and text[0].isdigit()
                out += (" " if loose else "") + text
            else:
                out = text
        return out

    def _print_Mul(self, expr) -> str:
        product = split_product(expr, self.params)
        numerator = self._factors(product.numerator) if product.numerator else "1"
        if product.denominator:
            if any(isinstance(f, sp.Sum) or isinstance(f, sp.Function)
                   and not isinstance(f, sp.exp) for f in product.numerator):
                numerator = f"({numerator})"
            denominator = self._factors(product.denominator)
            single = product.denominator[0] if len(product.denominator) == 1 else None
            if isinstance(single, sp.UnevaluatedExpr):
                single = single.args[0]
                denominator = self._print(single)
                if not (self._atomic_power(single) or single.is_Add):
                    denominator = f"({denominator})"
                elif single.is_Add:
                    denominator = f"({denominator})"
            elif single is None or not (self._atomic_power(single) or single.is_Add
                                        or isinstance(single, sp.Pow) and single.base.is_Add):
                denominator = f"({denominator})"
            text = f"{numerator}/{denominator}"
        else:
            text = numerator
        return f"{MINUS}{text}" if product.negative else text

    def _atomic_power(self, f) -> bool:
        base = f.base if isinstance(f, sp.Pow) else f
        return self._atomic(base) or isinstance(base, sp.exp) and self._atomic(base.args[0])

    def _print_Pow(self, expr) -> str:
        if expr.exp.is_number and expr.exp.is_negative:
            return self._print_Mul(expr)
        if expr.exp == sp.Rational(1, 2):
            return f"√({self._print(expr.base)})"
        base = self._print(expr.base)
        if not self._atomic(expr.base):
            base = f"({base})"
        sup = superscript(str(expr.exp)) if expr.exp.is_Integer else None
        if sup:
            return base + sup
        power = self._print(expr.exp)
        return f"{base}^{power}" if precedence(expr.exp) >= PRECEDENCE["Atom"] else \
            f"{base}^({power})"

    # -- matrices ---------------------------------------------------------------
    def _print_MatrixBase(self, expr) -> str:
        return "\n".join(grid([[self._print(e) for e in expr.row(r)] for r in range(expr.rows)]))

    _print_ImmutableDenseMatrix = _print_MatrixBase
    _print_MutableDenseMatrix = _print_MatrixBase

    # -- breaking long expressions ------------------------------------------------
    OPEN, CLOSE = "(", ")"

    def _sum_head(self, idx, lo, hi) -> str:
        if lo == 1 and str(hi) == "n":
            return "Σ" + subscript(str(idx))
        return f"Σ[{self._print(idx)}={self._print(lo)}..{self._print(hi)}]"

    def pieces(self, expr) -> list[str]:
        """``expr`` in pieces that may each start a new line (joined: the whole)."""
        return breakable(self, expr)


def grid(rows: list[list[str]]) -> list[str]:
    """A matrix of printed entries as lines, in brackets, columns aligned."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        left, right = (("[", "]") if len(rows) == 1 else
                       ("⎡", "⎤") if i == 0 else ("⎣", "⎦") if i == len(rows) - 1 else ("⎢", "⎥"))
        cells = "  ".join(e.ljust(w) for e, w in zip(r, widths, strict=True))
        lines.append(f"{left} {cells} {right}")
    return lines


def text(expr, params: frozenset[sp.Symbol] = frozenset(), runs: int | None = None) -> str:
    """``expr`` as one line of Unicode (display form, conventional order)."""
    return TextPrinter(params, runs).doprint(display_form(expr))


# -- justifications: LaTeX words → Unicode words --------------------------------------
_COMMANDS = {
    r"\sum": "Σ", r"\log": "log", r"\exp": "exp", r"\tanh": "tanh", r"\max": "max",
    r"\partial": "∂", r"\cdot": "·", r"\le": "≤", r"\ge": "≥", r"\leq": "≤", r"\geq": "≥",
    r"\ne": "≠", r"\to": "→", r"\in": "∈", r"\infty": "∞", r"\|": "‖", r"\approx": "≈",
    r"\times": "×", r"\quad": "  ", r"\qquad": "    ", r"\,": " ", r"\;": " ", r"\ldots": "…",
    r"\cdots": "⋯", r"\odot": "⊙", r"\mapsto": "↦", r"\lim": "lim", r"\det": "det",
    r"\left": "", r"\right": "", r"\{": "{", r"\}": "}", r"\mathbf": "", r"\lVert": "‖",
    r"\rVert": "‖", r"\dots": "…", r"\prime": "′", r"\sim": "∼", r"\neq": "≠", r"\top": "ᵀ",
}


_OPERATORS = frozenset({"log", "exp", "tanh", "max", "lim", "det"})


def _group(tex: str, i: int) -> tuple[str, int]:
    if i < len(tex) and tex[i] == "{":
        depth = 0
        for j in range(i, len(tex)):
            depth += {"{": 1, "}": -1}.get(tex[j], 0)
            if depth == 0:
                return tex[i + 1:j], j + 1
    if i < len(tex) and tex[i] == "\\":
        match = re.match(r"\\([a-zA-Z]+|.)", tex[i:])
        return match.group(0), i + len(match.group(0))
    return (tex[i], i + 1) if i < len(tex) else ("", i)


def _math(tex: str) -> str:
    """One ``$…$`` span of LaTeX as Unicode."""
    out, i = "", 0
    while i < len(tex):
        c = tex[i]
        if tex.startswith(r"\frac", i):
            top, i = _group(tex, i + len(r"\frac"))
            bottom, i = _group(tex, i)
            a, b = _math(top), _math(bottom)
            a = a if re.fullmatch(r"[\w′]+", a) else f"({a})"
            b = b if re.fullmatch(r"[\w′]+", b) else f"({b})"
            out += f"{a}/{b}"
        elif tex.startswith(r"\operatorname", i) or tex.startswith(r"\text", i) \
                or tex.startswith(r"\mathrm", i):
            command = re.match(r"\\[a-zA-Z]+", tex[i:]).group(0)
            body, i = _group(tex, i + len(command))
            out += body
        elif c == "\\":
            command, i = _group(tex, i)
            name = command[1:]
            out += _COMMANDS.get(command, _GREEK.get(name, name))
            if name.isalpha():  # spaces after a control word are not text (as in TeX)
                j = i
                while j < len(tex) and tex[j] == " ":
                    j += 1
                if j < len(tex) and (tex[j].isalnum() or tex[j] == "\\"):
                    i = j  # "\partial q" is "∂q"; "\ell = 1" keeps its space
                if name in _OPERATORS and i < len(tex) and tex[i] not in "(_^ " \
                        and not tex.startswith(r"\left", i):
                    out += " "
        elif c in "_^":
            body, i = _group(tex, i + 1)
            rendered = _math(body)
            if c == "_":
                out += subscript(rendered) if all(ch in _SUB for ch in rendered) else \
                    (f"_{rendered}" if len(rendered) == 1 else f"_({rendered})")
            else:
                sup = superscript(rendered)
                out += sup if sup else (f"^{rendered}" if re.fullmatch(r"\w+", rendered) else
                                        f"^({rendered})")
        elif c in "{}":
            i += 1
        elif c == "-":
            out += MINUS
            i += 1
        else:
            out += c
            i += 1
    return out


def plain(tex: str) -> str:
    """A justification with ``$…$`` LaTeX spans as Unicode text."""
    parts = tex.split("$")
    return "".join(re.sub(" {2,}", " ", _math(p)) if k % 2 else p for k, p in enumerate(parts))
