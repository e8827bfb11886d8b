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
        self._csum = sp.Add(*self._c)
        # Σc does not depend on the logits; as one atom it costs O(1) to carry
        # through derivatives instead of n terms an entry.
        self._C = sp.Dummy("C", real=True)
        self._q_def = {q: sp.exp(x - self.ell) for q, x in zip(self._q, self._x, strict=True)}
        # exp(k·(x_a − ℓ)) → q_a**k for the powers a Jacobian or Hessian produces
        self._q_fold = {
            sp.exp(k * (x - self.ell)): q**k
            for q, x in zip(self._q, self._x, strict=True)
            for k in (1, 2, 3, -1)
        }
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
            if ("L", self._loss_body) not in self._cache:
                self._cache[("L", self._loss_body)] = self.sum(self._loss_body)
            expr = expr.xreplace({self.L: self._cache[("L", self._loss_body)]})
        return expr

    def _substitute_q(self, expr: sp.Expr) -> sp.Expr:
        return expr.xreplace(self._q_def)

    def _derivative(self, d: sp.Derivative) -> sp.Expr:
        if d in self._cache:
            return self._cache[d]
        f = d.expr
        for var, count in d.variable_count:
            for _ in range(count):
                f = self._diff(f, var)
        self._cache[d] = f
        return f

    def _diff(self, f: sp.Expr, var: sp.Symbol) -> sp.Expr:
        """∂f/∂var, through ℓ by the chain rule when var is a logit."""
        f = self._substitute_loss(f).xreplace({self._csum: self._C})
        if var not in self._x_pos:
            return sp.diff(f.xreplace({self._C: self._csum}), var)
        f = self._substitute_q(f)
        direct = sp.diff(f, var) if var in f.free_symbols else sp.S.Zero
        key = ("d/dell", f)
        if key not in self._cache:
            self._cache[key] = sp.diff(f, self.ell)
        return direct + self._cache[key] * self._dell(var)

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

        expr = expr.xreplace(self._q_fold)
        if not expr.has(sp.exp):
            return expr
        if expr.has(self._z):  # exp(x_a) / Σ exp(x_j) = exp(x_a − ℓ), ℓ's definition
            expr = sp.powsimp(expr.xreplace({self._z: sp.exp(self.ell)}), combine="exp")
        return expr.replace(lambda t: isinstance(t, sp.exp), fold)

    # -- Context API ----------------------------------------------------
    def evaluate(self, expr: Any) -> Any:
        if isinstance(expr, sp.MatrixBase):
            return expr.applyfunc(self.evaluate).as_immutable()
        e = self._to_q(self._derivatives(expr.xreplace({self._csum: self._C})))
        e = sp.expand(e)
        if e.is_Add:  # gather Σ_j c_j q_k into q_k Σc (the normalisation step needs Σc whole)
            e = sp.collect(e, sorted(e.free_symbols & self._q_set, key=str))
        return sp.factor_terms(e).xreplace({self._C: self._csum})

    def normalise(self, expr: Any) -> Any:
        if isinstance(expr, sp.MatrixBase):
            return expr.applyfunc(self.normalise).as_immutable()
        expr = expr.xreplace({self._csum: sp.S.One})
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
        e = self._derivatives(e.xreplace({self._csum: self._C}))
        e = self._substitute_loss(e)
        if "normalised" in assumptions:
            e = e.xreplace(dict(zip(self._p, self._c, strict=True))).xreplace({self._C: 1})
        if sp.expand(self._to_q(e)) == 0:
            return True
        e = e.xreplace({self._C: self._csum})
        if "normalised" in assumptions:
            e = e.xreplace({self._c[-1]: 1 - sp.Add(*self._c[:-1])})
        if sp.expand(self._to_q(e)) == 0:
            return True
        e = sp.expand(_expand_log(self._substitute_q(e)))
        if sp.factor_terms(e) == 0:
            return True
        # ℓ = log Σ exp(x_j): everything in the logits alone.
        e = sp.expand(_expand_log(e.xreplace({self.ell: sp.log(self._z)})))
        return sp.factor_terms(e) == 0 or _rational_zero(e)


def _expand_log(e: sp.Expr) -> sp.Expr:
    # log(a·b) = log a + log b holds here: every log argument is positive
    # (softmax entries, Σ exp, and targets under 'positive_targets').
    return sp.expand_log(e, force=True) if e.has(sp.log) else e


def _rational_zero(e: sp.Expr) -> bool:
    num, _ = sp.fraction(sp.together(e))
    return sp.expand(num) == 0
