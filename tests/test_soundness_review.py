"""Adversarial soundness tests: the checker must never accept a false identity.

Each test states a specific false identity (or an unneeded / insufficient
assumption) and asserts that it is rejected, so every test here can fail.
"""

from __future__ import annotations

import pytest
import sympy as sp

from symce.checker.formula import check_gradient_formula
from symce.engine.concrete import ConcreteContext
from symce.engine.symbolic import SymbolicContext
from symce.errors import ProofError
from symce.losses import get_loss
from symce.proof import Derivation, Step, evaluated

U = sp.UnevaluatedExpr


@pytest.fixture(scope="module")
def sym():
    return SymbolicContext()


@pytest.fixture(scope="module")
def con():
    return ConcreteContext(3)


def derivation(ctx, *steps: Step) -> Derivation:
    n = None if not isinstance(ctx.n, int) else ctx.n
    return Derivation(ctx.loss.name if ctx.loss else "review", "", n, tuple(steps), ctx)


def rejected(ctx, lhs, rhs, assumptions=()) -> None:
    """``Derivation.check`` refuses the step ``lhs = rhs``."""
    with pytest.raises(ProofError):
        derivation(ctx, Step("s", "s", lhs, rhs, "wishful", tuple(assumptions))).check()


def accepted(ctx, lhs, rhs, assumptions=()) -> None:
    derivation(ctx, Step("s", "s", lhs, rhs, "true", tuple(assumptions))).check()


# -- Kronecker-delta sifting and sums with other bounds ------------------------
def test_sifting_respects_the_sums_bounds(sym):
    x, j, k, n = sym._x, sym.j, sym.k, sym.n
    # for k > 2 the left side is 0
    rejected(sym, sp.Sum(x[j] * sp.KroneckerDelta(j, k), (j, 1, 2)), x[k])
    # for every k the left side is 0 (j > k)
    rejected(sym, sp.Sum(sp.KroneckerDelta(j, k), (j, k + 1, n)), 1)
    rejected(sym, sp.Sum(x[j] * sp.KroneckerDelta(j, k), (j, 2, n)), x[k])
    # over the full range the sift is right
    accepted(sym, sp.Sum(x[j] * sp.KroneckerDelta(j, k), (j, 1, n)), x[k])


def test_sifting_needs_the_other_index_in_range(sym):
    x, j, k, n = sym._x, sym.j, sym.k, sym.n
    # k + 1 = n + 1 lies outside 1..n for k = n: the sum is 0 there
    rejected(sym, sp.Sum(x[j] * sp.KroneckerDelta(j, k + 1), (j, 1, n)), x[k + 1])
    rejected(sym, sp.Sum(sp.KroneckerDelta(j, 2 * k), (j, 1, n)), 1)


def test_sifting_by_an_outer_dummy_uses_its_range(sym):
    x, j, n = sym._x, sym.j, sym.n
    i = sp.Symbol("i2", integer=True)
    # inner sift by the outer dummy i, which runs over 0..n: the i = 0 term is 0, not x_0
    inner = sp.Sum(x[j] * sp.KroneckerDelta(j, i) / (1 + x[i] ** 2), (j, 1, n))
    rejected(sym, sp.Sum(inner, (i, 0, n)), sp.Sum(x[i] / (1 + x[i] ** 2), (i, 0, n)))


def test_piecewise_on_a_bound_dummy_uses_the_sums_range(sym):
    x, j, k, n = sym._x, sym.j, sym.k, sym.n
    f = sp.Function("f")
    # Σ_{j=0}^{n} [j ≥ 1] = n, not n + 1
    s = sp.Sum(sp.Piecewise((1, j >= 1), (0, True)), (j, 0, n))
    rejected(sym, sp.Derivative(f(x[k]) + s * x[k], x[k]), sp.Derivative(f(x[k]), x[k]) + n + 1)


def test_empty_and_shortened_sums_are_not_full_sums(sym):
    c, j, n = sym.c, sym.j, sym.n
    rejected(sym, sp.Sum(c(j), (j, 1, n - 1)), 1, ["normalised"])
    rejected(sym, sp.Sum(sym._x[j], (j, 1, 0)), sym._x[1])
    rejected(sym, sp.Sum(c(j) ** 2, (j, 1, n)), 1, ["normalised"])
    rejected(sym, c(sym.k), 1, ["normalised"])


# -- renaming dummies ------------------------------------------------------
def test_renaming_a_dummy_does_not_capture_a_free_symbol(sym):
    x, j, n = sym._x, sym.j, sym.n
    u = sp.Symbol("_u", integer=True)  # the name the check renames dummies to
    # (decide itself: equal refuses a free symbol declared integer before deciding)
    assert not sym.decide(sp.Sum(x[j] / (x[j] + x[u]), (j, 1, n)), n / 2, ())
    assert not sym.decide(sp.Sum(x[j] * x[u] / (x[j] + x[u]) ** 2, (j, 1, n)), n / 4, ())
    v = sp.Symbol("_u")  # plain: passes the vetting, still not captured
    rejected(sym, sp.Sum(x[j] / (x[j] + x[v]), (j, 1, n)), n / 2)


# -- floating-point numbers ----------------------------------------------------
@pytest.mark.parametrize("which", ["symbolic", "concrete"])
def test_floating_point_rounding_proves_nothing(sym, con, which):
    ctx = sym if which == "symbolic" else con
    v = ctx.x(sym.k) if which == "symbolic" else ctx.x(0)
    big = sp.Float(1e16)
    # (v + 1)(v + 10^16) = v^2 + (10^16 + 1) v + 10^16: the v is lost in rounding
    rejected(ctx, (v + 1) * (v + big), v**2 + big * v + big)
    with pytest.raises(ProofError):
        ctx.equal((v + 1) * (v + big), v**2 + big * v + big, ())


def test_formula_with_float_rounding_is_not_proved():
    claim = "q*sum(p) - p + (q + 1)*(q + 1e16) - q**2 - 1e16*q - 1e16"
    for n in (None, 3):
        assert check_gradient_formula(claim, n=n).status == "refuted"


# -- display forms -----------------------------------------------------------
def test_nested_display_forms_are_all_evaluated(con):
    q = con._q
    nested = U(U(q[0]) + q[1])
    assert not evaluated(nested).has(sp.UnevaluatedExpr)
    m = sp.ImmutableMatrix([nested, U(U(U(q[2])))])
    assert not any(e.has(sp.UnevaluatedExpr) for e in evaluated(m))
    rejected(con, nested, U(q[0]) + U(q[0]))
    accepted(con, nested, q[1] + q[0])


def test_a_display_form_in_via_is_checked(con):
    q = con._q
    step = Step("s", "s", q[0] + q[1], q[1] + q[0], "r", via=(U(q[0] + q[2]),))
    with pytest.raises(ProofError):
        derivation(con, step).check()


# -- assumptions -------------------------------------------------------------
def test_a_repeated_assumption_is_rejected(con):
    c = con._c
    with pytest.raises(ProofError):
        derivation(con, Step("s", "s", c[0] + c[1] + c[2], 1, "r",
                             ("normalised", "normalised"))).check()


def test_an_unneeded_assumption_is_rejected_in_the_concrete_context(con):
    q = con._q
    # Σq = 1 holds without Σc = 1 (the general path proves it, the quick one does not)
    with pytest.raises(ProofError, match="proved without it"):
        derivation(con, Step("s", "s", q[0] + q[1] + q[2], 1, "r", ("normalised",))).check()


def test_insufficient_assumptions_are_rejected(sym, con):
    for ctx, c in ((sym, sym.c(sym.k)), (con, con._c[0])):
        rejected(ctx, sp.log(c**2), 2 * sp.log(c))  # c may be negative
        rejected(ctx, sp.log(c**2), 2 * sp.log(c), ["normalised"])
        accepted(ctx, sp.log(c**2), 2 * sp.log(c), ["positive_targets"])


# -- the transform x = φ(u) --------------------------------------------------
@pytest.fixture(scope="module")
def capped():
    loss = get_loss("cross_entropy")
    return SymbolicContext(loss), ConcreteContext(2, loss)


def test_a_raw_logit_is_not_constant_in_itself(capped):
    sym, con = capped
    for ctx, u in ((sym, sym.u(sym.k)), (con, con.u(0))):
        rejected(ctx, ctx.D(u, u), 0)
        accepted(ctx, ctx.D(u, u), 1)


def test_a_raw_logit_depends_on_its_capped_logit(capped):
    sym, con = capped
    for ctx, a in ((sym, sym.k), (con, 0)):
        u, x = ctx.u(a), ctx.x(a)
        rejected(ctx, ctx.D(u, x), 0)
        rejected(ctx, ctx.D(u * ctx.q(a), x), u * ctx.q(a) * (1 - ctx.q(a)))


# -- log and power rules -------------------------------------------------------
@pytest.mark.parametrize(
    ("lhs", "rhs"),
    [
        (lambda v: sp.log(v**2), lambda v: 2 * sp.log(v)),
        (lambda v: sp.sqrt(v**2), lambda v: v),
        (lambda v: (v**2) ** sp.Rational(3, 2), lambda v: v**3),
        (lambda v: sp.Abs(v), lambda v: v),
        (lambda v: sp.log(sp.exp(sp.I * v)), lambda v: sp.I * v),
        (lambda v: sp.atan(sp.tan(v)), lambda v: v),
        (lambda v: sp.log(-sp.exp(v)), lambda v: v),
    ],
)
def test_log_and_power_rules_need_positivity(sym, con, lhs, rhs):
    for ctx, v in ((sym, sym.x(sym.k)), (con, con.x(0))):  # a real logit, maybe negative
        rejected(ctx, lhs(v), rhs(v))


def test_log_of_a_product_needs_both_factors_positive(sym, con):
    for ctx, a, b in ((sym, sym.c(sym.k), sym.c(sym.i)), (con, con.c(0), con.c(1))):
        # both negative: log(ab) is real, log a + log b is not
        rejected(ctx, sp.log(a * b), sp.log(a) + sp.log(b))
        rejected(ctx, sp.log(a * b), sp.log(a) + sp.log(b), ["normalised"])
        accepted(ctx, sp.log(a * b), sp.log(a) + sp.log(b), ["positive_targets"])
    q = sym.q(sym.k)  # q > 0: log(q c) = log q + log c for every c
    accepted(sym, sp.log(q * sym.c(sym.k)), sp.log(q) + sp.log(sym.c(sym.k)))


# -- memoisation -------------------------------------------------------------
def test_a_decision_is_not_reused_under_other_assumptions(sym):
    c = sym.sum(sym.c)
    assert sym.equal(c, 1, ("normalised",))
    assert not sym.equal(c, 1, ())
    assert not SymbolicContext().equal(c, 1, ())


def test_a_decision_is_not_reused_for_another_n():
    c3, c4 = ConcreteContext(3), ConcreteContext(4)
    assert c3.equal(sum(c3._q), 1, ())
    s = sp.Add(*[sp.Symbol(f"q_{a}", positive=True) for a in (1, 2, 3)])
    assert not c4.equal(s, 1, ())  # q_1 + q_2 + q_3 = 1 - q_4 for n = 4


# -- claimed gradient formulas ---------------------------------------------------
@pytest.mark.parametrize(
    ("claim", "assume"),
    [
        ("q*sum(p) - p + sqrt(x**2) - x", ()),
        ("q*sum(p) - p + (x**2)**(1/2) - x", ()),
        ("q*sum(p) - p + Abs(x) - x", ()),
        ("q*sum(p) - p + Max(x, 0) - x", ()),
        ("q*sum(p) - p + sum(q**2) - 1", ()),
        ("q*sum(p) - p + sum(p*q) - sum(p)*sum(q)", ()),
        ("q - p", ()),
        ("q - p + sum(p) - 1", ()),
        ("q - p + sum(p**2) - 1", ("normalised",)),
        ("q*sum(p) - p + log(p**2) - 2*log(p)", ("normalised",)),
        ("q*sum(p) - p + sum(p - q)", ()),
        ("q*sum(p) - p + sum(q*sum(x*q)) - sum(x*q)*sum(p)", ()),
        ("q*sum(p) - p + sum(x*q) - x*sum(q)", ()),
        ("q*sum(p) - p + sum(log(q)) - n*log(q)", ()),
    ],
)
@pytest.mark.parametrize("n", [None, 3])
def test_false_formulas_are_not_proved(claim, assume, n):
    assert check_gradient_formula(claim, n=n, assume=assume).status != "proved"


@pytest.mark.parametrize("n", [None, 3])
def test_a_claim_outside_the_formula_language_is_refused(n):
    """The claim parser knows a fixed table of names (no SymPy namespace): a
    Piecewise claim is refused before anything is evaluated, never proved."""
    with pytest.raises(ValueError, match="unknown symbol.*Piecewise"):
        check_gradient_formula("q*sum(p) - p + Piecewise((1, x > 0), (0, True)) - 1", n=n)


def test_formula_literals_are_exact():
    # 10^20 + 1 − 10^20 is 1, whatever floats make of it
    assert check_gradient_formula("q*sum(p) - p + 1e20 + 1 - 1e20").status == "refuted"
    assert check_gradient_formula("q*sum(p) - p + 1e20 - 1e20").status == "proved"
    assert check_gradient_formula("(2.0*q*sum(p) - 2*p)/2", n=3).status == "proved"
    q, p = sp.symbols("q p")
    assert check_gradient_formula(q - sp.Float(1.0) * p, assume="normalised").status == "proved"
    assert check_gradient_formula(q - sp.Float(1.5) * p, assume="normalised").status == "refuted"


def test_logits_are_not_constants_in_the_coordinates_q_and_ell(sym, con):
    # x_a = log q_a + ℓ is accepted, so ∂x_k/∂q_k = 0 and ∂x_k/∂ℓ = 0 must not be
    for ctx, a in ((sym, sym.k), (con, 0)):
        x, q, ell = ctx.x(a), ctx.q(a), ctx.ell
        accepted(ctx, x, sp.log(q) + ell)
        rejected(ctx, ctx.D(x, q), 0)
        rejected(ctx, sp.Derivative(x, ell), 0)
        accepted(ctx, ctx.D(x, q), 1 / q)
        accepted(ctx, sp.Derivative(x, ell), 1)


# -- a symbol that prints like the derivation's own but is another ---------------
def test_a_lookalike_symbol_cannot_smuggle_an_assumption(sym, con):
    cp = sp.IndexedBase("c", positive=True)  # prints c_k, but c > 0 unstated
    rejected(sym, sp.log(cp[sym.k] ** 2), 2 * sp.log(cp[sym.k]))
    c1 = sp.Symbol("c_1", positive=True)
    rejected(con, sp.log(c1**2), 2 * sp.log(c1))
    x1 = sp.Symbol("x_1", positive=True)  # a logit may be negative
    rejected(con, sp.sqrt(x1**2), x1)
    k = sp.Symbol("k")  # not the integer index k
    rejected(sym, sp.Sum(sym.x(sym.j) * sp.KroneckerDelta(sym.j, k), (sym.j, 1, sym.n)), sym.x(k))
    with pytest.raises(ProofError, match="c_1"):
        con.equal(sp.log(c1**2), 2 * sp.log(c1), ())


# -- tampering with a real derivation ---------------------------------------------
@pytest.fixture(scope="module")
def ce3():
    import symce

    return symce.derive("cross_entropy", n=3)


def test_tampered_assumptions_of_a_real_step_are_rejected(ce3):
    for assumptions in [("normalised", "normalised"), ("normalised", "positive_targets"),
                        ("positive_targets",), ()]:
        with pytest.raises(ProofError):
            ce3.replace_step("normalised", assumptions=assumptions).check()
    ce3.check()


def test_a_gradient_off_in_one_entry_or_by_rounding_is_rejected(ce3):
    g = ce3.result
    for wrong in (g + sp.ImmutableMatrix([0, 0, sp.Rational(1, 10**30)]),
                  g.applyfunc(lambda e: e * sp.Float(1.0)),
                  sp.ImmutableMatrix([g[0], g[2], g[1]])):
        with pytest.raises(ProofError):
            ce3.replace_step("gradient", rhs=wrong).check()


def test_normalised_replaces_only_the_full_sum_of_c(con):
    c, q = con._c, con._q
    rejected(con, c[0] + c[1], 1, ["normalised"])
    rejected(con, c[0] * q[0] + c[1] * q[1] + c[2] * q[2], 1, ["normalised"])
    accepted(con, 2 * c[0] + 2 * c[1] + 2 * c[2], 2, ["normalised"])


def test_a_new_symbol_cannot_declare_an_unstated_assumption(sym, con):
    for ctx, x in ((sym, sym.x(sym.k)), (con, con.x(0))):
        y = sp.Symbol("x_1 - 5", positive=True)  # prints as x_1 - 5
        rejected(ctx, sp.sqrt(y**2), y)
        rejected(ctx, sp.sqrt(sp.Symbol("s", nonnegative=True) ** 2), sp.Symbol("s"))
        f = sp.Function("f", positive=True)
        rejected(ctx, sp.sqrt(f(x) ** 2), f(x))
        d = sp.Dummy("x_1", positive=True)  # prints as x_1
        rejected(ctx, sp.sqrt(d**2), d)
        m = sp.Symbol("m2", integer=True)  # an integer only by declaration
        rejected(ctx, sp.sin(sp.pi * m, evaluate=False), 0)
        accepted(ctx, sp.Symbol("y") + x, x + sp.Symbol("y"))  # a plain symbol is fine
        r = sp.Symbol("r", real=True)  # and a real one (every quantity here is real)
        accepted(ctx, sp.log(sp.exp(r)), r)
        rejected(ctx, sp.sqrt(r**2), r)
    j = sp.Symbol("j2", negative=True)  # a dummy over 1..n declared negative
    s = sp.Sum(sp.Piecewise((1, j < 0), (0, True)), (j, 1, sym.n))
    rejected(sym, s, sym.n)
    j = sp.Symbol("j2", integer=True)  # an integer dummy is fine
    accepted(sym, sp.Sum(sym.x(j), (j, 1, sym.n)), sym.sum(sym.x))


def test_a_sum_that_may_be_empty_is_not_counted_below_zero(sym):
    j, k, n, x = sym.j, sym.k, sym.n, sym.x
    # for k = 1 the sum is empty (0); SymPy's convention would make it -1
    rejected(sym, sp.Sum(1, (j, 1, k - 2)), k - 2)
    rejected(sym, sp.Sum(x(k), (j, 1, k - 2)), (k - 2) * x(k))
    accepted(sym, sp.Sum(x(k), (j, 1, n)), n * x(k))


def test_a_leftover_derivative_does_not_evaluate_sums_by_sympys_convention(sym):
    j, k, x = sym.j, sym.k, sym.x(sym.k)
    f = sp.Function("f")  # its derivative stays unevaluated
    lhs = sp.Derivative(f(x) + sp.Sum(x, (j, 1, k - 2)), x)
    rejected(sym, lhs, sp.Derivative(f(x), x) + k - 2)


def test_a_wrong_inverse_of_the_transform_is_refused_for_concrete_n_too():
    import dataclasses

    loss = get_loss("cross_entropy")
    wrong = dataclasses.replace(loss, transform=dataclasses.replace(
        loss.transform, inverse=lambda x: x))  # not the inverse of s·tanh(u/s)
    with pytest.raises(ProofError, match="does not invert"):
        SymbolicContext(wrong)
    with pytest.raises(ProofError, match="does not invert"):
        ConcreteContext(2, wrong)


@pytest.mark.parametrize(
    ("claim", "assume"),
    [
        ("q*sum(p) - p + sum(p - q)", ("normalised",)),
        ("q*sum(p) - p + sum(q*sum(x*q)) - sum(x*q)", ()),
        ("q*sum(p) - p + sum(q*sum(p)) - sum(p)", ()),
    ],
)
def test_true_formulas_with_sums_are_proved(claim, assume):
    assert check_gradient_formula(claim, assume=assume).status == "proved"


def test_a_derivation_relabelled_for_another_n_or_loss_is_rejected(ce3):
    import dataclasses

    for changes in ({"n": 5}, {"n": None}, {"loss": "focal_loss"}):
        with pytest.raises(ProofError, match="labelled"):
            dataclasses.replace(ce3, **changes).check()


# -- a derivative in an index that a sum inside binds -------------------------------
def test_a_sum_binding_the_derivatives_index_is_another_index(sym):
    """``∂/∂x_j Σ_j v_j x_j`` is ``v_j``: the sum's ``j`` is bound, ``x_j``'s is free
    (SymPy's own ``diff`` answers ``Σ_j v_j``, differentiating every term)."""
    j, k, n = sym.j, sym.k, sym.n
    v = sp.IndexedBase("v", real=True)
    lhs = sym.D(sp.Sum(v[j] * sym.x(j), (j, 1, n)), sym.x(j))
    rejected(sym, lhs, sp.Sum(v[j], (j, 1, n)))
    derivation(sym, Step("s", "s", lhs, v[j], "sifting")).check()
    through_q = sym.D(sp.Sum(sym.q(j) * v[j], (j, 1, n)), sym.x(j))
    rejected(sym, through_q, sp.Sum(v[j], (j, 1, n)))
    rejected(sym, through_q, sym.q(j) * v[j])
    right = sym.q(j) * v[j] - sym.q(j) * sp.Sum(sym.q(k) * v[k], (k, 1, n))
    derivation(sym, Step("s", "s", through_q, right, "the softmax Jacobian")).check()
