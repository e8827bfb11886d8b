"""Adversarial review of the head (issue 14): false statements the head's contexts accepted.

Each test states a false identity (or one the context cannot decide) and
requires the check to refuse it; the true ones next to them must still pass.
"""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

from symce.engine.head import HeadContext, head_derivation
from symce.errors import ProofError

D = sp.Derivative


def _refused(ctx: HeadContext, lhs, rhs) -> bool:
    try:
        return not ctx.equal(lhs, rhs, ())
    except (ProofError, ValueError, IndexError):
        return True


@pytest.fixture(scope="module")
def sym() -> HeadContext:
    return HeadContext()


def test_symbolic_derivatives_of_g_or_functions_of_L_are_refused(sym):
    # SymPy's doit calls each of these 0 (L and g are bare symbols to it); all are false
    a, k = sym.a, sym.k
    for lhs in (D(sym.g(k), sym.h(a)), D(sym.L ** 2, sym.h(a)), D(sp.exp(sym.L), sym.h(a)),
                D(sym.g(k), sym.W(k, sym.e)), D(2 * sym.L, sym.b(k))):
        assert _refused(sym, lhs, 0), lhs


def test_symbolic_derivative_in_a_non_parameter_is_refused(sym):
    # ∂L/∂L = 1, not 0; ∂L/∂n, ∂L/∂g_k, ∂L/∂x_k are not the head's to decide
    for v in (sym.L, sym.classes, sym.H, sym.g(sym.k), sym.x(sym.k), sym._W[sym.k]):
        assert _refused(sym, D(sym.L, v), 0), v


def test_symbolic_chain_rule_index_does_not_capture_the_variables_index(sym):
    j = sym.j
    # ∂L/∂b_j = g_j: the chain rule's own Σ_j used to capture it (Σ_j g_j ∂x_j/∂b_j = Σ_j g_j)
    assert _refused(sym, D(sym.L, sym.b(j)), sp.Sum(sym.g(j), (j, 1, sym.classes)))
    assert sym.equal(D(sym.L, sym.b(j)), sym.g(j), ())
    assert sym.equal(D(sym.L, sym.W(j, sym.e)), sym.g(j) * sym.h(sym.e), ())


def test_symbolic_false_bias_step_fails_the_derivation_check():
    d = head_derivation()
    ctx, j = d.context, d.context.j
    step = d.step("head_bias")
    bad = dataclasses.replace(step, lhs=D(ctx.L, ctx.b(j)),
                              rhs=sp.Sum(ctx.g(j), (j, 1, ctx.classes)), via=())
    steps = tuple(bad if s is step else s for s in d.steps)
    with pytest.raises(ProofError):
        dataclasses.replace(d, steps=steps).check()


def test_symbolic_canonical_names_avoid_free_symbols(sym):
    # a free integer index named like the canonical dummy (_u0) was captured by it
    u, j = sp.Symbol("_u0", integer=True), sym.j
    lhs = sp.Sum(sym.g(j) * sym.W(j, u), (j, 1, sym.classes))
    rhs = sp.Sum(sym.g(j) * sym.W(j, j), (j, 1, sym.classes))
    assert not sym.decide(lhs, rhs, ())
    assert sym.decide(lhs, lhs, ())


def test_symbolic_definitions_and_statements_do_not_capture_free_indices(sym):
    j, k, a, d = sym.j, sym.k, sym.a, sym.d
    H = sym.H
    # x's definition summed over the context's d: a free d was captured
    assert _refused(sym, D(sym.x(j), sym.h(d)), sp.Sum(sym.W(j, d), (d, 1, H)))
    assert _refused(sym, D(sym.x(d), sym.h(a)), sym.W(a, a))
    assert _refused(sym, D(sym.x(j), sym.W(k, d)),
                    sp.KroneckerDelta(j, k) * sp.Sum(sym.h(d), (d, 1, H)))
    assert _refused(sym, D(sym.L, sym.W(k, d)), sym.g(k) * sp.Sum(sym.h(d), (d, 1, H)))
    # a statement's own bound a against the free a of the variable
    assert _refused(sym, D(sp.Sum(sym.W(j, a) * sym.h(a), (a, 1, H)), sym.h(a)),
                    sp.Sum(sym.W(j, a), (a, 1, H)))
    # the true ones
    assert sym.equal(D(sym.x(j), sym.h(d)), sym.W(j, d), ())
    assert sym.equal(D(sym.x(d), sym.h(a)), sym.W(d, a), ())
    assert sym.equal(D(sym.L, sym.W(k, d)), sym.g(k) * sym.h(d), ())
    assert sym.equal(D(sp.Sum(sym.W(j, a) * sym.h(a), (a, 1, H)), sym.h(a)), sym.W(j, a), ())


def test_symbolic_other_binders_are_refused(sym):
    j = sym.j
    assert _refused(sym, sp.Product(sym.g(j), (j, 1, sym.classes)), 0)
    assert _refused(sym, sp.Subs(sym.g(j), j, 1), sym.g(1))


def test_symbolic_false_input_step_with_a_captured_index_fails_the_check():
    d = head_derivation()
    ctx = d.context
    step = d.step("head_logits_input")
    bad = dataclasses.replace(step, lhs=D(ctx.x(ctx.j), ctx.h(ctx.d)),
                              rhs=sp.Sum(ctx.W(ctx.j, ctx.d), (ctx.d, 1, ctx.H)))
    steps = tuple(bad if s is step else s for s in d.steps)
    with pytest.raises(ProofError):
        dataclasses.replace(d, steps=steps).check()


def test_concrete_indices_outside_the_sizes_raise():
    ctx = HeadContext(3, 2)
    for call in (lambda: ctx.h(0), lambda: ctx.h(3), lambda: ctx.W(0, 1), lambda: ctx.b(4),
                 lambda: ctx.g(-1), lambda: ctx.x(sp.Symbol("k"))):
        with pytest.raises(IndexError):
            call()
    assert ctx.h(sp.Integer(2)) == ctx.h(2)


def test_concrete_derivative_in_a_foreign_variable_is_refused():
    ctx = HeadContext(3, 2)
    for v in (HeadContext().h(sp.Symbol("a", integer=True)), sp.Symbol("h_3", real=True),
              ctx.L, ctx.g(1), ctx.x(1)):
        assert _refused(ctx, D(ctx.L, v), 0), v
    # what the concrete chain rule does decide still holds
    W = sp.ImmutableMatrix(3, 2, lambda k, a: ctx.W(k + 1, a + 1))
    g = sp.ImmutableMatrix(3, 1, lambda k, _: ctx.g(k + 1))
    assert ctx.equal(D(ctx.L ** 2, ctx.h(1)), 2 * ctx.L * (W.T * g)[0], ())
    assert _refused(ctx, D(ctx.g(1), ctx.h(1)), 0)


# -- the generated torch head ------------------------------------------------

def _head_module():
    from tests.parity import load_generated

    return load_generated("linear_cross_entropy_torch")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_generated_head_second_derivative_raises_instead_of_being_zero(reduction):
    import torch
    import torch.nn.functional as F

    head = _head_module()
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 6, (5,), generator=g)
    gh, gW = torch.autograd.grad(head.linear_cross_entropy(h, W, y, reduction=reduction).sum(),
                                 (h, W), create_graph=True)
    rh, rW = torch.autograd.grad(F.linear_cross_entropy(h, W, y, reduction=reduction).sum(),
                                 (h, W))
    torch.testing.assert_close(gh.detach(), rh, rtol=0, atol=1e-12)
    torch.testing.assert_close(gW.detach(), rW, rtol=0, atol=1e-12)
    # a gradient penalty: torch's head gives it a gradient; these were constants
    # (requires_grad False) so the penalty's term silently vanished from the sum
    assert gh.requires_grad
    with pytest.raises(RuntimeError, match="no second derivative"):
        ((gh ** 2).sum() + (W ** 2).sum()).backward()


def test_generated_head_strided_views_one_row_chunks_against_torch():
    # held in review: transposed (non-contiguous) input, weight and probability
    # target, a strided bias, one-row chunks, only the bias and weight requiring grad
    import torch
    import torch.nn.functional as F

    head = _head_module()
    g = torch.Generator().manual_seed(4)
    d = torch.float64
    h = torch.randn(4, 7, dtype=d, generator=g).t()
    W = torch.randn(4, 6, dtype=d, generator=g).t().requires_grad_()
    b = torch.randn(12, dtype=d, generator=g)[::2].requires_grad_()
    y = torch.randint(0, 6, (7,), generator=g)
    y[2] = -100
    go = torch.randn(7, dtype=d, generator=g)
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=1)
    for target, kw in ((y, {"label_smoothing": 0.2}),
                       (torch.softmax(torch.randn(6, 7, dtype=d, generator=g), 0).t(), {})):
        out = head.linear_cross_entropy(h, W, target, linear_bias=b, reduction="none",
                                        options=opts, **kw)
        ref = F.linear_cross_entropy(h, W, target, linear_bias=b, reduction="none", **kw)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        for a, r in zip(torch.autograd.grad(out, (W, b), go),
                        torch.autograd.grad(ref, (W, b), go), strict=True):
            torch.testing.assert_close(a, r, rtol=0, atol=1e-12)
