"""The checker's float64 reference is the derivation's result, evaluated.

symce check compares users' code with ``symce.checker.reference``; these tests
tie that reference to the checked derivation (its gradient and its log-sum-exp
loss step, for concrete n) and to torch's own float64 cross-entropy.
"""

from __future__ import annotations

import numpy as np
import pytest

import symce
from symce.checker.reference import from_coefficients, softmax


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_reference_is_the_derived_gradient_and_loss(n):
    d = symce.derive("cross_entropy", n=n)
    ctx = d.context
    rng = np.random.default_rng(n)
    x = rng.normal(size=(4, n)) * 3
    c = rng.uniform(0, 2, size=(4, n))  # not normalised: the general form
    loss, grad = from_coefficients(x, c, "none")
    q = softmax(x)
    for row in range(4):
        values = {ctx.x(a): x[row, a] for a in range(n)}
        values |= {ctx.q(a): q[row, a] for a in range(n)}
        values |= {ctx.c(a): c[row, a] for a in range(n)}
        values[ctx.ell] = float(np.log(np.exp(x[row]).sum()))
        derived_grad = np.array([float(e) for e in d.result.xreplace(values)])
        derived_loss = float(d.step("loss_lse").rhs.xreplace(values))
        np.testing.assert_allclose(grad[row], derived_grad, rtol=1e-12, atol=1e-14)
        assert loss[row] == pytest.approx(derived_loss, rel=1e-12)


def test_reference_reductions_scale_the_rows():
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(5, 4)), rng.dirichlet(np.ones(4), 5)
    rows, grad = from_coefficients(x, c, "none")
    total, grad_sum = from_coefficients(x, c, "sum")
    mean, grad_mean = from_coefficients(x, c, "mean")
    assert total == pytest.approx(rows.sum()) and mean == pytest.approx(rows.mean())
    np.testing.assert_allclose(grad_sum, grad)
    np.testing.assert_allclose(grad_mean, grad / 5)


def test_reference_is_stable_where_the_naive_form_overflows():
    x = np.array([[1e4, 0.0, -1e4]])
    loss, grad = from_coefficients(x, np.array([[0.0, 1.0, 0.0]]), "sum")
    # LSE = 1e4 + log(1 + e^-1e4 + e^-2e4) = 1e4 to double precision; q = (1, 0, 0)
    assert float(loss) == pytest.approx(1e4, rel=1e-15)
    np.testing.assert_allclose(grad, [[1.0, -1.0, 0.0]], atol=1e-300)
