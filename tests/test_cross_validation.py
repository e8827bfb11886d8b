"""Symbolic n, concrete n and torch autograd agree (float64, random points)."""

import numpy as np
import pytest
import sympy as sp
import torch

import symce


@pytest.fixture(scope="module")
def symbolic():
    return symce.derive("cross_entropy", n=None)


def _instantiate(expr, ctx, n, **index):
    """Put a number into n and the free indices; write x[a], q[a], c[a] as x_a, q_a, c_a."""
    e = expr.subs({ctx.n: n, **{getattr(ctx, name): v for name, v in index.items()}}).doit()
    return e.replace(
        lambda t: isinstance(t, sp.Indexed),
        lambda t: sp.Symbol(f"{t.base.label}_{t.indices[0]}",
                            **({"positive": True} if str(t.base.label) == "q" else {"real": True})),
    )


@pytest.mark.parametrize("n", range(2, 9))
def test_symbolic_instantiated_equals_concrete(symbolic, n):
    concrete = symce.derive("cross_entropy", n=n)
    ctx = symbolic.context
    for a in range(1, n + 1):
        grad = _instantiate(symbolic.result, ctx, n, k=a)
        assert sp.expand(grad - concrete.result[a - 1]) == 0
        for b in range(1, n + 1):
            for step in ("jacobian", "hessian"):
                sym = _instantiate(symbolic.step(step).rhs, ctx, n, i=a, k=b)
                assert sp.expand(sym - concrete.step(step).rhs[a - 1, b - 1]) == 0


def _numeric(concrete, n, x, c):
    """Evaluate the concrete derivation's results at logits x and coefficients c."""
    q = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    ctx = concrete.context
    values = {**{ctx.q(a): q[a] for a in range(n)}, **{ctx.c(a): c[a] for a in range(n)}}
    grad = np.array(concrete.result.subs(values), dtype=float).ravel()
    jac = np.array(concrete.step("jacobian").rhs.subs(values), dtype=float)
    hess = np.array(concrete.step("hessian").rhs.subs(values), dtype=float)
    return grad, jac, hess


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_concrete_equals_torch_autograd(n):
    concrete = symce.derive("cross_entropy", n=n)
    gen = np.random.default_rng(n)
    for scale in (1.0, 30.0):
        x = gen.normal(size=n) * scale
        c = gen.uniform(0, 2, size=n)  # unnormalised on purpose: q·Σc − c, not q − c
        grad, jac, hess = _numeric(concrete, n, x, c)

        xt, ct = torch.tensor(x, dtype=torch.float64), torch.tensor(c, dtype=torch.float64)

        def loss(v, ct=ct):
            return -(ct * torch.log_softmax(v, dim=0)).sum()

        np.testing.assert_allclose(grad, torch.func.grad(loss)(xt).numpy(), rtol=1e-10,
                                   atol=1e-12)
        np.testing.assert_allclose(jac, torch.func.jacrev(lambda v: torch.softmax(v, 0))(xt),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hess, torch.func.hessian(loss)(xt).numpy(), rtol=1e-9,
                                   atol=1e-12)


def test_torch_accepts_unnormalised_targets_like_the_derivation():
    """PyTorch's own loss with probability targets has gradient q·Σc − c."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    c = torch.rand(4, 6, dtype=torch.float64, generator=gen) * 3
    torch.nn.functional.cross_entropy(x, c, reduction="sum").backward()
    q = torch.softmax(x.detach(), dim=1)
    torch.testing.assert_close(x.grad, q * c.sum(1, keepdim=True) - c)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_concrete_normalised_gradient_is_q_minus_p(n):
    d = symce.derive("cross_entropy", n=n)
    ctx = d.context
    expected = sp.Matrix([ctx.q(a) - ctx.p(a) for a in range(n)])  # q − p, by hand
    if n == 1:  # Σc = c_1 = 1 leaves no free target: q_1 − 1
        expected = sp.Matrix([ctx.q(0) - 1])
    assert d.normalised_result == expected
