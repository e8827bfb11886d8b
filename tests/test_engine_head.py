"""The head's derivation (symce.engine.head): proved, wrong steps refused, in the documents."""

import pytest
import sympy as sp

from symce.engine.head import HeadContext, head_derivation
from symce.errors import ProofError
from symce.render.head_appendix import head_context
from tests.parity import GENERATED

SIZES = [(None, None), (3, 2), (2, 3)]


@pytest.mark.parametrize("n,features", SIZES)
def test_every_step_checks(n, features):
    d = head_derivation(n, features)
    assert d.check() is d
    names = {s.name for s in d.steps}
    assert {"head_input", "head_weight", "head_bias"} <= names


def test_symbolic_results_are_the_transposed_products():
    d = head_derivation()
    ctx = d.context
    j, k, a, e = ctx.j, ctx.k, ctx.a, ctx.e
    assert d.step("head_input").rhs == sp.Sum(ctx.W(j, a) * ctx.g(j), (j, 1, ctx.classes))
    assert d.step("head_weight").rhs == ctx.g(k) * ctx.h(e)
    assert d.step("head_bias").rhs == ctx.g(k)


def test_concrete_results_numerically():
    """W^T g, g h^T, g against numbers: an arbitrary F's gradient by finite differences."""
    d = head_derivation(3, 2)
    ctx = d.context
    import numpy as np

    rng = np.random.default_rng(0)
    h, W, b = rng.normal(size=2), rng.normal(size=(3, 2)), rng.normal(size=3)

    def F(x):  # any smooth function of the logits
        return float(np.log(np.exp(x).sum()) + 0.3 * x[0] * x[2] ** 2)

    def L(hh, WW, bb):
        return F(WW @ hh + bb)

    x = W @ h + b
    eps = 1e-6
    g = np.array([(F(x + eps * np.eye(3)[i]) - F(x - eps * np.eye(3)[i])) / (2 * eps)
                  for i in range(3)])
    values = {ctx.h(i + 1): h[i] for i in range(2)}
    values.update({ctx.W(r + 1, c + 1): W[r, c] for r in range(3) for c in range(2)})
    values.update({ctx.b(r + 1): b[r] for r in range(3)})
    values.update({ctx.g(r + 1): g[r] for r in range(3)})
    dh = np.array(d.step("head_input").rhs.subs(values), dtype=float).ravel()
    dW = np.array(d.step("head_weight").rhs.subs(values), dtype=float)
    numeric_dh = [(L(h + eps * np.eye(2)[i], W, b) - L(h - eps * np.eye(2)[i], W, b)) / (2 * eps)
                  for i in range(2)]
    np.testing.assert_allclose(dh, numeric_dh, atol=1e-6)
    E = np.zeros((3, 2))
    E[1, 0] = eps
    np.testing.assert_allclose(dW[1, 0], (L(h, W + E, b) - L(h, W - E, b)) / (2 * eps), atol=1e-6)


@pytest.mark.parametrize("n,features", SIZES[:2])
def test_a_wrong_step_is_refused(n, features):
    d = head_derivation(n, features)
    for step in d.steps:
        one = sp.ones(*step.rhs.shape) if isinstance(step.rhs, sp.MatrixBase) else 1
        for wrong in (2 * step.rhs, step.rhs + one):
            with pytest.raises(ProofError):
                d.replace_step(step.name, rhs=wrong, via=()).check()


def test_a_wrong_chain_link_is_refused():
    d = head_derivation()
    step = d.step("head_weight")
    ctx = d.context
    wrong = ctx.class_sum(lambda j: ctx.g(j) * ctx.h(ctx.e))  # δ_jk dropped
    with pytest.raises(ProofError):
        d.replace_step("head_weight", via=(wrong,)).check()
    assert step.via


def test_a_float_is_refused():
    d = head_derivation(3, 2)
    step = d.step("head_bias")
    with pytest.raises(ProofError, match="floating-point"):
        d.replace_step("head_bias", rhs=step.rhs * sp.Float(1.0)).check()


@pytest.mark.parametrize("fmt", ["md", "tex"])
def test_the_appendix_context(fmt):
    c = head_context(fmt)
    assert [s["title"] for s in c["symbolic"]][3:] == ["The gradient in the hidden state",
                                                       "The gradient in the weight",
                                                       "The gradient in the bias"]
    assert r"\frac{\partial L}{\partial W_{ke}}" in c["symbolic"][4]["math"]
    assert r"g_{1} h_{2}" in c["concrete"][2]["math"]


@pytest.mark.parametrize("suffix", ["md", "tex"])
def test_the_documents_have_the_head_appendix(suffix):
    """generated/ equals what symce build writes (test_generated_in_sync): the appendix is there."""
    text = (GENERATED / f"cross_entropy_derivation.{suffix}").read_text(encoding="utf-8")
    assert "Appendix: the head" in text
    assert "H9. The gradient in the weight" in text


def test_a_transposed_weight_inside_nested_sums_is_refused():
    """Σ_j g_j Σ_d W_{j,d} h_d is not Σ_j g_j Σ_d W_{d,j} h_d: the sums' dummies are
    renamed by depth, so the inner one cannot capture the outer index (one shared
    name did, and the check accepted W g for Wᵀ g); the same sum under other
    index names is still proved equal."""
    ctx = HeadContext()
    j, d, k = ctx.j, ctx.d, ctx.k

    def nested(weight, outer, inner):
        return sp.Sum(ctx.g(outer) * sp.Sum(weight(outer, inner) * ctx.h(inner),
                                            (inner, 1, ctx.H)), (outer, 1, ctx.classes))

    lhs = nested(ctx.W, j, d)
    assert not ctx.decide(lhs, nested(lambda a, b: ctx.W(b, a), j, d), ())
    assert ctx.decide(lhs, nested(ctx.W, k, j), ())
