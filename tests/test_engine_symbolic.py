"""The symbolic-n derivation: every step proved, every tampered step rejected."""

import pytest
import sympy as sp

import symce
from symce import ProofError


@pytest.fixture(scope="module")
def derivation():
    return symce.derive("cross_entropy", n=None)


def test_every_step_checks(derivation):
    assert derivation.check() is derivation
    names = [s.name for s in derivation.steps]
    for required in ("softmax", "shift_invariance", "jacobian", "loss_lse", "dl_dq",
                     "chain_rule", "gradient", "normalised", "hessian", "log_softmax_nll",
                     "kl_gradient"):
        assert required in names


def test_result_is_the_hand_derived_gradient(derivation):
    ctx = derivation.context
    n, k = ctx.n, ctx.k
    j = sp.Symbol("j", integer=True)
    c, q = sp.IndexedBase("c", real=True), sp.IndexedBase("q", positive=True)
    expected = q[k] * sp.Sum(c[j], (j, 1, n)) - c[k]  # q·Σc − c, by hand
    assert not derivation.result.has(sp.Piecewise)
    assert sp.simplify(derivation.result - expected) == 0
    p = sp.IndexedBase("p", real=True)
    assert sp.expand(derivation.normalised_result - (q[k] - p[k])) == 0


def test_jacobian_and_hessian_forms(derivation):
    ctx = derivation.context
    i, k, n = ctx.i, ctx.k, ctx.n
    j = sp.Symbol("j", integer=True)
    c, q = sp.IndexedBase("c", real=True), sp.IndexedBase("q", positive=True)
    jac = q[i] * (sp.KroneckerDelta(i, k) - q[k])
    assert sp.expand(derivation.step("jacobian").rhs - jac) == 0
    hess = sp.Sum(c[j], (j, 1, n)) * jac
    assert sp.expand(derivation.step("hessian").rhs - hess) == 0


def _wrong_versions(rhs, ctx):
    """Plausible mistakes: an extra term, a factor of two, a sign flip of a logit term."""
    yield rhs + 1
    yield rhs + ctx.x(ctx.k)
    if rhs != 0:
        yield 2 * rhs


@pytest.mark.parametrize("name", [s.name for s in symce.derive().steps])
def test_tampered_step_is_rejected(derivation, name):
    step = derivation.step(name)
    for wrong in _wrong_versions(step.rhs, derivation.context):
        tampered = derivation.replace_step(name, rhs=wrong)
        with pytest.raises(ProofError, match=name):
            tampered.check()


def test_normalisation_needs_its_assumption(derivation):
    tampered = derivation.replace_step("normalised", assumptions=())
    with pytest.raises(ProofError, match="normalised"):
        tampered.check()


def test_unknown_assumption_is_an_error(derivation):
    tampered = derivation.replace_step("gradient", assumptions=("wishful",))
    with pytest.raises(ProofError, match="wishful"):
        tampered.check()


def test_bad_arguments():
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        symce.derive("nope")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            symce.derive("cross_entropy", n=bad)
