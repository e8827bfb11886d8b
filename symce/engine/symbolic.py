"""Symbolic ``n``: ``IndexedBase`` logits, ``Sum`` over classes, ``KroneckerDelta``.

Plain ``simplify`` on the derivative of a ``Sum`` of ``Indexed`` terms fails or
raises, so equality is decided by a fixed pipeline that steers SymPy:

1. evaluate each derivative: substitute the definitions of the symbols that
   depend on the variable (the loss's terms, ``q``, ``ℓ``, ``x = φ(u)``, the
   teacher's ``c``), differentiate, make sums linear and sift
   ``Σ_j f_j δ_jk = f_k`` (the index range ``1 ≤ k ≤ n`` is a standing fact),
   and fold the result back
   into the vocabulary (``e^{x_a} = q_a e^ℓ``, ``u_a = φ⁻¹(x_a)``);
2. apply the step's named assumptions (``Σc = 1``; ``c > 0``), and nothing
   else: logarithms are expanded only where positivity holds (``q``, sums of
   exponentials, softmax entries, ``c`` under ``positive_targets``);
3. decide ``lhs − rhs = 0`` with ``q``, ``ℓ``, ``x``, ``c`` as independent
   atoms (an identity there holds for the softmax too), every sum made
   linear, renamed canonically, its body in a normal form, and replaced by an
   atom;
4. failing that, substitute the definitions of ``q``, ``ℓ`` and ``c`` and
   decide again in the logits alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sympy as sp

from symce.engine.context import Context
from symce.errors import ProofError

if TYPE_CHECKING:
    from symce.losses.spec import Loss


class SymbolicContext(Context):
    """Derivations for a symbolic number of classes ``n``."""

    def __init__(self, loss: Loss | None = None) -> None:
        super().__init__(loss)
        self.n = sp.Symbol("n", integer=True, positive=True)
        self.i, self.k, self.l = sp.symbols("i k l", integer=True)
        self.j = sp.Symbol("j", integer=True)
        self._x = sp.IndexedBase("x", real=True)
        self._u = sp.IndexedBase("u", real=True)
        self._t = sp.IndexedBase("t", real=True)
        self._q = sp.IndexedBase("q", positive=True)
        # the teacher's coefficients are its softmax, written p (positive)
        self._c = (sp.IndexedBase("p", positive=True) if self.teacher
                   else sp.IndexedBase("c", real=True))
        self._c_positive = sp.IndexedBase(str(self._c.label), positive=True)
        self._p = self._c if self.teacher else sp.IndexedBase("p", real=True)
        self._cache: dict[sp.Basic, sp.Expr] = {}

    # -- vocabulary -----------------------------------------------------
    def _vocabulary(self) -> tuple[sp.Basic, ...]:
        return (self._x, self._u, self._t, self._q, self._c, self._p, self.n,
                self.i, self.j, self.k, self.l)

    def x(self, a: Any) -> sp.Expr:
        return self._x[a]

    def u(self, a: Any) -> sp.Expr:
        return self._u[a]

    def t(self, a: Any) -> sp.Expr:
        return self._t[a]

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

    def _reset_caches(self) -> None:
        self._cache.clear()

    def _memory(self) -> list[Any]:
        return [*super()._memory(), *self._cache]

    def log_softmax_form(self, expr: sp.Expr) -> sp.Expr:
        expr = expr.replace(
            lambda t: isinstance(t, sp.log) and self._is(t.args[0], self._q),
            lambda t: self._x[t.args[0].indices[0]] - self.ell)
        return _linearise(expr)

    def depends_on_q(self, expr: sp.Expr) -> bool:
        return expr.has(self._q)

    def depends_on_x_directly(self, expr: sp.Expr) -> bool:
        return expr.has(self._x)

    def has_coefficient_sum(self, expr: sp.Expr) -> bool:
        return any(isinstance(s.function, sp.Indexed) and s.function.base == self._c
                   for s in expr.atoms(sp.Sum))

    # -- definitions ----------------------------------------------------
    def _is(self, t: sp.Basic, base: sp.IndexedBase) -> bool:
        return isinstance(t, sp.Indexed) and t.base == base

    def _substitute(self, expr: sp.Expr, var: sp.Basic | None) -> sp.Expr:
        """The definitions of every symbol that depends on ``var`` (None: on anything)."""
        base = var.base if isinstance(var, sp.Indexed) else var
        expr = self._substitute_terms(expr)
        student = base is None or base in (self._x, self._u)
        if self.transform is not None and base in (self._x, self._q, self.ell) and expr.has(
                self._u):  # u = φ⁻¹(x) depends on x: no raw logit is held constant
            expr = expr.replace(lambda t: self._is(t, self._u),
                                lambda t: self.transform.inverse(self._x[t.indices[0]]))
        if base in (self._q, self.ell) and expr.has(self._x):
            # in the coordinates q, ℓ the logits are x_a = log q_a + ℓ, not constants
            expr = expr.replace(lambda t: self._is(t, self._x),
                                lambda t: sp.log(self._q[t.indices[0]]) + self.ell)
        if student:
            expr = expr.xreplace({self.ell: self.lse_explicit()})
            expr = expr.replace(lambda t: self._is(t, self._q),
                                lambda t: self.softmax_explicit(t.indices[0]))
        if self.transform is not None and (base == self._u or (base is None
                                                                and expr.has(self._u))):
            expr = expr.replace(lambda t: self._is(t, self._x),
                                lambda t: self.transform.apply(self._u[t.indices[0]]))
        if self.teacher and (base is None or base == self._t):
            z = sp.log(self.sum(lambda j: sp.exp(self.teacher_logit(j))))
            expr = expr.xreplace({self.ell_t: z})
            expr = expr.replace(lambda t: self._is(t, self._c),
                                lambda t: self.teacher_softmax_explicit(t.indices[0]))
        return expr

    def _fold(self, expr: sp.Expr) -> sp.Expr:
        """Back into the vocabulary: ``u → φ⁻¹(x)``, ``e^{x_a} → q_a e^ℓ``, teacher alike."""
        if self.transform is not None and expr.has(self._u):
            expr = expr.replace(lambda t: self._is(t, self._u),
                                lambda t: self.transform.inverse(self._x[t.indices[0]]))
        expr = _canonical_dummies(expr, ("j",))
        expr = self._fold_softmax(expr, self.x, self._q, self.ell)
        if self.teacher:
            expr = self._fold_softmax(expr, self.teacher_logit, self._c, self.ell_t)
        return expr

    def _fold_softmax(self, expr, logit, base, ell) -> sp.Expr:
        """``Σ_j e^{logit_j} → e^ℓ`` and ``e^{k·logit_a} → (base_a e^ℓ)^k`` (any dummy)."""
        def is_z(t) -> bool:
            if not isinstance(t, sp.Sum) or len(t.limits) != 1:
                return False
            (d, lo, hi), = t.limits
            return lo == 1 and hi == self.n and t.function == sp.exp(logit(d))

        if not expr.has(sp.Sum) or not any(is_z(t) for t in expr.atoms(sp.Sum)):
            return expr
        z = sp.Dummy("Z", positive=True)
        expr = expr.replace(is_z, lambda t: z)
        a, k = sp.Wild("a"), sp.Wild("k", exclude=[base])
        pattern = k * logit(a)

        def fold(t):
            factors = []
            for term in sp.Add.make_args(sp.expand(t.args[0])):
                hit = term.match(pattern)
                if hit is None or a not in hit or not hit[k].is_number:
                    return t
                factors.append((base[hit[a]] * z) ** hit[k])
            return sp.Mul(*factors)

        expr = expr.replace(lambda t: isinstance(t, sp.exp), fold)
        expr = sp.expand(sp.expand_log(sp.expand(expr)))
        expr = expr.xreplace({sp.log(z): ell})
        return expr.xreplace({z: sp.exp(ell)})

    def _derivative(self, d: sp.Derivative) -> sp.Expr:
        if d in self._cache:
            return self._cache[d]
        f = d.expr
        for var, count in d.variable_count:
            f = self._substitute(f, var)
            if _binds(f, var):
                # ∂/∂x_j of Σ_j v_j x_j: the sum's j is another index than x_j's (SymPy's
                # diff would differentiate every x_j in the sum: Σ_j v_j, not v_j)
                f = _fresh_dummies(f)
            f = sp.diff(f, (var, count))
            f = self._fold(self._sift(f))
        self._cache[d] = f
        return f

    def _derivatives(self, expr: sp.Expr) -> sp.Expr:
        return expr.replace(lambda t: isinstance(t, sp.Derivative), self._derivative)

    # -- steering -------------------------------------------------------
    def _drop_piecewise(self, expr: sp.Expr) -> sp.Expr:
        """Resolve ``Piecewise`` conditions with the index range ``1 ≤ s ≤ n``.

        ``s``: a free index, or the dummy of an enclosing sum over ``1..n``; a
        dummy over another range (or a bound index) is not assumed in range.
        """
        if not expr.has(sp.Piecewise):
            return expr

        def facts(ranged) -> dict[sp.Basic, Any]:
            found: dict[sp.Basic, Any] = {}
            for s in ranged:
                for rel in (sp.Ge(s, 1), sp.Le(1, s), sp.Le(s, self.n), sp.Ge(self.n, s),
                            sp.Gt(s, 0), sp.Lt(0, s)):
                    found[rel] = sp.true
            return found

        def pick(pw: sp.Piecewise, known) -> sp.Expr:
            for value, cond in pw.args:
                decided = cond.xreplace(known)
                if decided == sp.true:
                    return value
                if decided != sp.false:
                    return pw  # undecided: leave it, the comparison will fail
            return pw

        def walk(e: sp.Basic, ranged: frozenset) -> sp.Basic:
            if not e.has(sp.Piecewise):
                return e
            if isinstance(e, sp.Sum):
                dummies = {lim[0] for lim in e.limits}
                full = {lim[0] for lim in e.limits if tuple(lim[1:]) == (1, self.n)}
                inner = frozenset((ranged - dummies) | full)
                return sp.Sum(walk(e.function, inner), *e.limits)
            args = [walk(a, ranged) for a in e.args]
            e = e.func(*args) if args != list(e.args) else e
            return pick(e, facts(ranged)) if isinstance(e, sp.Piecewise) else e

        return walk(expr, self._indices())

    def _indices(self) -> frozenset[sp.Symbol]:
        """The free indices, each in ``1..n`` by the standing index range."""
        return frozenset((self.i, self.j, self.k, self.l))

    def _sift(self, expr: sp.Expr) -> sp.Expr:
        """Sums made linear and ``Σ_j f_j δ_ja = f_a`` (the index range: ``1 ≤ a ≤ n``).

        By hand rather than ``Sum.doit()``, which also tries (Gosper's
        algorithm) to find closed forms of every other sum: seconds each,
        for sums that have none.  What ``doit`` would leave is a ``Piecewise``
        on ``1 ≤ a ≤ n``, which the standing index range decides the same way.
        """
        expr = _linearise(expr)
        if expr.has(sp.Derivative):  # the derivatives only: not Sum.doit's conventions
            expr = expr.replace(lambda t: isinstance(t, sp.Derivative),
                                lambda t: t.doit(deep=False))
            expr = _linearise(self._drop_piecewise(expr))
        return _linearise(_sift_deltas(expr, self.n, self._indices()))

    def _zero(self, e: sp.Expr, assumptions: Sequence[str]) -> bool:
        """``e = 0`` with every remaining sum as an independent atom."""
        if "positive_targets" in assumptions:
            e = e.replace(lambda t: self._is(t, self._c),
                          lambda t: self._c_positive[t.indices[0]])
        e = sp.expand(sp.expand_log(sp.expand(e)))
        if e.has(self._q):  # x_a = log q_a + ℓ (definitions of q and ℓ): one set of atoms
            e = e.replace(lambda t: self._is(t, self._x),
                          lambda t: sp.log(self._q[t.indices[0]]) + self.ell)
            e = sp.expand(sp.expand_log(e))
        e = _canonical_dummies(self._sift(e), ("_u",))
        e = _linearise(_canonical_sum_bodies(e))
        e = _canonical_dummies(e, ("_u",))
        if "normalised" in assumptions:
            u = sp.Symbol("_u", integer=True)
            for base in (self._c, self._c_positive):
                e = e.xreplace({sp.Sum(base[u], (u, 1, self.n)): sp.S.One})
        atoms = {s: sp.Dummy("S") for s in e.atoms(sp.Sum)}
        return sp.cancel(sp.together(sp.expand_power_exp(e.xreplace(atoms)))) == 0

    def logits_in_q(self, expr: Any) -> Any:
        if not (expr.has(self._x) and expr.has(self._q)):
            return expr
        e = expr.replace(lambda t: self._is(t, self._x),
                         lambda t: sp.log(self._q[t.indices[0]]) + self.ell)
        e = _canonical_dummies(_linearise(sp.expand(e)), ("j",))
        return sp.factor_terms(_squares(e))

    # -- Context API ----------------------------------------------------
    def evaluate(self, expr: Any) -> Any:
        expr = self._fold(self._sift(self._derivatives(expr)))
        return _canonical_dummies(sp.factor_terms(expr), ("j",))

    def normalise(self, expr: Any) -> Any:
        expr = _canonical_dummies(expr, ("j",))
        expr = expr.xreplace({self.sum(self.c): sp.S.One})
        if self.teacher:
            return expr
        return expr.replace(lambda t: self._is(t, self._c), lambda t: self._p[t.indices[0]])

    def decide(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        if isinstance(lhs, sp.MatrixBase) or isinstance(rhs, sp.MatrixBase):
            return False  # symbolic-n steps are single entries with free indices
        for side in (lhs, rhs):
            # sums are renamed, sifted and differentiated index-aware; a product's or an
            # integral's index is not (SymPy's ∂/∂x_j of Π_j x_j differentiates every factor)
            found = sp.sympify(side).atoms(*_FOREIGN_BINDERS)
            if found:
                raise ProofError(f"{type(next(iter(found))).__name__}: the symbolic context "
                                 "decides sums (and derivatives) only")
        e = self._derivatives(sp.sympify(lhs)) - self._derivatives(sp.sympify(rhs))
        e = self._substitute_terms(e)
        if "normalised" in assumptions and not self.teacher:
            e = e.replace(lambda t: self._is(t, self._p), lambda t: self._c[t.indices[0]])
        if self._zero(e, assumptions):
            return True
        return self._zero(self._substitute(e, None), assumptions)


_FOREIGN_BINDERS = (sp.Product, sp.Integral, sp.Lambda)


def _squares(expr: sp.Expr) -> sp.Expr:
    """``1/(q² − 2q + 1)`` as ``1/(1 − q)²``: polynomial denominators factored."""
    def factored(t: sp.Pow) -> sp.Expr:
        f = sp.factor(t.base)
        if isinstance(f, sp.Pow) and f.base.is_Add and f.exp.is_even and any(
                a.is_Number and a.is_negative for a in f.base.args):
            f = sp.Pow(-f.base, f.exp)
        return f ** t.exp

    return expr.replace(lambda t: isinstance(t, sp.Pow) and t.exp.is_negative
                        and t.base.is_Add and t.base.is_polynomial(), factored)


def _canonical_sum_bodies(expr: sp.Expr) -> sp.Expr:
    """Each sum's body in one normal form (logs expanded by positivity, powers split, cancelled)."""
    def body(s: sp.Sum) -> sp.Expr:
        f = sp.expand_power_exp(sp.expand_log(s.function))
        return sp.Sum(sp.factor_terms(sp.cancel(sp.together(f))), *s.limits)

    return expr.replace(lambda t: isinstance(t, sp.Sum), body)


def _sift_deltas(expr: sp.Expr, n: sp.Expr, ranged: frozenset[sp.Basic]) -> sp.Expr:
    """``Σ_{j=1}^{n} f_j δ_ja → f_a`` in every (linear) sum whose body has the factor ``δ_ja``.

    Only over the full range ``1..n`` and only for an ``a`` known to lie in it
    (``ranged``: the free indices, and the dummies of enclosing sums over
    ``1..n``); otherwise the delta may pick no term at all.
    """
    if not expr.has(sp.KroneckerDelta):
        return expr
    if isinstance(expr, sp.Sum):
        dummies = {lim[0] for lim in expr.limits}
        full = len(expr.limits) == 1 and tuple(expr.limits[0][1:]) == (1, n)
        inner = (ranged - dummies) | (dummies if full else set())
        body = _sift_deltas(expr.function, n, frozenset(inner))
        if full:
            (j, _, _), = expr.limits
            factors = sp.Mul.make_args(body)
            for f in factors:
                if isinstance(f, sp.KroneckerDelta) and j in f.args and f.args[0] != f.args[1]:
                    (other,) = set(f.args) - {j}
                    rest = sp.Mul(*[g for g in factors if g is not f])
                    if any(j in t.bound_symbols for t in rest.atoms(sp.Sum)):
                        # a sum inside binding j again (its bounds read the outer j):
                        # j → other would make other its index, capturing a free other
                        rest = _fresh_dummies(rest)
                    if other in ranged and not any({j, other} & set(t.bound_symbols)
                                                   for t in _binders(rest)):
                        return rest.xreplace({j: other})
        return sp.Sum(body, *expr.limits)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_sift_deltas(a, n, ranged) for a in expr.args])


def _binders(expr: sp.Basic) -> list[sp.Basic]:
    """The nodes of ``expr`` that bind symbols (sums, products, ``Subs`` …)."""
    return [t for t in sp.preorder_traversal(expr) if getattr(t, "bound_symbols", None)]


def _linearise(expr: sp.Expr) -> sp.Expr:
    """Split sums over ``+`` and pull factors free of the dummy out of them.

    A term free of the dummy counts ``hi − lo + 1`` times only where that is
    known to be ``≥ 0``, between integer bounds: below, the sum is empty (0) to a
    reader, while SymPy's convention makes ``Σ_{j=1}^{k-2} 1 = k − 2`` (−1 for
    ``k = 1``); ``Σ_{j=1}^{n/2} 1`` has ``⌊n/2⌋`` terms, not ``n/2``.
    """
    if isinstance(expr, sp.Sum) and len(expr.limits) == 1:
        (idx, lo, hi), = expr.limits
        count = hi - lo + 1
        terms = []
        for term in sp.Add.make_args(sp.expand(_linearise(expr.function))):
            # factor_terms first: a factor free of idx may sit inside a denominator
            outside, inside = sp.factor_terms(term).as_independent(idx, as_Add=False)
            if inside.has(idx) or not (count.is_nonnegative and lo.is_integer
                                       and hi.is_integer):
                terms.append(outside * sp.Sum(inside, (idx, lo, hi)))
            else:
                terms.append(outside * inside * count)
        return sp.Add(*terms)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_linearise(a) for a in expr.args])


def _canonical_dummies(expr: sp.Expr, names: tuple[str, ...]) -> sp.Expr:
    """Rename each sum's dummy by nesting depth so equal sums compare equal.

    Renaming never captures: every dummy first becomes a fresh ``Dummy``, and
    the canonical names are chosen unlike any free symbol's name.
    """
    if not expr.has(sp.Sum):
        return expr
    taken = {str(s) for s in expr.free_symbols}
    # and the indices of what the renaming leaves alone (a Subs …): a sum inside renamed
    # like one of them was captured
    taken |= {str(s) for t in _binders(expr) if not isinstance(t, sp.Sum) for s in t.bound_symbols}
    prefix = names[0]
    while any(t == prefix or (t.startswith(prefix) and t[len(prefix):].isdigit())
              for t in taken):
        prefix = "_" + prefix
    return _rename_dummies(_fresh_dummies(expr), prefix, 0)


def _binds(expr: sp.Expr, var: sp.Basic) -> bool:
    """Whether a sum in ``expr`` binds an index that ``var`` (``x_j``) has free."""
    free = {s for s in var.free_symbols if isinstance(s, sp.Symbol)}
    return bool(free) and any(limit[0] in free for s in expr.atoms(sp.Sum) for limit in s.limits)


def _fresh_dummies(expr: sp.Expr) -> sp.Expr:
    """Every sum's index a new ``Dummy``, several limits too (SymPy merges ``Σ_u Σ_i``
    into one sum of two: left alone, ``∂/∂x_j`` of ``Σ_{j,i} v_i x_j`` took every ``x_j``)."""
    if isinstance(expr, sp.Sum) and all(len(lim) == 3 for lim in expr.limits):
        body, limits = expr.function, list(expr.limits)
        for p, (idx, lo, hi) in enumerate(limits):  # innermost first: the body's index is its
            d = sp.Dummy(str(idx), integer=True)
            body = body.xreplace({idx: d})
            limits[:p] = [(v, a.xreplace({idx: d}), b.xreplace({idx: d})) for v, a, b in limits[:p]]
            limits[p] = (d, lo, hi)
        return sp.Sum(_fresh_dummies(body), *limits)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_fresh_dummies(a) for a in expr.args])


def _rename_dummies(expr: sp.Expr, prefix: str, depth: int) -> sp.Expr:
    """Fresh dummies (:func:`_fresh_dummies`) named by nesting depth, the outermost first."""
    if isinstance(expr, sp.Sum) and all(len(lim) == 3 for lim in expr.limits):
        names = {}
        for idx, _, _ in reversed(expr.limits):
            names[idx] = sp.Symbol(prefix if depth == 0 else f"{prefix}{depth + 1}", integer=True)
            depth += 1
        renamed = expr.xreplace(names)  # each index a Dummy of its own: no capture
        return sp.Sum(_rename_dummies(renamed.function, prefix, depth), *renamed.limits)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_rename_dummies(a, prefix, depth) for a in expr.args])
