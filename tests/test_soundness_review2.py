"""Second adversarial soundness review: false identities the step checkers accepted.

Every identity stated false here is shown false first by an independent
evaluation (:func:`value`: numbers for every symbol, each sum and product a
loop over the integers between its bounds, none when there are none, as a
reader reads it; derivatives by central differences of functions written
here), then refused by the checker.  The true identities beside them keep a
fix from passing by refusing everything.
"""

from __future__ import annotations

import math

import pytest
import sympy as sp

from symce.engine.concrete import ConcreteContext
from symce.engine.head import HeadContext
from symce.engine.partition import PartitionContext
from symce.engine.symbolic import SymbolicContext
from symce.errors import ProofError
from symce.proof import Derivation, Step

D = sp.Derivative
KD = sp.KroneckerDelta


# -- an independent evaluator ------------------------------------------------------
def value(e, env: dict) -> float:
    """``e`` as a number: ``env`` maps symbols to numbers, indexed bases to functions."""
    e = sp.sympify(e)
    if isinstance(e, (sp.Sum, sp.Product)):
        return _loop(e, list(e.limits), env)
    if isinstance(e, sp.Indexed):
        return env[e.base](*[_whole(value(i, env)) for i in e.indices])
    if isinstance(e, sp.Symbol):
        return env[e]
    if e.is_Number:
        return float(e)
    if isinstance(e, KD):
        a, b = (value(t, env) for t in e.args)
        return 1.0 if a == b else 0.0
    if isinstance(e, sp.Piecewise):
        for val, cond in e.args:
            if cond == sp.true or _holds(cond, env):
                return value(val, env)
        raise ValueError(f"no branch of {e} holds")
    args = [value(a, env) for a in e.args]
    if isinstance(e, sp.Add):
        return math.fsum(args)
    if isinstance(e, sp.Mul):
        return math.prod(args)
    if isinstance(e, sp.Pow):
        return args[0] ** args[1]
    table = {sp.exp: math.exp, sp.log: math.log, sp.Max: max, sp.Min: min,
             sp.sqrt: math.sqrt, sp.Abs: abs}
    return table[e.func](*args)


def _loop(e, limits, env):
    if not limits:
        return value(e.function, env)
    var, lo, hi = limits[-1]  # SymPy lists the outermost limit last
    lo, hi = value(lo, env), value(hi, env)
    terms = [_loop(e, limits[:-1], {**env, var: t})
             for t in range(math.ceil(lo), math.floor(hi) + 1)]  # none: the sum is empty
    return math.fsum(terms) if isinstance(e, sp.Sum) else math.prod(terms)


def _whole(v: float) -> int:
    assert v == int(v), v
    return int(v)


def _holds(cond, env) -> bool:
    if isinstance(cond, sp.And):
        return all(_holds(c, env) for c in cond.args)
    ops = {sp.GreaterThan: float.__ge__, sp.StrictGreaterThan: float.__gt__,
           sp.LessThan: float.__le__, sp.StrictLessThan: float.__lt__}
    return ops[type(cond)](float(value(cond.lhs, env)), float(value(cond.rhs, env)))


def differ(lhs, rhs, env) -> bool:
    a, b = value(lhs, env), value(rhs, env)
    return abs(a - b) > 1e-6 * (1 + abs(a) + abs(b))


def softmax_env(ctx: SymbolicContext, xs, cs, **free) -> dict:
    """Numbers for the symbolic context's vocabulary: ``q`` the softmax of ``xs``."""
    z = math.fsum(math.exp(v) for v in xs)

    def entry(values):
        return lambda a: values[a - 1]  # 1-based; out of range raises (no silent wrap)

    qs = [math.exp(v) / z for v in xs]
    env = {ctx._x: entry(xs), ctx._q: entry(qs), ctx._c: entry(cs), ctx.n: float(len(xs)),
           ctx.ell: math.log(z)}
    env.update({getattr(ctx, name): float(v) for name, v in free.items()})
    return env


# -- helpers -------------------------------------------------------------------------
def check(ctx, lhs, rhs, assumptions=()) -> Derivation:
    n = ctx.n if isinstance(ctx.n, int) else None
    step = Step("s", "s", lhs, rhs, "the claim", tuple(assumptions))
    return Derivation("review", "", n, (step,), ctx).check()


def rejected(ctx, lhs, rhs, assumptions=()) -> None:
    with pytest.raises(ProofError):
        check(ctx, lhs, rhs, assumptions)


@pytest.fixture(scope="module")
def sym() -> SymbolicContext:
    return SymbolicContext()


@pytest.fixture(scope="module")
def part() -> PartitionContext:
    n, R = sp.Symbol("n", integer=True, positive=True), sp.Symbol("R", integer=True, positive=True)
    return PartitionContext(n, R, sp.IndexedBase("b", integer=True))


XS, CS = [0.3, -1.2, 0.9], [0.5, -0.25, 2.0]


# == holes found ======================================================================

# -- 1. Kronecker-delta sifting renamed a sum inside the term into a capture -------------
def test_sifting_does_not_capture_through_an_inner_sum_that_rebinds_the_dummy(sym):
    """``Σ_j δ_jk q_j Σ_{j=1}^{j} φ(x_j, x_k)``: the inner sum binds ``j`` again (its
    bound reads the outer ``j``).  Sifting wrote ``j → k`` into it, so its own index
    became ``k`` and captured the free ``x_k`` (``x_k`` itself, a factor, stays):
    ``q_k x_k Σ_{i=1}^{k} x_i / (1 + x_i⁴)``."""
    x, q, j, k, i, n = sym._x, sym.q, sym.j, sym.k, sym.i, sym.n

    def phi(a, b):
        return x[a] * x[b] / (1 + x[a] ** 2 * x[b] ** 2)

    lhs = sp.Sum(KD(j, k) * q(j) * sp.Sum(phi(j, k), (j, 1, j)), (j, 1, n))
    wrong = q(k) * x[k] * sp.Sum(x[i] / (1 + x[i] ** 4), (i, 1, k))
    right = q(k) * sp.Sum(phi(i, k), (i, 1, k))
    env = softmax_env(sym, XS, CS, k=2)
    assert differ(lhs, wrong, env) and not differ(lhs, right, env)
    rejected(sym, lhs, wrong)
    check(sym, lhs, right)  # the sift itself is right once the inner index is fresh


def test_sifting_does_not_capture_through_a_product_that_binds_the_other_index(sym):
    """``Σ_j δ_jk q_j Π_{k=1}^{n} (1 + x_j x_k)`` is ``q_k Π_l (1 + x_k x_l)``; sifting
    wrote ``j → k`` under the product's own ``k``: ``q_k Π_k (1 + x_k²)``."""
    x, q, j, k, m, n = sym._x, sym.q, sym.j, sym.k, sym.l, sym.n
    lhs = sp.Sum(KD(j, k) * q(j) * sp.Product(1 + x[j] * x[k], (k, 1, n)), (j, 1, n))
    wrong = q(k) * sp.Product(1 + x[k] ** 2, (k, 1, n))
    env = softmax_env(sym, XS, CS, k=2)
    assert differ(lhs, wrong, env)
    assert not differ(lhs, q(k) * sp.Product(1 + x[k] * x[m], (m, 1, n)), env)
    rejected(sym, lhs, wrong)


# -- 2. canonical renaming of sums captured an index bound by another binder --------------
def test_renaming_sums_avoids_the_indices_of_a_sum_with_several_limits(sym):
    """SymPy merges ``Σ_u Σ_i (…)`` into one sum of two limits, which the renaming
    leaves alone; the sum inside it was renamed ``_u``, the name of the merged
    sum's own index, which it then captured (``e^{x_v x_u}`` read as ``e^{x_v²}``)."""
    x, i, n = sym._x, sym.i, sym.n
    u, v = sp.Symbol("_u", integer=True), sp.Symbol("v", integer=True)
    lhs = sp.Sum(2 * sp.Sum(sp.exp(x[v] * x[u]), (v, 1, n)), (u, 1, n), (i, 1, n))
    wrong = sp.Sum(2 * sp.Sum(sp.exp(x[v] ** 2), (v, 1, n)), (u, 1, n), (i, 1, n))
    assert len(lhs.limits) == 2
    assert differ(lhs, wrong, softmax_env(sym, XS, CS))
    rejected(sym, lhs, wrong)
    check(sym, lhs, lhs.xreplace({v: sym.l}))  # a renamed inner index is still the same


def test_renaming_sums_avoids_the_index_of_a_product(sym):
    x, n = sym._x, sym.n
    u, v = sp.Symbol("_u", integer=True), sp.Symbol("v", integer=True)
    lhs = sp.Product(sp.Sum(sp.exp(x[v] * x[u]), (v, 1, n)), (u, 1, n))
    wrong = sp.Product(sp.Sum(sp.exp(x[v] ** 2), (v, 1, n)), (u, 1, n))
    assert differ(lhs, wrong, softmax_env(sym, XS, CS))
    rejected(sym, lhs, wrong)


def test_a_derivative_in_an_index_bound_by_a_sum_of_several_limits(sym):
    """``∂/∂x_j Σ_{j,i} v_i x_j`` is ``Σ_i v_i`` (the free ``j``); the sum of two limits
    kept its ``j``, so SymPy differentiated every ``x_j``: ``n Σ_i v_i``, and the
    engine's own evaluation derived that."""
    x, j, i, n = sym._x, sym.j, sym.i, sym.n
    v = sp.IndexedBase("v", real=True)
    lhs = sym.D(sp.Sum(v[i] * x[j], (j, 1, n), (i, 1, n)), x[j])
    wrong = sp.Sum(v[i], (j, 1, n), (i, 1, n))
    right = sp.Sum(v[i], (i, 1, n))
    vs = [0.7, -0.2, 1.3]

    def total(xs):  # Σ_{j,i} v_i x_j, and its derivative in x_2 by central differences
        return math.fsum(vi * xj for vi in vs for xj in xs)

    eps, up, down = 1e-6, [0.3, 1.0 + 1e-6, 0.9], [0.3, 1.0 - 1e-6, 0.9]
    numeric = (total(up) - total(down)) / (2 * eps)
    env = {**softmax_env(sym, XS, CS), v: lambda a: vs[a - 1]}
    assert abs(numeric - value(right, env)) < 1e-6 and differ(wrong, right, env)
    assert sym.evaluate(lhs) != wrong
    rejected(sym, lhs, wrong)
    swapped = sym.D(sp.Sum(v[i] * x[j], (i, 1, n), (j, 1, n)), x[j])
    rejected(sym, swapped, sp.Sum(v[i], (i, 1, n), (j, 1, n)))
    # (a sum of several limits is not sifted: the right one is not decided either)


# -- 3. a sum between bounds that are not integers ---------------------------------------
def test_a_sum_between_fractional_bounds_is_not_counted_by_the_bounds_difference(sym):
    """``Σ_{j=1}^{1/2} x_k`` has no term (no integer lies in ``[1, 1/2]``); the sum was
    counted ``1/2 − 1 + 1`` times.  ``Σ_{j=1}^{n/2}`` has ``⌊n/2⌋`` terms, not ``n/2``."""
    x, j, k, n = sym._x, sym.j, sym.k, sym.n
    half = sp.Rational(1, 2)
    env = softmax_env(sym, XS, CS, k=2)
    for lhs, wrong in ((sp.Sum(x[k], (j, 1, half)), x[k] / 2),
                       (sp.Sum(x[k], (j, 1, n / 2)), n * x[k] / 2),
                       (sp.Sum(x[k], (j, half, n)), (n + half) * x[k])):
        assert differ(lhs, wrong, env), lhs
        rejected(sym, lhs, wrong)
    check(sym, sp.Sum(x[k], (j, 1, n)), n * x[k])  # integer bounds: counted as before
    check(sym, sp.Sum(x[k], (j, 2, n)), (n - 1) * x[k])


# -- 4. a decision remembered from before a loss term was defined -----------------------------
def test_a_decision_made_before_a_term_is_defined_is_not_reused_after():
    """``L_z`` undefined is a plain symbol, and ``∂L_z/∂x_k = 0`` holds; once
    ``L_z := ℓ²`` it is ``2ℓ q_k``, but the remembered answer (and the cached
    derivative) still said 0."""
    ctx = SymbolicContext()
    Lz, k = sp.Symbol("L_z"), ctx.k
    claim = (ctx.D(Lz, ctx.x(k)), 0)
    assert ctx.equal(*claim, ())
    ctx.define_term(Lz, lambda: ctx.ell ** 2)
    xs, eps = list(XS), 1e-6

    def lz(values):
        return math.log(math.fsum(math.exp(v) for v in values)) ** 2

    up, down = list(xs), list(xs)
    up[1] += eps
    down[1] -= eps
    assert abs((lz(up) - lz(down)) / (2 * eps)) > 0.1  # ∂L_z/∂x_2 is not 0
    rejected(ctx, *claim)
    check(ctx, claim[0], 2 * ctx.ell * ctx.q(k))


def test_a_concrete_decision_made_before_a_term_is_defined_is_not_reused_after():
    ctx = ConcreteContext(2)
    Lz = sp.Symbol("L_z")
    claim = (ctx.D(Lz, ctx.x(0)), 0)
    assert ctx.equal(*claim, ())
    ctx.define_term(Lz, lambda: ctx.ell ** 2)
    rejected(ctx, *claim)
    check(ctx, claim[0], 2 * ctx.ell * ctx.q(0))


# -- 5. the head: SymPy's convention for a sum with fewer than no terms --------------------
def test_head_derivative_of_a_sum_that_may_be_empty_is_not_counted_below_zero():
    """``∂/∂h_a Σ_{i=1}^{j−2} h_a``: SymPy's ``doit`` counts the sum ``j − 2`` times
    (−1 for ``j = 1``, where the sum has no term and the derivative is 0)."""
    ctx = HeadContext()
    i, j, a = sp.Symbol("i"), ctx.j, ctx.a
    body = sp.Sum(ctx.h(a), (i, 1, j - 2))
    env = {ctx.j: 1.0, ctx.a: 1.0}
    for h in (0.5, 2.0):  # the sum is 0 whatever h_a is: its derivative is 0, not −1
        assert value(body, {**env, ctx._h: lambda _, h=h: h}) == 0
    assert value(j - 2, env) == -1
    rejected(ctx, D(body, ctx.h(a)), j - 2)
    check(ctx, D(sp.Sum(ctx.h(a), (i, 1, ctx.H)), ctx.h(a)), ctx.H)  # a count known ≥ 0


def test_concrete_head_does_not_evaluate_sums_by_sympys_convention():
    ctx = HeadContext(3, 2)
    i, m = sp.Symbol("i"), sp.Symbol("t")
    lhs = sp.Sum(ctx.h(1), (i, 1, m))
    env = {ctx.h(1): 0.7, m: -1.0}  # no term: 0, not −0.7
    assert differ(lhs, m * ctx.h(1), env)
    rejected(ctx, lhs, m * ctx.h(1))
    rejected(ctx, D(ctx.L * lhs, ctx.h(1)), m * ctx.h(1) * D(ctx.L, ctx.h(1)))


# -- 6. numbers and strings that are no Python float -------------------------------------
@pytest.mark.parametrize("number, big", [
    pytest.param(lambda v: __import__("numpy").float32(v), 2 ** 30, id="numpy float32"),
    pytest.param(lambda v: __import__("decimal").Decimal(v), 10 ** 16, id="Decimal"),
    pytest.param(complex, 10 ** 16, id="complex"),
    pytest.param(lambda v: repr(float(v)), 10 ** 16, id="string"),
])
def test_a_float_that_is_no_python_float_is_refused(sym, number, big):
    """The float check looked for Python floats; a NumPy ``float32``, a ``Decimal``, a
    ``complex`` (or a string of a float) became a SymPy ``Float`` only when decided,
    and ``2^30 + 1 = 2^30`` (float32: no 24-bit mantissa holds ``2^30 + 1``) was proved."""
    assert big + 1 != big  # exactly
    for ctx in (sym, ConcreteContext(2), HeadContext(), HeadContext(3, 2),
                PartitionContext(6, None, None)):
        with pytest.raises(ProofError, match="floating-point"):
            ctx.equal(sp.Integer(big + 1), number(big), ())


def test_a_string_cannot_smuggle_a_declared_symbol(sym):
    """A step given as a string is parsed when decided; its symbols were not vetted, so a
    ``c_1`` declared positive (the context's ``c_1`` is real) proved ``√(c_1²) = c_1``
    (false for ``c_1 = −1``)."""
    assert differ(sp.sqrt(sp.Symbol("c") ** 2), sp.Symbol("c"), {sp.Symbol("c"): -1.0})
    ctx = ConcreteContext(3)
    lhs, rhs = "sqrt(Symbol('c_1', positive=True)**2)", "Symbol('c_1', positive=True)"
    for c in (ctx, sym):
        with pytest.raises(ProofError, match="c_1"):
            c.equal(lhs, rhs, ())
    with pytest.raises(ProofError, match="q_1"):  # a plain q_1 is not the softmax's
        ctx.equal("q_1 + q_2 + q_3", 1, ())


# -- 7. a quantity of the vocabulary bound by a sum ------------------------------------------
def test_a_vocabulary_quantity_is_not_a_sum_index():
    """``Σ_{x_1=1}^{3} q_1 = 3 q_1`` (``q_1`` does not depend on the sum's index); the
    concrete context substituted ``q_1 = e^{x_1 − ℓ}`` into the sum, where ``x_1`` is
    the index, and proved ``Σ_{x_1=1}^{3} q_1 = Σ_{t=1}^{3} e^{t − ℓ}``."""
    ctx = ConcreteContext(2)
    x1, q1, t = ctx.x(0), ctx.q(0), sp.Symbol("t", integer=True)
    lhs, wrong = sp.Sum(q1, (x1, 1, 3)), sp.Sum(sp.exp(x1 - ctx.ell), (x1, 1, 3))
    qs = [math.exp(v) / math.fsum(math.exp(w) for w in XS[:2]) for v in XS[:2]]
    env = {q1: qs[0], ctx.ell: math.log(math.fsum(math.exp(w) for w in XS[:2])), x1: XS[0]}
    assert differ(lhs, wrong, env)
    with pytest.raises(ProofError, match="x_1"):
        check(ctx, lhs, wrong)
    ctx.vet(sp.Sum(q1, (t, 1, 3)))  # an index of its own is fine
    sym = SymbolicContext()
    with pytest.raises(ProofError, match="ell"):  # ℓ as an index: its definition went in
        sym.equal(sp.Sum(sym.ell, (sym.ell, 1, 2)), 3, ())
    check(sym, sp.Sum(sym.x(sym.j), (sym.j, 1, sym.n)), sym.sum(sym.x))  # j is meant to be


# -- 8. the partition's assumption: boundaries that only start at 0 and end at n -----------------
def test_the_partition_assumption_states_nondecreasing_boundaries():
    """``Σ_{j=1}^{n} f_j = Σ_r Σ_{j=b_{r−1}+1}^{b_r} f_j`` was proved "under b_0 = 0,
    b_R = n", which ``n = 3, b = (0, 5, 3)`` satisfies: the slices ``1..5`` and (none)
    ``6..3`` give ``f_1 + … + f_5``.  The check proves it by SymPy's convention for a
    sum whose top is below its bottom; read as written it needs the boundaries
    nondecreasing, and then holds for every such choice."""
    from symce.engine.partition import ASSUMPTIONS

    j, r = sp.Symbol("j", integer=True), sp.Symbol("r", integer=True)
    n, R = sp.Symbol("n", integer=True, positive=True), sp.Symbol("R", integer=True, positive=True)
    b, f = sp.IndexedBase("b", integer=True), sp.IndexedBase("f", real=True)
    whole = sp.Sum(f[j], (j, 1, n))
    sliced = sp.Sum(sp.Sum(f[j], (j, b[r - 1] + 1, b[r])), (r, 1, R))
    fs = [0.4, -1.1, 2.3, 0.7, 1.9]

    def env(bounds):
        return {n: float(bounds[-1]), R: float(len(bounds) - 1), f: lambda a: fs[a - 1],
                b: lambda t: float(bounds[t])}

    assert differ(whole, sliced, env((0, 5, 3)))  # b_0 = 0, b_R = n, yet false
    for b1 in range(4):  # every nondecreasing (0, b_1, 3)
        assert not differ(whole, sliced, env((0, b1, 3)))
    assert r"\le" in ASSUMPTIONS["partition"]
    assert PartitionContext.assumptions["partition"] == ASSUMPTIONS["partition"]


def test_partition_reads_sums_as_a_reader_does(part):
    """The partition context decides by SymPy's (Karr's) reading of a sum, in which
    ``Σ_{j=5}^{3} f_j = −f_4`` and ``Σ_{j=1}^{m} 1 = m`` for every integer ``m``; read as
    written (no term when the top is below the bottom) both are false.  A sum whose
    term count is not known to be >= 0 is now refused; the slice forms count
    ``b_r − b_{r−1} >= 0`` under "partition" (nondecreasing boundaries)."""
    n, R, b = part.n, part.R, part.boundary
    j, r = sp.Symbol("j", integer=True), sp.Symbol("r", integer=True)
    m = sp.Symbol("m", integer=True)
    f = sp.IndexedBase("f", real=True)
    fs = [0.4, -1.1, 2.3, 0.7, 1.9]
    env = {m: -2.0, f: lambda a: fs[a - 1], n: 3.0, R: 2.0, r: 1.0}
    false = [
        (sp.Sum(f[j], (j, 5, 3)), -f[4], ("partition",)),
        (sp.Sum(sp.S.One, (j, 1, m)), m, ()),
        (sp.Sum(sp.Sum(sp.S.One, (j, 1, m)), (r, 1, 1)), m, ()),
    ]
    for lhs, rhs, assumptions in false:
        assert differ(lhs, rhs, env), (lhs, rhs)
        assert not part.equal(lhs, rhs, assumptions), (lhs, rhs)
    # counts known >= 0: still proved
    slice_r = sp.Sum(f[j], (j, b[r - 1] + 1, b[r]))
    assert part.equal(2 * slice_r, sp.Sum(2 * f[j], (j, b[r - 1] + 1, b[r])), ("partition",))
    assert not part.equal(2 * slice_r, sp.Sum(2 * f[j], (j, b[r - 1] + 1, b[r])), ())


# == near misses still refused (each false, shown by numbers) =========================
def test_symbolic_near_misses_are_refused(sym):
    x, q, c, j, k, i, n, ell = sym._x, sym.q, sym.c, sym.j, sym.k, sym.i, sym.n, sym.ell
    env = softmax_env(sym, XS, CS, k=3, i=1)
    cases = [
        (sp.Sum(x[j] * KD(j, k), (j, 1, n - 1)), x[k], ()),            # k = n: 0
        (sp.Sum(q(j), (j, 1, n - 1)), 1, ()),
        (sp.Sum(q(j) * sp.Sum(x[j], (j, 1, n)), (j, 1, n)), sp.Sum(q(j) * x[j], (j, 1, n)), ()),
        (sp.log(sp.Sum(sp.exp(x[j]), (j, 1, n - 1))), ell, ()),
        (sp.Sum(c(j) * q(j), (j, 1, n)), 1, ("normalised",)),
        (sp.Sum(q(j) * x[j], (j, 1, n)), sp.Sum(q(j), (j, 1, n)) * x[k], ()),
        (sp.Sum(sp.Sum(x[j] * q(i) / (1 + x[i] ** 2), (i, 1, j)), (j, 1, n)),
         sp.Sum(sp.Sum(x[i] * q(j) / (1 + x[j] ** 2), (i, 1, j)), (j, 1, n)), ()),
    ]
    for lhs, rhs, assumptions in cases:
        assert differ(lhs, rhs, env), (lhs, rhs)
        rejected(sym, lhs, rhs, assumptions)
    # derivatives: ∂ℓ/∂x_k = q_k, ∂²ℓ/∂x_k∂x_i = q_k (δ_ki − q_i)
    rejected(sym, D(ell, x[k]), q(k) * (1 - q(k)))
    rejected(sym, D(ell, x[k], x[i]), q(k) * (1 - q(k)))
    rejected(sym, D(q(k), x[i]), q(i) * (KD(i, k) - q(k)) + q(k))
    check(sym, D(ell, x[k], x[i]), q(k) * (KD(i, k) - q(i)))


def test_concrete_near_misses_are_refused():
    ctx = ConcreteContext(3)
    q, c, x, ell = ctx._q, ctx._c, ctx._x, ctx.ell
    qs = [math.exp(v) / math.fsum(math.exp(w) for w in XS) for v in XS]
    env = {**dict(zip(q, qs, strict=True)), **dict(zip(c, CS, strict=True)),
           **dict(zip(x, XS, strict=True)), ell: math.log(math.fsum(math.exp(v) for v in XS))}
    cases = [
        (q[0] + q[1], 1, ()),
        (c[0] * q[0] + c[1] * q[1] + c[2] * q[2], 1, ("normalised",)),
        (sp.sqrt(c[1] ** 2), c[1], ()),
        (sp.log(sp.exp(x[0]) + sp.exp(x[1])), ell, ()),
        (q[0] * (1 - q[0]), q[0] * (q[1] + q[2]) + q[1] * q[2], ()),
    ]
    for lhs, rhs, assumptions in cases:
        assert differ(lhs, rhs, env), (lhs, rhs)
        rejected(ctx, lhs, rhs, assumptions)
    rejected(ctx, ctx.D(q[0], x[1]), q[1] * (1 - q[0]))  # it is −q_1 q_2
    rejected(ctx, ctx.D(ell, x[0]), q[1])
    check(ctx, ctx.D(q[0], x[1]), -q[0] * q[1])


def test_symbolic_head_near_misses_are_refused():
    ctx = HeadContext()
    j, k, a, e, n, H = ctx.j, ctx.k, ctx.a, ctx.e, ctx.classes, ctx.H
    W, g, h = ctx.W, ctx.g, ctx.h
    # numbers for a head of 2 classes, 3 features: W is not symmetric, a = 3 > n
    Wv = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]
    gv, hv = [0.3, -0.6, 0.8], [1.2, -0.4, 0.9]
    env = {ctx._W: lambda r, s: Wv[r - 1][s - 1], ctx._g: lambda r: gv[r - 1],
           ctx._h: lambda r: hv[r - 1], n: 2.0, H: 3.0, a: 2.0, k: 2.0, e: 3.0, j: 2.0}
    cases = [
        (D(ctx.L, h(a)), sp.Sum(W(a, j) * g(j), (j, 1, n)), sp.Sum(W(j, a) * g(j), (j, 1, n))),
        (D(ctx.L, h(a)), sp.Sum(W(j, a) * g(j), (j, 1, n - 1)), sp.Sum(W(j, a) * g(j), (j, 1, n))),
        (D(ctx.L, W(k, e)), g(k) * h(k), g(k) * h(e)),
        (D(ctx.L, ctx.b(k)), sp.Sum(g(j), (j, 1, n)), g(k)),
        (D(ctx.x(j), h(a)), W(j, a) * h(a), W(j, a)),
        (D(ctx.x(j), W(k, e)), KD(j, k) * h(k), KD(j, k) * h(e)),
    ]
    for lhs, wrong, right in cases:
        assert differ(wrong, right, env), wrong
        rejected(ctx, lhs, wrong)
        check(ctx, lhs, right)
    # a sum over the classes does not sift a feature index: a = 3 lies beyond n = 2
    sifted = sp.Sum(g(j) * KD(j, a), (j, 1, n))
    assert differ(sifted, g(a), {**env, a: 3.0})
    rejected(ctx, sifted, g(a))


def test_concrete_head_near_misses_are_refused():
    ctx = HeadContext(3, 2)
    Wm = sp.ImmutableMatrix(3, 2, lambda r, s: ctx.W(r + 1, s + 1))
    g = sp.ImmutableMatrix(3, 1, lambda r, _: ctx.g(r + 1))
    h = sp.ImmutableMatrix(2, 1, lambda r, _: ctx.h(r + 1))
    dh = sp.ImmutableMatrix(2, 1, lambda a, _: D(ctx.L, ctx.h(a + 1)))
    dW = sp.ImmutableMatrix(3, 2, lambda r, s: D(ctx.L, ctx.W(r + 1, s + 1)))
    Wv = [[0.5, -1.0], [1.5, 0.25], [-0.3, 0.8]]
    gv, hv = [0.3, -0.6, 0.8], [1.2, -0.4]
    env = {ctx.W(r + 1, s + 1): Wv[r][s] for r in range(3) for s in range(2)}
    env.update({ctx.g(r + 1): gv[r] for r in range(3)})
    env.update({ctx.h(r + 1): hv[r] for r in range(2)})
    wrong_dh = sp.ImmutableMatrix([g[0] * Wm[0, 0] + g[1] * Wm[0, 1],   # rows of W, not columns
                                   g[0] * Wm[1, 0] + g[1] * Wm[1, 1]])
    assert differ(wrong_dh[0], (Wm.T * g)[0], env)
    rejected(ctx, dh, wrong_dh)
    wrong_dW = sp.ImmutableMatrix(3, 2, lambda r, s: g[r] * h[1 - s])  # h reversed
    assert differ(wrong_dW[0, 0], (g * h.T)[0, 0], env)
    rejected(ctx, dW, wrong_dW)
    rejected(ctx, dh, (Wm.T * g).T)  # the right entries, the wrong shape
    check(ctx, dh, Wm.T * g)


def test_partition_near_misses_are_refused(part):
    n, R, b = part.n, part.R, part.boundary
    j, r = sp.Symbol("j", integer=True), sp.Symbol("r", integer=True)
    x, M = sp.IndexedBase("x", real=True), sp.Symbol("M", real=True)
    bounds = [0, 1, 3]  # n = 3 classes in R = 2 slices
    env = {n: 3.0, R: 2.0, M: 0.4, x: lambda a: XS[a - 1], b: lambda t: float(bounds[t])}

    def sliced(body):
        return sp.Sum(sp.Sum(body, (j, b[r - 1] + 1, b[r])), (r, 1, R))

    lse = sp.log(sp.Sum(sp.exp(x[j]), (j, 1, n)))
    cases = [
        (lse, M + sp.log(sliced(sp.exp(x[j] + M)))),     # the shift's sign
        (lse, sp.log(sliced(sp.exp(x[j] - M)))),         # the shift left out
        (lse, M + sp.log(sp.Sum(sp.Sum(sp.exp(x[j] - M), (j, b[r - 1] + 1, b[r])),
                                (r, 1, R - 1)))),        # the last slice left out
        (sp.Sum(x[j], (j, 1, n)), sliced(x[j]) - x[b[R]]),
    ]
    for lhs, rhs in cases:
        assert differ(lhs, rhs, env), rhs
        assert not part.equal(lhs, rhs, ("partition",))
        assert not part.equal(lhs, rhs, ())
    assert part.equal(lse, M + sp.log(sliced(sp.exp(x[j] - M))), ("partition",))


def test_concrete_partition_near_misses_are_refused():
    ctx = PartitionContext(6, None, None)
    x = sp.symbols("x_1:7", real=True)
    env = dict(zip(x, [0.3, -1.2, 2.9, 0.4, 1.1, -0.5], strict=True))
    M = sp.Max(sp.Max(x[0], x[1]), x[2], sp.Max(*x[3:]))
    cases = [
        (sp.Max(*x), sp.Max(sp.Max(x[0], x[1]), sp.Max(*x[3:]))),   # a slice's maximum left out
        (sp.log(sp.Add(*[sp.exp(v) for v in x])),
         M + sp.log(sp.Add(*[sp.exp(v - M) for v in x[:-1]]))),      # a class left out
        (sp.log(sp.Add(*[sp.exp(v) for v in x])),
         M + sp.log(sp.Add(*[sp.exp(v + M) for v in x]))),
    ]
    for lhs, rhs in cases:
        assert differ(lhs, rhs, env), rhs
        assert not ctx.equal(lhs, rhs, ())
    assert ctx.equal(sp.Max(*x), M, ())
