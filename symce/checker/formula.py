"""Prove or refute a claimed gradient formula against the derived one.

A claim is a SymPy expression or a string in the documented vector symbols:

=========  ===========================================================
``q``      the softmax of the logits (also ``softmax(x)``)
``p``      the target vector (``c`` is a synonym: target coefficients)
``x``      the logits
``n``      the number of classes (``C`` is a synonym)
``sum(…)`` the sum over classes; ``exp``, ``log`` as usual
=========  ===========================================================

so ``"q - p"``, ``"q*sum(p) - p"`` and ``"(q - p)/C"`` are claims about the
gradient of one sample's loss with respect to its logits.  A vector symbol
outside ``sum`` stands for its entry ``k``; inside, for the summed entry.

The claim is *proved* only when SymPy decides it equal to the derivation's
result under the stated assumptions (the derivation context's ``equal``); it
is *refuted* only by a concrete point, shown with its numbers, where the two
differ.  Anything else is *undecided*, and reported as such.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp
from sympy.parsing.sympy_parser import auto_number, convert_xor, parse_expr, rationalize

#: documented name → the derivation's vector it stands for (p is the target c)
_VECTORS = {"q": "q", "p": "c", "c": "c", "x": "x"}
_COUNT_NAMES = ("n", "C")
#: how each named assumption reads in the documented symbols
#: digits of the numeric search; a difference beyond 10 digits short of it refutes
_DIGITS = 50
_STATED = {"normalised": "sum(p) = 1", "positive_targets": "p > 0"}
#: the same assumptions written as formulas (spaces ignored)
_ALIASES = {
    "sum(p)=1": "normalised",
    "sum(c)=1": "normalised",
    "Σp=1": "normalised",
    "p>0": "positive_targets",
    "c>0": "positive_targets",
}


class ClassSum(sp.Function):
    """``sum(v)``: the sum over classes of a vector expression (parsing only)."""

    nargs = 1


class Softmax(sp.Function):
    """``softmax(x)``: the vector ``q`` (parsing only)."""

    nargs = 1


@dataclass(frozen=True)
class Point:
    """A concrete point: logits and targets of ``n`` classes (exact rationals)."""

    x: tuple[sp.Rational, ...]
    c: tuple[sp.Rational, ...]

    @property
    def q(self) -> tuple[sp.Expr, ...]:
        z = sp.Add(*[sp.exp(v) for v in self.x])
        return tuple(sp.exp(v) / z for v in self.x)


@dataclass(frozen=True)
class FormulaVerdict:
    """``status`` is ``"proved"``, ``"refuted"`` or ``"undecided"``."""

    text: str
    claim: Any
    derived: Any
    assumptions: tuple[str, ...]
    status: str
    point: Point | None = None
    claimed_values: tuple[sp.Expr, ...] = ()
    derived_values: tuple[sp.Expr, ...] = ()

    def __str__(self) -> str:
        given = ", ".join(f"{a} ({_STATED.get(a, a)})" for a in self.assumptions) or "none"
        head = f"claimed gradient {self.text!r} (as {_show(self.claim)}), assumptions: {given}"
        if self.status == "proved":
            return (
                f"{head}\n  PROVED by SymPy: equal to the derived gradient "
                f"{_show(self.derived)} under the assumptions: {given}"
            )
        if self.status == "undecided":
            return (
                f"{head}\n  UNDECIDED: SymPy could not prove it equal to the derived "
                f"gradient {_show(self.derived)}, and no counterexample was found; "
                "it is not verified"
            )
        pt = self.point
        assert pt is not None
        return "\n".join(
            [
                f"{head}\n  REFUTED: it differs from the derived gradient "
                f"{_show(self.derived)} at this point:",
                f"    n        = {len(pt.x)}",
                f"    x        = {_vec(pt.x)}",
                f"    p        = {_vec(pt.c)}   (sum(p) = {_num(sum(pt.c))})",
                f"    q        = {_vec(pt.q)}",
                f"    derived  = {_vec(self.derived_values)}",
                f"    claimed  = {_vec(self.claimed_values)}",
                f"    largest difference {_num(_gap(self.claimed_values, self.derived_values))}",
            ]
        )


# -- parsing ----------------------------------------------------------------
#: the functions a formula may call, besides sum(...) and softmax(...)
FUNCTIONS = {"exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt}
#: what a claimed gradient may use besides (an identity SymPy is to decide)
CLAIM_FUNCTIONS = {
    **FUNCTIONS, "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "sinh": sp.sinh,
    "cosh": sp.cosh, "tanh": sp.tanh, "atanh": sp.atanh, "abs": sp.Abs, "Abs": sp.Abs,
    "sign": sp.sign, "Max": sp.Max, "Min": sp.Min, "max": sp.Max, "min": sp.Min,
    "pi": sp.pi, "E": sp.E,
}
#: the operators a formula may use (``^`` is a power, as in the documents)
_OPERATORS = frozenset({"+", "-", "*", "/", "**", "^", "(", ")", ","})


def documented_names() -> tuple[str, ...]:
    """The names a formula reads without being told: vectors, counts, functions."""
    return (*_VECTORS, *_COUNT_NAMES, "sum", "softmax", *FUNCTIONS)


def parse_formula(text: str, params: dict[str, sp.Symbol] | None = None,
                  functions: dict[str, Any] | None = None) -> sp.Expr:
    """``text`` in the documented symbols (and ``params``) as a placeholder expression.

    Every name is looked up in a table built here (the documented symbols, the
    functions, the parameters, a parameter before any other meaning of its
    name): SymPy's own namespace is never consulted, so ``beta``, ``gamma``,
    ``E`` or ``S`` mean what the caller says, and an unknown name is refused
    by name before anything is evaluated.  Number literals are exact
    (``0.1`` is ``1/10``).  ``functions``: the functions (and constants) it may
    call, by default :data:`FUNCTIONS`.
    """
    import io
    import tokenize

    params = dict(params or {})
    names = {name: sp.Symbol(name) for name in (*_VECTORS, *_COUNT_NAMES)}
    table = FUNCTIONS if functions is None else functions
    local: dict[str, Any] = {**names, "sum": ClassSum, "softmax": Softmax, **table, **params}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        raise ValueError(f"cannot parse the formula {text!r}: unbalanced parentheses"
                         ) from None
    unknown, bad = [], []
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.string not in local:
            unknown.append(tok.string)
        elif tok.type == tokenize.OP and tok.string not in _OPERATORS:
            bad.append(tok.string)
        elif tok.type in (tokenize.STRING, tokenize.ERRORTOKEN) and tok.string.strip():
            bad.append(tok.string)
    if unknown:
        known = ", ".join(params) or "none"
        raise ValueError(
            f"unknown symbol(s) {', '.join(dict.fromkeys(unknown))} in the formula {text!r}; "
            "use q (softmax), p or c (targets), x (logits), n or C (classes), sum(...), "
            f"softmax(x), {', '.join(table)} and the parameters (given: {known})")
    if bad:
        raise ValueError(f"cannot parse the formula {text!r}: {', '.join(bad)} is not an "
                         "operator of a formula (use + - * / ** ^ and parentheses)")
    # only the table's names and numbers reach the parser, which builds numbers
    # with these constructors: nothing else of Python or SymPy is in scope
    scope = {"Integer": sp.Integer, "Float": sp.Float, "Rational": sp.Rational,
             "__builtins__": {}}
    try:
        expr = parse_expr(text, local_dict=local, global_dict=scope,
                          transformations=(auto_number, rationalize, convert_xor))
    except Exception as exc:
        raise ValueError(f"cannot parse the formula {text!r}: {exc}") from None
    if not isinstance(expr, sp.Expr):
        raise ValueError(f"the formula {text!r} is not an expression")
    return expr


def parse_claim(claim: str | sp.Basic, params: dict[str, sp.Symbol] | None = None) -> sp.Expr:
    """A claim in the documented symbols, as an expression with vector placeholders.

    ``params``: the loss's parameters by name (their symbols), which a claim may use."""
    params = dict(params or {})
    names = {name: sp.Symbol(name) for name in (*_VECTORS, *_COUNT_NAMES)}
    if isinstance(claim, str):
        expr = parse_formula(claim, params, functions=CLAIM_FUNCTIONS)
    else:
        expr = _from_sympy(sp.sympify(claim), "k")
        table = {**names, **params}
        expr = expr.xreplace(
            {
                s: table[s.name]
                for s in expr.free_symbols
                if isinstance(s, sp.Symbol) and s.name in table
            }
        )
    # the floats of a SymPy claim as the numeric search reads them (see _evaluate)
    expr = expr.xreplace({f: sp.nsimplify(f, rational=True) for f in expr.atoms(sp.Float)})
    unknown = sorted(str(s) for s in expr.free_symbols
                     if str(s) not in names and s not in params.values())
    if unknown:
        raise ValueError(
            f"unknown symbol(s) {', '.join(unknown)} in the formula; use q (softmax), "
            "p or c (targets), x (logits), n or C (classes), sum(...), exp, log"
        )
    return expr


def _from_sympy(expr: sp.Expr, index: str) -> sp.Expr:
    """Indexed input (``q[k]``, ``Sum(c[j], (j, 1, n))``) → the vector placeholders."""
    if isinstance(expr, sp.Sum):
        (j, lo, hi), *more = expr.limits
        if more or lo != 1 or str(hi) not in _COUNT_NAMES:
            raise ValueError(f"{expr} is not a sum over the classes 1..n")
        return ClassSum(_from_sympy(expr.function, str(j)))
    if isinstance(expr, sp.Indexed):
        name = str(expr.base)
        if name not in _VECTORS or len(expr.indices) != 1 or str(expr.indices[0]) != index:
            raise ValueError(
                f"{expr} is not one of the documented entries q[k], p[k], c[k], x[k] "
                "(or q[j] ... inside a sum over j)"
            )
        return sp.Symbol(name)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_from_sympy(arg, index) for arg in expr.args])


def to_indexed(expr: sp.Expr, ctx: Any, index: sp.Symbol | None = None, depth: int = 0) -> Any:
    """Placeholders → the symbolic context's ``q[k]``, ``c[k]``, ``Sum(…, (j, 1, n))``."""
    index = ctx.k if index is None else index
    if isinstance(expr, ClassSum):
        j = ctx.j if depth == 0 else sp.Symbol(f"j{depth + 1}", integer=True)
        return sp.Sum(to_indexed(expr.args[0], ctx, j, depth + 1), (j, 1, ctx.n))
    return _map(
        expr,
        lambda e: to_indexed(e, ctx, index, depth),
        lambda name: getattr(ctx, _VECTORS[name])(index),
        ctx.n,
    )


def to_entries(expr: sp.Expr, ctx: Any, a: int) -> Any:
    """Placeholders → the concrete context's symbols, entry ``a`` (0-based)."""
    if isinstance(expr, ClassSum):
        return sp.Add(*[to_entries(expr.args[0], ctx, b) for b in range(ctx.n)])
    return _map(
        expr,
        lambda e: to_entries(e, ctx, a),
        lambda name: getattr(ctx, _VECTORS[name])(a),
        sp.Integer(ctx.n),
    )


def _map(expr: sp.Expr, recurse: Any, vector: Any, count: sp.Expr) -> Any:
    if isinstance(expr, Softmax):
        if expr.args[0] != sp.Symbol("x"):
            raise ValueError("softmax(...) is understood only as softmax(x), that is q")
        return vector("q")
    if isinstance(expr, sp.Symbol):
        if expr.name in _VECTORS:
            return vector(expr.name)
        if expr.name in _COUNT_NAMES:
            return count
        return expr
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[recurse(arg) for arg in expr.args])


# -- deciding ---------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _derivation(loss: str, n: int | None) -> Any:
    from symce.api import derive

    return derive(loss, n=n)


def check_gradient_formula(
    claim: str | sp.Basic,
    loss: str = "cross_entropy",
    n: int | None = None,
    assume: Sequence[str] | str = (),
    points: int = 8,
    seed: int = 0,
) -> FormulaVerdict:
    """Prove ``claim`` equal to the derived gradient, refute it at a point, or say neither."""
    given = (assume,) if isinstance(assume, str) else tuple(assume)
    assumptions = tuple(_ALIASES.get(a.replace(" ", ""), a) for a in given)
    d = _derivation(loss, n)
    unknown = [a for a in assumptions if a not in d.context.assumptions]
    if unknown:
        raise ValueError(
            f"unknown assumption(s) {unknown}; known: {', '.join(d.context.assumptions)}"
        )
    text = claim if isinstance(claim, str) else sp.sstr(claim)
    ctx = d.context
    # the loss's parameters: symbols in the claim and the derived gradient alike,
    # given values at each point of the search (with the log-sum-exp ℓ of the point)
    declared = getattr(getattr(ctx, "loss", None), "params", ())
    params = {p.name: p.symbol for p in declared}
    parsed = parse_claim(claim, params)
    if n is None:
        stated = to_indexed(parsed, ctx)
    else:
        stated = sp.ImmutableMatrix([to_entries(parsed, ctx, a) for a in range(n)])
    verdict = functools.partial(FormulaVerdict, text, stated, d.result, assumptions)
    try:
        proved = bool(ctx.equal(d.result, stated, assumptions))
    except Exception:  # SymPy gave up: not proved, so look for a counterexample
        proved = False
    if proved:
        return verdict("proved")
    rng = np.random.default_rng(seed)
    for trial in range(points):
        size = n if n is not None else (3, 2, 4)[trial % 3]
        point = _point(rng, size, "normalised" in assumptions)
        values = {s: sp.Rational(int(v), 10) for s, v in
                  zip(params.values(), rng.integers(1, 30, len(params)), strict=True)}
        claimed = _evaluate(parsed, point, values)
        derived = _evaluate_derived(d.result, ctx, point, values)
        if _differ(claimed, derived):
            return verdict("refuted", point, tuple(claimed), tuple(derived))
    return verdict("undecided")


def _point(rng: np.random.Generator, n: int, normalised: bool) -> Point:
    x = tuple(sp.Rational(int(v), 10) for v in rng.integers(-25, 26, n))
    weights = [int(v) for v in rng.integers(1, 10, n)]
    if normalised:
        c = tuple(sp.Rational(w, sum(weights)) for w in weights)
    else:
        if sum(weights) == 10:  # keep away from sum(p) = 1 by accident
            weights[0] += 1
        c = tuple(sp.Rational(w, 10) for w in weights)
    return Point(x, c)


def _evaluate(parsed: sp.Expr, point: Point, params: dict | None = None) -> list[sp.Expr]:
    """The claim's vector at ``point`` (``params``: parameter symbol → value): exact
    rationals, evaluated to ``_DIGITS`` digits."""
    values = {"q": point.q, "c": point.c, "x": point.x}
    n = len(point.x)

    def entry(expr: sp.Expr, a: int) -> sp.Expr:
        if isinstance(expr, ClassSum):
            return sp.Add(*[entry(expr.args[0], b) for b in range(n)])
        return _map(
            expr, lambda e: entry(e, a), lambda name: values[_VECTORS[name]][a], sp.Integer(n)
        )

    exact = parsed.xreplace({f: sp.nsimplify(f, rational=True) for f in parsed.atoms(sp.Float)})
    exact = exact.xreplace(dict(params or {}))
    return [sp.N(entry(exact, a), _DIGITS) for a in range(n)]


def _evaluate_derived(result: Any, ctx: Any, point: Point, params: dict | None = None
                      ) -> list[sp.Expr]:
    """The derivation's own result at ``point`` (symbolic ``n``: instantiated first;
    ``ℓ`` is the point's log-sum-exp, ``params`` the parameters' values)."""
    n = len(point.x)
    values = {"q": point.q, "c": point.c, "x": point.x}
    constants = {ctx.ell: sp.log(sp.Add(*[sp.exp(v) for v in point.x])), **(params or {})}
    if isinstance(result, sp.MatrixBase):
        entries = list(result)
        table = {getattr(ctx, name)(a): values[name][a] for name in values for a in range(n)}
    else:
        entries = [result.xreplace({ctx.k: a + 1, ctx.n: n}).doit() for a in range(n)]
        table = {getattr(ctx, name)(a + 1): values[name][a] for name in values for a in range(n)}
    return [sp.N(e.xreplace(table).xreplace(constants), _DIGITS) for e in entries]


def _differ(claimed: list[sp.Expr], derived: list[sp.Expr]) -> bool:
    """Different beyond rounding (a non-real claimed value differs too)."""
    for a, b in zip(claimed, derived, strict=True):
        if not a.is_real or abs(a - b) > sp.Float(f"1e-{_DIGITS - 10}") * (1 + abs(b)):
            return True
    return False


def _gap(a: Sequence[sp.Expr], b: Sequence[sp.Expr]) -> sp.Expr:
    return max((sp.Abs(u - v) for u, v in zip(a, b, strict=True)), key=lambda d: float(abs(d)))


def _show(expr: Any) -> str:
    return sp.sstr(list(expr) if isinstance(expr, sp.MatrixBase) else expr)


def _vec(values: Sequence[Any]) -> str:
    return "(" + ", ".join(_num(v) for v in values) + ")"


def _num(v: Any) -> str:
    if isinstance(v, sp.Rational) and v.q <= 1000:
        return str(v) if v.q == 1 else f"{v} = {float(v):.6g}"
    v = sp.sympify(v)
    return f"{float(v):.10g}" if v.is_real else sp.sstr(sp.N(v, 10))
