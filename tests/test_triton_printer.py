"""The Triton printer at two levels: exact strings, and the printed code evaluated.

The evaluation runs the printed tile code on NumPy arrays through a small
stand-in for ``triton.language``, so it needs no triton.
"""

import types

import numpy as np
import pytest
import sympy as sp

import symce
from symce.codegen import kernel_name
from symce.codegen.expressions import E, P, W, Y, Z, kernel_expressions
from symce.codegen.triton import M, X, kernel_context, triton_code, unshifted

j = sp.Symbol("j", integer=True)
k = sp.Symbol("k", integer=True)
n = sp.Symbol("n", integer=True, positive=True)


@pytest.mark.parametrize("expr, code", [
    (sp.Sum(E[j], (j, 1, n)), "tl.sum(e, axis=1, keep_dims=True)"),
    (sp.Sum(P[j] * W[j] * X[j], (j, 1, n)), "tl.sum(p*w*x, axis=1, keep_dims=True)"),
    (sp.log(sp.Symbol("s")), "tl.log(s)"),
    (sp.exp(Z[k]), "tl.exp(z)"),
    (W[Y], "tl.load(w_ptr + y).to(ACC)"),
    (X[Y], "tl.load(x_ptr + rows_at + y * class_stride, mask=live, other=0.0).to(ACC)"),
    (sp.KroneckerDelta(k, Y), "tl.where(cols == y, 1.0, 0.0)"),
    (sp.Max(sp.Symbol("a"), sp.Symbol("b")), "tl.maximum(a, b)"),
    (1 / sp.Symbol("s"), "1/s"),
    (n, "n_classes"),
])
def test_printed_strings(expr, code):
    assert triton_code(expr) == code


def test_unshifted_sums_substitute_back():
    assert unshifted(sp.Sum(W[j] * Z[j], (j, 1, n))) == (
        sp.Sum(W[j] * X[j], (j, 1, n)) - M * sp.Sum(W[j], (j, 1, n)))
    assert unshifted(sp.Sum(Z[j], (j, 1, n))) == sp.Sum(X[j], (j, 1, n)) - M * n
    assert unshifted(Z[Y]) == X[Y] - M


def _fake_tl():
    def reduce(f):
        return lambda a, axis=None, keep_dims=False: f(a, axis=axis, keepdims=keep_dims)
    return types.SimpleNamespace(sum=reduce(np.sum), max=reduce(np.max), exp=np.exp,
                                 log=np.log, where=np.where, maximum=np.maximum)


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_printed_kernel_evaluates_to_the_gradient(kind):
    """One tile, one walk: the printed pieces give torch's loss and gradient."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    rows, classes, eps = 3, 6, 0.2
    x = rng.standard_normal((rows, classes)) * 2
    w = rng.random((1, classes)) + 0.5
    y = np.array([[1], [5], [0]])
    p = rng.random((rows, classes))
    ke = kernel_expressions(symce.derive(), kind, weighted=True, smoothed=True)
    ctx = kernel_context(ke, kernel_name(ke))
    m = x.max(axis=1, keepdims=True)
    z = x - m
    e = np.exp(z)
    env = dict(tl=_fake_tl(), x=x, w=w, p=p, y=y, m=m, z=z, e=e, cols=np.arange(classes),
               valid=1.0, scale=1.0, label_smoothing=eps, n_classes=classes, ACC=None)
    env["tl"].load = lambda address, **_: address
    env.update(x_ptr=None, w_ptr=None)
    # gathers print as loads at pointer + offset; evaluate them directly instead
    gathers = {"tl.load(w_ptr + y).to(ACC)": "np.take_along_axis(w, y.T, 1).T",
               "tl.load(x_ptr + rows_at + y * class_stride, mask=live, other=0.0)"
               ".to(ACC)": "np.take_along_axis(x, y, 1)"}
    env["np"] = np

    def run(code):
        for printed, direct in gathers.items():
            code = code.replace(printed, direct)
        return eval(code, env)  # noqa: S307 - our own printed expressions

    for name, code in ctx["accumulators"]:
        env[name] = run(code)
    env[ctx["online"]] = run(ctx["online_block"])
    for name, code in ctx["row_values"]:
        env[name] = run(code)
    loss = run(ctx["loss"])
    env["alpha"] = run(ctx["alpha"])
    env["beta"] = run(ctx["beta"])
    grad = run(ctx["gradient"])

    xt = torch.tensor(x, requires_grad=True)
    target = torch.tensor(y[:, 0]) if kind == "index" else torch.tensor(p)
    ref = torch.nn.functional.cross_entropy(xt, target, weight=torch.tensor(w[0]),
                                            reduction="none", label_smoothing=eps)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xt)
    np.testing.assert_allclose(np.ravel(loss), ref.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=1e-12, atol=1e-15)


def test_docstring_examples():
    import doctest

    import symce.codegen.triton

    result = doctest.testmod(symce.codegen.triton)
    assert result.attempted > 0 and result.failed == 0
