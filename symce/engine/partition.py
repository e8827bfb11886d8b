"""The classes split into slices (ranks of a tensor-parallel head): the combination rule.

With the classes ``1..n`` partitioned into ``R`` contiguous slices
``S_r = {b_{r-1}+1, …, b_r}`` (``b_0 = 0``, ``b_R = n``), every quantity the
loss needs from a whole row is a combination of per-slice quantities:

* ``class_sums``: a class sum ``Σ_j f_j`` (``e^{x_j − M}``, the target logit
  ``δ_jy x_j``, ``w_j z_j``, ``c_j z_j``, the weights' total ``Σ w_j`` …) is
  the sum over the slices of the slices' partial sums;
* ``lse``: ``ℓ = log Σ_j e^{x_j} = M + log Σ_r Σ_{j∈S_r} e^{x_j − M}`` for any
  real ``M`` — the kernels take ``M = max_r m_r`` (``m_r`` a slice's
  maximum) so that no exponent is positive;
* ``slice_gradient``: the derived gradient ``∂L/∂x_k = q_k Σc − c_k + 2λℓ q_k``
  of a class ``k`` of a slice needs only ``x_k``, ``c_k`` and the combined
  per-row scalars ``M``, ``Σ_r Σ_{S_r} e^{x_j−M}``, ``Σ_r Σ_{S_r} c_j``:
  it is local to the slice.

:func:`partition_derivation` proves them for a symbolic number of slices and
symbolic boundaries (the slice sums telescope), and for a concrete split
(:data:`CONCRETE_SPLIT`, a one-class slice among them, with the maximum of the
slices' maxima) where every sum is written out.  The gradient is the
cross-entropy derivation's own ``gradient`` and ``z_gradient`` steps, the
definitions of ``q`` and ``ℓ`` substituted.  Each step is decided by SymPy
(:class:`PartitionContext`); the named assumption ``partition`` (the
boundaries start at 0 and end at ``n``) must be needed by every step that
states it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sympy as sp

from symce.errors import ProofError
from symce.proof import Derivation, Step, inexact

#: the concrete split proved: slice sizes (one slice of a single class)
CONCRETE_SPLIT = (2, 1, 3)

# nondecreasing: the check reads Σ_{j=a}^{b} by SymPy's convention (−Σ_{b+1}^{a−1} for
# b < a − 1), under which the slices telescope for any boundaries; a reader's (no term
# for b < a) agrees where the slices are nondecreasing, as the kernels' are
ASSUMPTIONS = {"partition": r"0 = b_0 \le b_1 \le \dots \le b_R = n"}


class PartitionContext:
    """Decides the partition steps: slice sums as differences of prefix sums,
    sums over the slices telescoped, the boundaries' assumption substituted,
    factors free of a sum's index pulled out, sums of exponentials positive."""

    assumptions = ASSUMPTIONS
    loss = None

    def __init__(self, n: Any, R: Any, boundary: sp.IndexedBase | None) -> None:
        self.n, self.R, self.boundary = n, R, boundary
        self._decided: dict[tuple, bool] = {}

    def equal(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        if inexact(lhs) or inexact(rhs):
            raise ProofError("a floating-point number in an equality: rounding proves nothing")
        key = (lhs, rhs, tuple(assumptions))
        if key not in self._decided:
            self._decided[key] = self._decide(sp.sympify(lhs) - sp.sympify(rhs), assumptions)
        return self._decided[key]

    equal_quickly = equal

    def _decide(self, e: sp.Expr, assumptions: Sequence[str]) -> bool:
        if _binds_other_than_sums(e):
            # a sum replaced by an atom below would lose its dependence on a variable
            # that a derivative, integral, product … binds: refuse rather than guess
            return False
        if not self._counts_known(e, (), "partition" in assumptions):
            # decided below by SymPy's (Karr's) reading of a sum, which a reader's (no
            # term when the top is below the bottom) agrees with only where every sum
            # has a known count >= 0: Σ_{j=5}^{3} f_j is -f_4 for SymPy, 0 for a reader
            return False
        e = e.replace(lambda t: isinstance(t, sp.Sum), _prefix_form)
        e = e.doit(deep=False) if self.R is not None else e
        e = _telescope(e)
        if "partition" in assumptions and self.boundary is not None:
            e = e.xreplace({self.boundary[0]: sp.S.Zero, self.boundary[self.R]: self.n})
            e = e.doit()  # an empty prefix sum is 0
        e = e.replace(lambda t: isinstance(t, sp.Sum), _pull_out)
        atoms = {s: _atom(s, self.n) for s in sorted(e.atoms(sp.Sum), key=sp.default_sort_key)}
        e = e.xreplace(atoms)
        e = sp.expand_log(e.replace(lambda t: isinstance(t, sp.log), _log_form))
        return sp.simplify(e) == 0


    def _counts_known(self, e: sp.Basic, ranges: tuple, partition: bool) -> bool:
        """Whether every sum in ``e`` has a term count ``hi − lo + 1`` known to be ≥ 0:
        by SymPy's assumptions, or under ``partition`` (``0 = b_0 ≤ b_1 ≤ … ≤ b_R =
        n``) as ``b_t − b_s`` with ``t ≥ s``, ``b_t`` with ``t ≥ 0`` or ``n − b_s`` with
        ``s ≤ R``, plus a count known ≥ 0; ``ranges``: the enclosing sums' limits."""
        if isinstance(e, sp.Sum):
            inner = ranges
            for limit in reversed(e.limits):  # SymPy lists the innermost limit first
                if not self._count_known(limit, inner, partition):
                    return False
                inner = (*inner, limit)
            return self._counts_known(e.function, inner, partition)
        return all(self._counts_known(a, ranges, partition) for a in e.args)

    def _count_known(self, limit: tuple, ranges: tuple, partition: bool) -> bool:
        _, lo, hi = limit

        def at_least_zero(t: sp.Expr) -> bool:
            """``t ≥ 0`` for every value of the enclosing sums' indices it reads."""
            t = sp.expand(t)
            for v, v_lo, v_hi in reversed(ranges):  # the innermost index first
                if t.has(v):
                    coefficient = t.coeff(v)
                    if not coefficient.is_number or t.coeff(v, 0).has(v):
                        return False
                    t = sp.expand(t.subs(v, v_lo if coefficient >= 0 else v_hi))
            return bool(t.is_nonnegative)

        count = sp.expand(hi - lo + 1)
        if at_least_zero(count):
            return True
        if not partition or self.boundary is None:
            return False
        b = self.boundary
        count = sp.expand(count.xreplace({b[0]: sp.S.Zero, b[self.R]: self.n}))
        plus, minus, rest = [], [], sp.S.Zero
        for term in sp.Add.make_args(count):
            if isinstance(term, sp.Indexed) and term.base == b:
                plus.append(term.indices[0])
            elif isinstance(-term, sp.Indexed) and (-term).base == b:
                minus.append((-term).indices[0])
            else:
                rest += term
        if len(plus) == 1 and len(minus) == 1:  # b_t − b_s, t ≥ s
            return at_least_zero(plus[0] - minus[0]) and at_least_zero(rest)
        if len(plus) == 1 and not minus:  # b_t ≥ b_0 = 0
            return at_least_zero(plus[0]) and at_least_zero(rest)
        if len(minus) == 1 and not plus:  # n − b_s ≥ 0 = b_R − b_s
            return at_least_zero(self.R - minus[0]) and at_least_zero(rest - self.n)
        return False


def _binds_other_than_sums(e: sp.Basic) -> bool:
    """Whether ``e`` holds a binder other than a sum (``Derivative``, ``Integral``,
    ``Product``, ``Subs``, ``Lambda`` …)."""
    return any(isinstance(t, sp.Derivative) or (
        not isinstance(t, sp.Sum) and getattr(t, "bound_symbols", None))
        for t in sp.preorder_traversal(e))


def _integer_limits(s: sp.Sum) -> bool:
    return all(v.is_integer and lo.is_integer and hi.is_integer for v, lo, hi in s.limits)


def _atom(s: sp.Sum, n: Any) -> sp.Dummy:
    """The atom that stands for the sum ``s``, with only what SymPy knows of it.

    Positive: one sum over ``1..n`` (``n ≥ 1``) of terms SymPy knows positive
    (``e^{x_j}``, ``x`` real).  Real: integer limits (a finite number of terms,
    signed by Karr's convention) and terms SymPy knows real.  Otherwise a
    complex atom: nothing is assumed of a sum of terms that may be complex
    (``e^{z_j}``, ``z`` complex), of an empty or negatively counted sum, or of
    a sum with more limits than one.
    """
    if not _integer_limits(s):
        return sp.Dummy("U")
    positive_count = sp.sympify(n).is_positive and sp.sympify(n).is_integer
    if (len(s.limits) == 1 and s.limits[0][1:] == (1, n) and positive_count
            and s.function.is_positive):
        return sp.Dummy("S", positive=True)
    if s.function.is_real:
        return sp.Dummy("T", real=True)
    return sp.Dummy("U")


def _prefix_form(s: sp.Sum) -> sp.Expr:
    """``Σ_{j=a}^{b} f_j = Σ_{j=1}^{b} f_j − Σ_{j=1}^{a−1} f_j`` (SymPy's convention
    for any ``a``, ``b``): a slice's sum as the difference of two prefix sums."""
    if len(s.limits) != 1:
        return s
    (j, lo, hi), = s.limits
    if lo == 1 or s.function.has(sp.Sum) or not _integer_limits(s):
        return s
    return sp.Sum(s.function, (j, 1, hi)) - sp.Sum(s.function, (j, 1, lo - 1))


def _telescope(e: sp.Expr) -> sp.Expr:
    """Sums over the slices of prefix differences, evaluated (they telescope)."""
    def over_slices(t: sp.Sum) -> sp.Expr:
        if len(t.limits) == 2:  # SymPy writes Σ_r Σ_j as one sum of two limits
            inner, outer = sp.Sum(t.function, t.limits[0]), t.limits[1]
        elif t.function.has(sp.Sum):
            inner, outer = t.function, t.limits[0]
        else:
            return t
        body = inner.replace(lambda u: isinstance(u, sp.Sum), _prefix_form)
        return sp.Sum(body, outer).doit()

    return e.replace(lambda t: isinstance(t, sp.Sum) and (
        len(t.limits) == 2 or t.function.has(sp.Sum)), over_slices)


def _pull_out(s: sp.Sum) -> sp.Expr:
    """Factors free of the index out of a sum (``Σ_j e^{x_j − M} = e^{−M} Σ_j e^{x_j}``)."""
    if len(s.limits) != 1:
        return s
    (j, lo, hi), = s.limits
    total = sp.S.Zero
    body = sp.expand(s.function, power_exp=True, log=False, mul=True)
    for term in sp.Add.make_args(body):
        outside, inside = term.as_independent(j, as_Add=False)
        total += outside * sp.Sum(inside, (j, lo, hi))
    return total


def _log_form(t: sp.log) -> sp.Expr:
    """A logarithm's argument with the exponentials split and common factors out."""
    arg = sp.factor_terms(sp.expand(t.args[0], power_exp=True, log=False))
    return sp.log(arg)


# -- the steps ---------------------------------------------------------------
def _gradient_parts(loss_derivation: Derivation):
    """The cross-entropy derivation's gradient (its two terms), in the logits."""
    ctx = loss_derivation.context
    k = ctx.k
    grad = loss_derivation.step("gradient").rhs + loss_derivation.step("z_gradient").rhs
    q_k = ctx.softmax_explicit(k)
    return ctx, grad.xreplace({ctx.q(k): q_k, ctx.lse(): ctx.lse_explicit()})


def _symbolic_steps(loss_derivation: Derivation) -> tuple[PartitionContext, list[Step]]:
    lctx, grad = _gradient_parts(loss_derivation)
    n, k, j = lctx.n, lctx.k, lctx.j
    x, c = lctx._x, lctx._c
    R = sp.Symbol("R", integer=True, positive=True)
    r = sp.Symbol("r", integer=True)
    b = sp.IndexedBase("b", integer=True)
    M = sp.Symbol("M", real=True)
    f = sp.IndexedBase("f", real=True)
    lam = sp.Symbol("lambda", nonnegative=True)

    def sliced(body):
        return sp.Sum(sp.Sum(body(j), (j, b[r - 1] + 1, b[r])), (r, 1, R))

    def whole(body):
        return sp.Sum(body(j), (j, 1, n))

    prefix = sp.Sum(sp.Sum(f[j], (j, 1, b[r])) - sp.Sum(f[j], (j, 1, b[r - 1])), (r, 1, R))
    S = sliced(lambda i: sp.exp(x[i] - M))
    C = sliced(lambda i: c[i])
    local = (sp.exp(x[k] - M) / S) * C - c[k] + 2 * lam * (M + sp.log(S)) * sp.exp(x[k] - M) / S
    if not grad.has(lam):
        raise ProofError("the cross-entropy gradient has no z-loss term to localise")
    m_r = sp.Symbol("m_r", real=True)
    a = sp.IndexedBase("a", real=True)

    def own(body):
        return sp.Sum(body(j), (j, b[r - 1] + 1, b[r]))

    steps = [
        Step("class_sums", "Class sums are sums of per-slice partial sums",
             whole(lambda i: f[i]), sliced(lambda i: f[i]),
             r"the slices $S_r = \{b_{r-1}+1, \dots, b_r\}$ partition $1..n$: each slice's sum "
             r"is a difference of prefix sums, and the sum over $r$ telescopes to "
             r"$\sum_{j=1}^{b_R} f_j - \sum_{j=1}^{b_0} f_j$",
             ("partition",), via=(prefix,)),
        Step("lse", "The log-sum-exp from the slices",
             sp.log(whole(lambda i: sp.exp(x[i]))), M + sp.log(S),
             r"for any real $M$: $\sum_j e^{x_j} = e^{M} \sum_r \sum_{j \in S_r} e^{x_j - M}$ "
             r"(the class sums above) and the sum is positive; the kernels take "
             r"$M = \max_r m_r$",
             ("partition",), via=(M + sp.log(whole(lambda i: sp.exp(x[i] - M))),)),
        Step("slice_gradient", "The gradient of a slice is local",
             grad, local,
             r"the derived $\partial L/\partial x_k = q_k \sum_j c_j - c_k + 2 \lambda \ell q_k$ "
             r"with $q_k = e^{x_k - M} / \sum_r \sum_{j \in S_r} e^{x_j - M}$: for $k \in S_r$ "
             r"it reads $x_k$, $c_k$ and the combined per-row scalars only",
             ("partition",)),
        Step("rescale_exp", "A slice's sum of exponentials moved to the global shift",
             own(lambda i: sp.exp(x[i] - M)), sp.exp(m_r - M) * own(lambda i: sp.exp(x[i] - m_r)),
             r"for any real $m_r$, $M$: $e^{x_j - M} = e^{m_r - M} e^{x_j - m_r}$; a slice "
             r"sums its exponentials shifted by its own maximum $m_r$ in one walk, and the "
             r"factor $e^{m_r - M}$ moves them to the combined $M = \max_r m_r$",
             ("partition",)),
        Step("rescale_linear", "A slice's sum of shifted logits moved to the global shift",
             own(lambda i: a[i] * (x[i] - M)),
             own(lambda i: a[i] * (x[i] - m_r)) + (m_r - M) * own(lambda i: a[i]),
             r"for any real $m_r$, $M$ and coefficients $a_j$ ($1$, $w_j$, $p_j$, "
             r"$p_j w_j$): $x_j - M = (x_j - m_r) + (m_r - M)$", ("partition",)),
    ]
    return PartitionContext(n, R, b), steps


def _concrete_steps(loss_derivation: Derivation, split: Sequence[int]
                    ) -> tuple[PartitionContext, list[Step]]:
    lctx, grad = _gradient_parts(loss_derivation)
    n = sum(split)
    x = [sp.Symbol(f"x_{a}", real=True) for a in range(1, n + 1)]
    c = [sp.Symbol(f"c_{a}", real=True) for a in range(1, n + 1)]
    lam = sp.Symbol("lambda", nonnegative=True)
    bounds = [sum(split[:r]) for r in range(len(split) + 1)]
    slices = [range(bounds[r], bounds[r + 1]) for r in range(len(split))]
    m = [sp.Max(*[x[a] for a in s]) for s in slices]
    M = sp.Max(*m)
    S = sp.Add(*[sp.Add(*[sp.exp(x[a] - M) for a in s]) for s in slices], evaluate=False)
    C = sp.Add(*[sp.Add(*[c[a] for a in s]) for s in slices], evaluate=False)
    k = bounds[1]  # the one-class slice's class (0-based)
    table = {lctx._x[a + 1]: x[a] for a in range(n)} | {lctx._c[a + 1]: c[a] for a in range(n)}

    def concrete(expr):
        expr = expr.xreplace({lctx.k: k + 1, lctx.n: n}).doit()
        return expr.xreplace(table)

    local = (sp.exp(x[k] - M) / S) * C - c[k] + 2 * lam * (M + sp.log(S)) * sp.exp(x[k] - M) / S
    steps = [
        Step("max_of_maxima", "The maximum of the slices' maxima",
             sp.Max(*x), M, "the maximum over all classes is the maximum of each slice's"),
        Step("lse_concrete", f"The log-sum-exp from {len(split)} slices of sizes "
             f"{', '.join(map(str, split))}",
             sp.log(sp.Add(*[sp.exp(v) for v in x])), M + sp.log(S),
             r"$e^{x_j} = e^{M} e^{x_j - M}$ and the sum is positive"),
        Step("slice_gradient_concrete", "The gradient of the one-class slice",
             concrete(grad), local,
             "the derived gradient, written out; it reads the slice's own logit and "
             "coefficient and the combined per-row scalars only"),
    ]
    return PartitionContext(n, None, None), steps


@functools.cache
def partition_derivation(split: tuple[int, ...] | None = None) -> Derivation:
    """The checked combination rule: symbolic slices (``split=None``) or a concrete split.

    >>> partition_derivation().step("lse").rule.startswith("for any real")
    True
    """
    from symce.codegen.ir import derivation_of

    loss = derivation_of("cross_entropy")
    if split is None:
        ctx, steps = _symbolic_steps(loss)
        n = None
    else:
        ctx, steps = _concrete_steps(loss, split)
        n = ctx.n
    return Derivation(loss="cross_entropy", description="the classes split into slices",
                      n=n, steps=tuple(steps), context=ctx).check()


def check_partition() -> tuple[Derivation, Derivation]:
    """Both derivations, checked (``ProofError`` at the first step that does not follow)."""
    return partition_derivation(), partition_derivation(CONCRETE_SPLIT)


__all__ = ["CONCRETE_SPLIT", "PartitionContext", "check_partition", "partition_derivation"]
