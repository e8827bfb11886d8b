"""Concrete ``n``: explicit symbols ``x_1 … x_n`` and SymPy matrices.

Naive ``simplify`` of the explicit ``n × n`` Jacobian grows steeply with ``n``
(each entry drags the whole ``Σ exp(x_j)`` along).  Here the softmax is written
``q_a = exp(x_a − ℓ)`` with ``ℓ = log Σ_j exp(x_j)`` kept as one symbol, and a
derivative with respect to ``x_b`` is taken by the chain rule through ``ℓ``
using the lemma ``∂ℓ/∂x_b = q_b`` (itself a checked step of every derivation).
Each Jacobian entry is then a handful of terms.

Equality is decided entry by entry, trying progressively more explicit forms,
each of which only substitutes definitions (so each is sound):

1. in ``q`` (exponentials ``exp(k(x_a − ℓ))`` folded back to ``q_a^k``);
2. in ``x`` and ``ℓ`` (``q`` replaced by its definition, logs expanded);
3. in ``x`` alone (``ℓ`` replaced by ``log Σ exp(x_j)``), as rational functions
   of the ``exp(x_j)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

from symce.engine.context import Context


class ConcreteContext(Context):
    """Derivations for ``n`` classes, written out."""

    def __init__(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.n = n
        names = range(1, n + 1)
        self._x = tuple(sp.Symbol(f"x_{a}", real=True) for a in names)
        self._q = tuple(sp.Symbol(f"q_{a}", positive=True) for a in names)
        self._c = tuple(sp.Symbol(f"c_{a}", real=True) for a in names)
        self._p = tuple(sp.Symbol(f"p_{a}", real=True) for a in names)
        self.ell = sp.Symbol("ell", real=True)
        self._x_pos = {v: a for a, v in enumerate(self._x)}
        self._q_set = frozenset(self._q)
        self._z = sp.Add(*[sp.exp(x) for x in self._x])
        self._loss_body: Callable[[Any], sp.Expr] | None = None
        self._cache: dict[sp.Basic, sp.Expr] = {}

    # -- vocabulary -----------------------------------------------------
    def x(self, a: int) -> sp.Expr:
        return self._x[a]

    def q(self, a: int) -> sp.Expr:
        return self._q[a]

    def c(self, a: int) -> sp.Expr:
        return self._c[a]

    def p(self, a: int) -> sp.Expr:
        return self._p[a]

    def sum(self, term: Callable[[int], sp.Expr]) -> sp.Expr:
        return sp.Add(*[term(a) for a in range(self.n)])

    def vector(self, entry: Callable[[int], Any]) -> sp.ImmutableMatrix:
        return sp.ImmutableMatrix([entry(a) for a in range(self.n)])

    def matrix(self, entry: Callable[[int, int], Any]) -> sp.ImmutableMatrix:
        return sp.ImmutableMatrix(self.n, self.n, lambda a, b: entry(int(a), int(b)))

    def entry(self, obj: Any, *index: int) -> Any:
        return obj[index[0], 0] if len(index) == 1 else obj[index]

    def lse(self) -> sp.Expr:
        return self.ell

    def delta(self, a: int, b: int) -> sp.Expr:
        return sp.S.One if a == b else sp.S.Zero

    # -- definitions ----------------------------------------------------
    def _substitute_loss(self, expr: sp.Expr) -> sp.Expr:
        if self._loss_body is not None and expr.has(self.L):
            expr = expr.xreplace({self.L: self.sum(self._loss_body)})
        return expr

    def _substitute_q(self, expr: sp.Expr) -> sp.Expr:
        return expr.xreplace({q: sp.exp(x - self.ell) for q, x in zip(self._q, self._x)})

    def _derivative(self, d: sp.Derivative) -> sp.Expr:
        if d in self._cache:
            return self._cache[d]
        f = d.expr
        for var, count in d.variable_count:
            for _ in range(count):
                f = self._substitute_loss(f)
                if var in self._q_set:
                    f = sp.diff(f, var)
                else:
                    f = self._substitute_q(f)
                    f = sp.diff(f, var) + sp.diff(f, self.ell) * self._dell(var)
        self._cache[d] = f
        return f

    def _dell(self, var: sp.Symbol) -> sp.Expr:
        """The lemma ``∂ℓ/∂x_b = q_b`` (as ``exp(x_b − ℓ)``); zero for other symbols."""
        return sp.exp(var - self.ell) if var in self._x_pos else sp.S.Zero

    def _derivatives(self, expr: sp.Expr) -> sp.Expr:
        return expr.replace(lambda t: isinstance(t, sp.Derivative), self._derivative)

    def _to_q(self, expr: sp.Expr) -> sp.Expr:
        """Fold ``exp(k·(x_a − ℓ))`` into ``q_a**k``."""

        def fold(t: sp.exp) -> sp.Expr:
            coeffs = sp.expand(t.args[0]).as_coefficients_dict()
            xs = [(v, k) for v, k in coeffs.items() if v in self._x_pos]
            rest = {v: k for v, k in coeffs.items() if v not in self._x_pos}
            if not xs or rest != {self.ell: -sum(k for _, k in xs)}:
                return t
            return sp.Mul(*[self._q[self._x_pos[v]] ** k for v, k in xs])

        z = self._z
        if expr.has(z):  # exp(x_a) / Σ exp(x_j) = exp(x_a − ℓ), ℓ's definition
            expr = sp.powsimp(expr.xreplace({z: sp.exp(self.ell)}), combine="exp")
        return expr.replace(lambda t: isinstance(t, sp.exp), fold)

    # -- Context API ----------------------------------------------------
    def evaluate(self, expr: Any) -> Any:
        if isinstance(expr, sp.MatrixBase):
            return expr.applyfunc(self.evaluate).as_immutable()
        # Σc stays one factor while tidying: expanding it would cost n terms an entry.
        total = sp.Dummy("C")
        e = self._to_q(self._derivatives(expr)).xreplace({sp.Add(*self._c): total})
        e = sp.expand(e)
        e = sp.factor_terms(sp.collect(e, sorted(e.free_symbols & self._q_set, key=str)))
        return e.xreplace({total: sp.Add(*self._c)})

    def normalise(self, expr: Any) -> Any:
        if isinstance(expr, sp.MatrixBase):
            return expr.applyfunc(self.normalise).as_immutable()
        expr = expr.xreplace({sp.Add(*self._c): sp.S.One})
        return expr.xreplace(dict(zip(self._c, self._p, strict=True)))

    def equal(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        lhs_m, rhs_m = isinstance(lhs, sp.MatrixBase), isinstance(rhs, sp.MatrixBase)
        if lhs_m != rhs_m or (lhs_m and lhs.shape != rhs.shape):
            return False
        if not lhs_m:
            return self._entry_zero(sp.sympify(lhs) - sp.sympify(rhs), assumptions)
        return all(
            self._entry_zero(a - b, assumptions) for a, b in zip(lhs, rhs, strict=True)
        )

    def _entry_zero(self, e: sp.Expr, assumptions: Sequence[str]) -> bool:
        e = self._substitute_loss(self._derivatives(e))
        if "normalised" in assumptions:
            e = e.xreplace(dict(zip(self._p, self._c, strict=True)))
            e = e.xreplace({self._c[-1]: 1 - sp.Add(*self._c[:-1])})
        if sp.expand(self._to_q(e)) == 0:
            return True
        e = sp.expand(sp.expand_log(self._substitute_q(e), force=True))
        if _rational_zero(e):
            return True
        e = sp.expand(sp.expand_log(e.xreplace({self.ell: sp.log(self._z)}), force=True))
        return _rational_zero(e)


def _rational_zero(e: sp.Expr) -> bool:
    num, _ = sp.fraction(sp.together(e))
    return sp.expand(num) == 0
