"""Symbolic ``n``: ``IndexedBase`` logits, ``Sum`` over classes, ``KroneckerDelta``.

Plain ``simplify`` on the derivative of a ``Sum`` of ``Indexed`` terms fails or
raises, so equality is decided by a fixed pipeline that steers SymPy:

1. evaluate derivatives (after substituting the definitions of ``L`` and ``q``
   down to the variable being differentiated) and ``doit()``, which sifts
   ``Σ_j δ_jk f_j`` to ``Piecewise((f_k, 1 ≤ k ≤ n), …)``;
2. drop each ``Piecewise`` whose first condition the index range ``1 ≤ k ≤ n``
   makes true (the range is a standing fact about every index);
3. expand logs and exponentials (``q > 0``, ``Σ exp > 0``, ``x`` real);
4. make every sum linear and rename its dummy canonically;
5. apply the step's named assumptions (``Σ c = 1``);
6. replace each remaining sum by an atom and decide with ``cancel``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

from symce.engine.context import Context


class SymbolicContext(Context):
    """Derivations for a symbolic number of classes ``n``."""

    def __init__(self) -> None:
        self.n = sp.Symbol("n", integer=True, positive=True)
        self.i, self.k, self.l = sp.symbols("i k l", integer=True)
        self.j = sp.Symbol("j", integer=True)
        self._x = sp.IndexedBase("x", real=True)
        self._q = sp.IndexedBase("q", positive=True)
        self._c = sp.IndexedBase("c", real=True)
        self._p = sp.IndexedBase("p", real=True)
        self._loss_body: Callable[[Any], sp.Expr] | None = None
        self._cache: dict[sp.Basic, sp.Expr] = {}

    # -- vocabulary -----------------------------------------------------
    def x(self, a: Any) -> sp.Expr:
        return self._x[a]

    def q(self, a: Any) -> sp.Expr:
        return self._q[a]

    def c(self, a: Any) -> sp.Expr:
        return self._c[a]

    def p(self, a: Any) -> sp.Expr:
        return self._p[a]

    def sum(self, term: Callable[[Any], sp.Expr]) -> sp.Expr:
        return sp.Sum(term(self.j), (self.j, 1, self.n))

    def vector(self, entry: Callable[[Any], Any]) -> Any:
        return entry(self.k)

    def matrix(self, entry: Callable[[Any, Any], Any]) -> Any:
        return entry(self.i, self.k)

    def entry(self, obj: Any, *index: Any) -> Any:
        free = (self.k,) if len(index) == 1 else (self.i, self.k)
        return obj.xreplace(dict(zip(free, index, strict=True)))

    def lse(self) -> sp.Expr:
        return sp.log(self.sum(lambda j: sp.exp(self.x(j))))

    # -- definitions ----------------------------------------------------
    def _substitute(self, expr: sp.Expr, keep_q: bool = False) -> sp.Expr:
        """Replace ``L`` by its definition and, unless ``keep_q``, ``q`` by softmax."""
        if self._loss_body is not None and expr.has(self.L):
            expr = expr.xreplace({self.L: self.sum(self._loss_body)})
        if not keep_q:
            expr = expr.replace(
                lambda t: isinstance(t, sp.Indexed) and t.base == self._q,
                lambda t: self.softmax_explicit(t.indices[0]),
            )
        return expr

    def _derivative(self, d: sp.Derivative) -> sp.Expr:
        if d in self._cache:
            return self._cache[d]
        f = d.expr
        for var, count in d.variable_count:
            keep_q = isinstance(var, sp.Indexed) and var.base == self._q
            f = self._substitute(f, keep_q=keep_q)
            f = sp.diff(f, (var, count))
            f = self._drop_piecewise(f.doit())
        self._cache[d] = f
        return f

    def _derivatives(self, expr: sp.Expr) -> sp.Expr:
        return expr.replace(lambda t: isinstance(t, sp.Derivative), self._derivative)

    # -- steering -------------------------------------------------------
    def _drop_piecewise(self, expr: sp.Expr) -> sp.Expr:
        """Resolve ``Piecewise`` conditions with the index range ``1 ≤ s ≤ n``."""
        if not expr.has(sp.Piecewise):
            return expr
        facts: dict[sp.Basic, Any] = {}
        for s in expr.free_symbols | {self.i, self.j, self.k, self.l}:
            if s.is_integer and s != self.n:
                for rel in (sp.Ge(s, 1), sp.Le(1, s), sp.Le(s, self.n), sp.Ge(self.n, s),
                            sp.Gt(s, 0), sp.Lt(0, s)):
                    facts[rel] = sp.true

        def pick(pw: sp.Piecewise) -> sp.Expr:
            for value, cond in pw.args:
                decided = cond.xreplace(facts)
                if decided == sp.true:
                    return value
                if decided != sp.false:
                    return pw  # undecided: leave it, the comparison will fail
            return pw

        return expr.replace(lambda t: isinstance(t, sp.Piecewise), pick)

    def _sift(self, expr: sp.Expr) -> sp.Expr:
        return _linearise(self._drop_piecewise(_linearise(expr).doit()))

    def _to_q(self, expr: sp.Expr) -> sp.Expr:
        """Rewrite ``exp(x_a) / Σ exp(x_j)`` back into ``q_a``."""
        expr = _canonical_dummies(expr, ("j",))
        z_sum = self.sum(lambda j: sp.exp(self.x(j)))
        z = sp.Dummy("Z", positive=True)
        expr = expr.xreplace({z_sum: z})
        expr = expr.replace(
            lambda t: isinstance(t, sp.exp) and isinstance(t.args[0], sp.Indexed)
            and t.args[0].base == self._x,
            lambda t: self._q[t.args[0].indices[0]] * z,
        )
        expr = sp.expand(expr)
        return expr.xreplace({z: z_sum})

    # -- Context API ----------------------------------------------------
    def evaluate(self, expr: Any) -> Any:
        expr = self._sift(self._derivatives(expr))
        expr = self._to_q(expr)
        return _canonical_dummies(sp.factor_terms(expr), ("j",))

    def normalise(self, expr: Any) -> Any:
        expr = _canonical_dummies(expr, ("j",))
        expr = expr.xreplace({self.sum(self.c): sp.S.One})
        return expr.replace(
            lambda t: isinstance(t, sp.Indexed) and t.base == self._c,
            lambda t: self._p[t.indices[0]],
        )

    def equal(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        if isinstance(lhs, sp.MatrixBase) or isinstance(rhs, sp.MatrixBase):
            return False  # symbolic-n steps are single entries with free indices
        e = self._substitute(self._derivatives(sp.sympify(lhs) - sp.sympify(rhs)))
        e = self._drop_piecewise(e.doit())
        if "normalised" in assumptions:
            e = e.replace(
                lambda t: isinstance(t, sp.Indexed) and t.base == self._p,
                lambda t: self._c[t.indices[0]],
            )
        e = sp.expand(sp.expand_log(e, force=True))
        e = _canonical_dummies(self._sift(e), ("_u",))
        if "normalised" in assumptions:
            u = sp.Symbol("_u", integer=True)
            e = e.xreplace({sp.Sum(self._c[u], (u, 1, self.n)): sp.S.One})
        atoms = {s: sp.Dummy("S") for s in e.atoms(sp.Sum)}
        return sp.cancel(sp.together(e.xreplace(atoms))) == 0


def _linearise(expr: sp.Expr) -> sp.Expr:
    """Split sums over ``+`` and pull factors free of the dummy out of them."""
    if isinstance(expr, sp.Sum) and len(expr.limits) == 1:
        (idx, lo, hi), = expr.limits
        terms = []
        for term in sp.Add.make_args(sp.expand(_linearise(expr.function))):
            outside, inside = term.as_independent(idx, as_Add=False)
            terms.append(outside * (sp.Sum(inside, (idx, lo, hi)) if inside.has(idx)
                                    else inside * (hi - lo + 1)))
        return sp.Add(*terms)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_linearise(a) for a in expr.args])


def _canonical_dummies(expr: sp.Expr, names: tuple[str, ...], depth: int = 0) -> sp.Expr:
    """Rename each sum's dummy by nesting depth so equal sums compare equal."""
    if isinstance(expr, sp.Sum) and len(expr.limits) == 1:
        (idx, lo, hi), = expr.limits
        name = names[0] if depth == 0 else f"{names[0]}{depth + 1}"
        u = sp.Symbol(name, integer=True)
        body = _canonical_dummies(expr.function.xreplace({idx: u}), names, depth + 1)
        return sp.Sum(body, (u, lo, hi))
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_canonical_dummies(a, names, depth) for a in expr.args])
