"""Every registered loss: derived and proved for symbolic and concrete n, every
tampered step rejected, and the derived gradients equal torch autograd of the
loss's definition written independently here."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import sympy as sp
import torch

import symce
from symce import ProofError
from symce.losses import list_losses

LOSSES = sorted(list_losses())


@functools.cache
def _derived(loss, n=None):
    return symce.derive(loss, n=n)


@pytest.fixture(scope="module", params=LOSSES)
def symbolic(request):
    return _derived(request.param)


def _wrong_versions(rhs, ctx):
    if isinstance(rhs, sp.MatrixBase):
        entries = list(rhs)
        yield sp.ImmutableMatrix(*rhs.shape, [entries[0] + 1, *entries[1:]])
        if any(e != 0 for e in entries):
            yield rhs.applyfunc(lambda e: 2 * e)
        return
    yield rhs + 1
    if hasattr(ctx, "k"):
        yield rhs + ctx.x(ctx.k)
    if rhs != 0:
        yield 2 * rhs


def test_every_loss_is_registered_with_its_standard_steps(symbolic):
    names = [s.name for s in symbolic.steps]
    for required in ("softmax", "lse", "shift_invariance", "jacobian", "loss", "chain_rule",
                     "gradient", "hessian"):
        assert required in names
    assert symbolic.check() is symbolic


def test_every_tampered_step_is_rejected(symbolic):
    for step in symbolic.steps:
        for wrong in _wrong_versions(step.rhs, symbolic.context):
            with pytest.raises(ProofError, match=step.name):
                symbolic.replace_step(step.name, rhs=wrong).check()


@pytest.mark.parametrize("loss", LOSSES)
def test_concrete_n_checks_and_rejects_tampering(loss):
    d = _derived(loss, 2)
    assert [s.name for s in d.steps] == [s.name for s in _derived(loss).steps]
    for step in d.steps:
        for wrong in _wrong_versions(step.rhs, d.context):
            with pytest.raises(ProofError, match=step.name):
                d.replace_step(step.name, rhs=wrong).check()


def test_an_assumption_that_is_not_needed_is_an_error():
    d = _derived("cross_entropy")
    with pytest.raises(ProofError, match="proved without it"):
        d.replace_step("gradient", assumptions=("normalised",)).check()


def test_expanding_logs_of_real_logits_is_refused():
    """log(x²) = 2 log x is false for negative x: no context may accept it."""
    for n in (None, 3):
        d = _derived("cross_entropy", n)
        ctx = d.context
        x = ctx.x(ctx.k) if n is None else ctx.x(0)
        assert not ctx.equal(sp.log(x**2), 2 * sp.log(x), ())
        assert not ctx.equal(sp.log(x**2), 2 * sp.log(x), ("normalised",))
        q = ctx.q(ctx.k) if n is None else ctx.q(0)
        assert ctx.equal(sp.log(q**2), 2 * sp.log(q), ())  # q > 0: this one holds


# -- the derived gradients against torch autograd of the definitions ------------
N = 4
RNG = np.random.default_rng(7)
X = RNG.standard_normal(N) * 2
U = X * 1.7  # raw logits for the transform cases
C = RNG.random(N) + 0.1  # target coefficients (not normalised: Σc ≠ 1)
T_LOGITS = RNG.standard_normal(N) * 2
PARAMS = {"gamma": 1.7, "z_loss": 0.3, "softcap": 2.5, "temperature": 1.9}


def _instantiate(expr, ctx, values, k):
    """A symbolic-n expression at entry ``k`` (0-based) for N classes, as a float."""
    expr = expr.xreplace({ctx.k: sp.Integer(k + 1), ctx.n: sp.Integer(N)}).doit()
    table = {}
    for name, vec in values.items():
        if name == "scalars":
            continue
        for b in range(N):
            table[getattr(ctx, name)(b + 1)] = sp.Float(vec[b], 30)
    expr = expr.xreplace(table)
    return float(sp.N(expr.subs(values.get("scalars", {})), 20))


def _values(ctx, x, c):
    q = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    ell = float(np.log(np.exp(x).sum()))
    return {"x": x, "q": q, "c": c, "scalars": {ctx.ell: ell}}


def _symbols(loss):
    return {p.symbol: PARAMS[p.name] for p in symce.losses.get_loss(loss).params}


def _grad(fn, *arrays):
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy() for t in ts]


def test_cross_entropy_and_z_loss_gradients_match_autograd():
    d = _derived("cross_entropy")
    ctx = d.context
    lam = PARAMS["z_loss"]
    vals = _values(ctx, X, C)
    subs = _symbols("cross_entropy")
    (g_ce,) = _grad(lambda x: -(torch.tensor(C) * torch.log_softmax(x, 0)).sum(), X)
    (g_z,) = _grad(lambda x: lam * torch.logsumexp(x, 0) ** 2, X)
    for k in range(N):
        got = _instantiate(d.step("gradient").rhs, ctx, vals, k)
        assert got == pytest.approx(g_ce[k], rel=1e-12, abs=1e-12)
        got = _instantiate(d.step("z_gradient").rhs.subs(subs), ctx, vals, k)
        assert got == pytest.approx(g_z[k], rel=1e-12, abs=1e-12)


def test_softcap_chain_rule_matches_autograd():
    d = _derived("cross_entropy")
    ctx = d.context
    s = PARAMS["softcap"]
    x = s * np.tanh(U / s)
    vals = _values(ctx, x, C)
    (want,) = _grad(lambda u: -(torch.tensor(C) * torch.log_softmax(s * torch.tanh(u / s), 0))
                    .sum(), U)
    for k in range(N):
        got = _instantiate(d.step("transform_chain").rhs.subs(_symbols("cross_entropy")), ctx,
                           vals, k)
        assert got == pytest.approx(want[k], rel=1e-12, abs=1e-12)


def test_focal_gradient_matches_autograd():
    d = _derived("focal_loss")
    ctx = d.context
    gamma = PARAMS["gamma"]
    vals = _values(ctx, X, C)

    def focal(x):
        logq = torch.log_softmax(x, 0)
        return -(torch.tensor(C) * (1 - logq.exp()) ** gamma * logq).sum()

    (want,) = _grad(focal, X)
    for k in range(N):
        got = _instantiate(d.step("gradient").rhs.subs(_symbols("focal_loss")), ctx, vals, k)
        assert got == pytest.approx(want[k], rel=1e-11, abs=1e-12)


def test_distillation_gradients_match_autograd():
    d = _derived("kl_distillation")
    ctx = d.context
    temp = PARAMS["temperature"]
    x, t = U / temp, T_LOGITS / temp
    p = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
    vals = {**_values(ctx, x, p), "p": p}

    def kl(u, teacher):
        logp = torch.log_softmax(teacher / temp, 0)
        return temp**2 * (logp.exp() * (logp - torch.log_softmax(u / temp, 0))).sum()

    want_u, want_t = _grad(kl, U, T_LOGITS)
    subs = _symbols("kl_distillation")
    for k in range(N):
        got_u = _instantiate(d.step("transform_chain").rhs.subs(subs), ctx, vals, k)
        assert got_u == pytest.approx(want_u[k], rel=1e-11, abs=1e-12)
        got_t = _instantiate(d.step("teacher_gradient").rhs.subs(subs), ctx, vals, k)
        assert got_t == pytest.approx(want_t[k], rel=1e-11, abs=1e-12)
    assert math.isclose(sum(p), 1.0)


def test_hessians_match_autograd():
    """The proved Hessians (of the main terms) against torch's second derivatives."""
    for loss, fn in {
        "cross_entropy": lambda x: -(torch.tensor(C) * torch.log_softmax(x, 0)).sum(),
        "focal_loss": lambda x: -(torch.tensor(C) * (1 - torch.softmax(x, 0)) ** 1.7
                                  * torch.log_softmax(x, 0)).sum(),
    }.items():
        d = _derived(loss)
        ctx = d.context
        want = torch.autograd.functional.hessian(fn, torch.tensor(X)).numpy()
        hess = d.step("hessian").rhs.subs(_symbols(loss))
        vals = _values(ctx, X, C)
        for i in range(N):
            for k in range(N):
                got = _instantiate(hess.xreplace({ctx.i: sp.Integer(i + 1)}), ctx, vals, k)
                assert got == pytest.approx(want[i, k], rel=1e-10, abs=1e-12), (loss, i, k)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_parameter_range_refuses_a_value_outside_it(loss):
    """The range is printed into every module's check: it must test the value (SymPy
    decides ``Ge(gamma, 0)`` from a nonnegative ``gamma`` alone unless told not to)."""
    from symce.losses import check_value, get_loss

    for param in get_loss(loss).params:
        with pytest.raises(ValueError, match=param.name):
            check_value(param, -1.0)


def test_a_range_decided_by_the_symbols_assumptions_is_refused():
    from symce.losses import Param

    gamma = sp.Symbol("gamma", nonnegative=True)
    with pytest.raises(ValueError, match="evaluate=False"):
        Param("gamma", gamma, 2.0, sp.Ge(gamma, 0), "a number >= 0", "focusing")
