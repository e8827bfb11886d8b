"""The concrete-n engine: every step is checked, a tampered step never passes.

``check()`` uses fast paths (polynomial rings, cached normal forms of unchanged
nodes); these tests make sure that no fast path lets a wrong right-hand side
through, and that the concrete results agree with the symbolic-n derivation.
"""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

import symce
from symce.engine import ConcreteContext

STEP_NAMES = [
    "softmax", "lse", "shift_sum", "shift_invariance", "lse_gradient", "jacobian",
    "jacobian_matrix", "loss", "loss_lse", "dl_dq", "chain_rule", "gradient",
    "normalised", "hessian", "dl_dc", "z_loss", "z_dl_dlse", "z_chain_rule", "z_gradient",
    "z_hessian", "transform", "transform_derivative", "transform_chain", "z_transform_chain",
    "log_softmax_nll", "kl_decomposition", "kl_gradient",
]


@pytest.fixture(scope="module", params=[2, 3, 4])
def derivation(request):
    return symce.derive("cross_entropy", n=request.param)


def _plus_one(rhs, position):
    if isinstance(rhs, sp.MatrixBase):
        entries = list(rhs)
        entries[position] = entries[position] + 1
        return sp.ImmutableMatrix(*rhs.shape, entries)
    return rhs + 1


def _tampered_fails(d, name, rhs):
    with pytest.raises(symce.ProofError, match=f"'{name}'"):
        d.replace_step(name, rhs=rhs).check()


def test_step_names_and_order(derivation):
    assert [s.name for s in derivation.steps] == STEP_NAMES


@pytest.mark.parametrize("name", STEP_NAMES)
def test_rhs_plus_one_in_one_entry_fails(derivation, name):
    rhs = derivation.step(name).rhs
    size = len(rhs) if isinstance(rhs, sp.MatrixBase) else 1
    positions = range(size) if derivation.n == 2 else (0, size - 1)
    for position in positions:
        _tampered_fails(derivation, name, _plus_one(rhs, position))


@pytest.mark.parametrize("name", STEP_NAMES)
def test_twice_rhs_fails(derivation, name):
    rhs = derivation.step(name).rhs
    _tampered_fails(derivation, name, 2 * rhs)


def test_plausible_wrong_steps_fail(derivation):
    n = derivation.n
    ctx = derivation.context
    jac = derivation.step("jacobian").rhs
    swapped = jac.as_mutable()
    swapped[0, 1], swapped[1, 0] = -ctx.q(0) * ctx.q(0), -ctx.q(1) * ctx.q(1)
    _tampered_fails(derivation, "jacobian", swapped.as_immutable())
    # q − c is the gradient only under Σc = 1, which the step does not assume
    q_minus_c = sp.ImmutableMatrix([ctx.q(a) - ctx.c(a) for a in range(n)])
    for name in ("gradient", "chain_rule", "kl_gradient"):
        _tampered_fails(derivation, name, q_minus_c)
    if n > 2:  # for n = 2, q_1 (1 − q_1) = q_1 q_2 = q_2 (1 − q_2): renaming is no error
        renamed_hessian = derivation.step("hessian").rhs.applyfunc(
            lambda e: e.xreplace({ctx.q(0): ctx.q(1), ctx.q(1): ctx.q(0)})
        )
        _tampered_fails(derivation, "hessian", renamed_hessian)
    normalised = derivation.step("normalised")
    _tampered_fails(
        derivation.replace_step("normalised", assumptions=()), "normalised", normalised.rhs
    )


def test_tampered_lhs_fails(derivation):
    ctx = derivation.context
    hess = derivation.step("hessian").lhs.as_mutable()
    hess[0, 0] = ctx.D(ctx.q(0) * ctx.q(1), ctx.x(0))
    with pytest.raises(symce.ProofError, match="'hessian'"):
        derivation.replace_step("hessian", lhs=hess.as_immutable()).check()


def test_check_passes_with_cold_caches(derivation):
    ctx = derivation.context
    fresh = ConcreteContext(derivation.n, ctx.loss)
    for symbol, formula in ctx._terms.items():
        fresh.define_term(symbol, formula)
    dataclasses.replace(derivation, context=fresh).check()


def test_forms_for_three_classes():
    d = symce.derive("cross_entropy", n=3)
    q1, q2, q3 = sp.symbols("q_1:4", positive=True)
    c1, c2, c3 = sp.symbols("c_1:4", real=True)
    s = c1 + c2 + c3
    assert d.result == sp.Matrix([[-c1 + q1 * s], [-c2 + q2 * s], [-c3 + q3 * s]])
    jac = d.step("jacobian").rhs
    assert jac[0, 0] == q1 * (1 - q1) and jac[0, 1] == -q1 * q2 and jac[2, 1] == -q2 * q3
    hess = d.step("hessian").rhs
    assert hess[1, 1] == q2 * (1 - q2) * s and hess[0, 2] == -q1 * q3 * s


def test_derivative_nodes_are_sympys():
    ctx = ConcreteContext(3)
    exprs = (ctx.q(0), ctx.L, ctx.q(1) * (ctx.c(0) + ctx.c(1)) - ctx.c(1), sp.Integer(2),
             ctx.D(ctx.q(0), ctx.x(1)))
    for expr in exprs:
        for var in (ctx.x(2), ctx.q(0)):
            node = ctx.D(expr, var)
            assert sp.srepr(node) == sp.srepr(sp.Derivative(expr, var, evaluate=False))
            assert hash(node) == hash(sp.Derivative(expr, var, evaluate=False))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_symbolic_n_instantiated_equals_concrete(n):
    sym = symce.derive("cross_entropy")
    con = symce.derive("cross_entropy", n=n)
    ctx, sctx = con.context, sym.context

    def instantiate(expr, **index):
        expr = expr.xreplace({getattr(sctx, k): sp.Integer(v + 1) for k, v in index.items()})
        expr = expr.xreplace({sctx.n: sp.Integer(n)}).doit()
        return expr.replace(
            lambda t: isinstance(t, sp.Indexed),
            lambda t: getattr(ctx, str(t.base))(int(t.indices[0]) - 1),
        )

    for name in ("jacobian", "hessian"):
        for a in range(n):
            for b in range(n):
                want = instantiate(sym.step(name).rhs, i=a, k=b)
                assert sp.expand(want - con.step(name).rhs[a, b]) == 0, (name, a, b)
    for name in ("dl_dq", "gradient", "normalised"):
        for a in range(n):
            want = instantiate(sym.step(name).rhs, k=a)
            assert sp.expand(want - con.step(name).rhs[a]) == 0, (name, a)


@pytest.mark.parametrize("n", [1, 5])
def test_other_sizes_check(n):
    d = symce.derive("cross_entropy", n=n)
    assert d.result.shape == (n, 1)
    _tampered_fails(d, "hessian", _plus_one(d.step("hessian").rhs, 0))


def test_redefining_the_loss_drops_cached_values():
    ctx = ConcreteContext(2)
    ctx.loss_definition(lambda a: -ctx.c(a) * sp.log(ctx.q(a)))
    d = ctx.D(ctx.L, ctx.x(0))
    first = ctx.evaluate(d)
    ctx.loss_definition(lambda a: ctx.c(a) * ctx.q(a))
    assert ctx.evaluate(d) != first
    assert not ctx.equal(d, first, ())


@pytest.mark.parametrize("name", ["jacobian", "jacobian_matrix", "gradient", "hessian",
                                  "chain_rule", "kl_gradient", "dl_dq"])
def test_equal_rhs_written_differently_passes(derivation, name):
    rhs = derivation.step(name).rhs.applyfunc(sp.expand)
    derivation.replace_step(name, rhs=rhs).check()
