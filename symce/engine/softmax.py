"""Softmax facts every softmax-based loss builds on, as checked steps."""

from __future__ import annotations

import sympy as sp

from symce.engine.context import Context
from symce.progress import report
from symce.proof import Step


def softmax_steps(ctx: Context) -> list[Step]:
    """Definition, shift invariance, the log-sum-exp lemma and the Jacobian."""
    report("deriving the softmax Jacobian")
    softmax = ctx.vector(ctx.softmax_explicit)
    shifted_sum = ctx.sum(lambda j: sp.exp(ctx.x(j) - ctx.m))
    factored_sum = sp.exp(-ctx.m) * ctx.sum(lambda j: sp.exp(ctx.x(j)))
    # softmax(x − m)_k as defined, then with the shifted sum substituted (kept as
    # written: SymPy would move e^{-m} up as e^{m}), then the softmax of x
    shifted = ctx.vector(lambda a: sp.exp(ctx.x(a) - ctx.m) / shifted_sum)
    substituted = ctx.vector(
        lambda a: sp.exp(ctx.x(a) - ctx.m) / sp.UnevaluatedExpr(factored_sum))
    symbolic = not isinstance(ctx.n, int)
    dlse = ctx.vector(lambda a: ctx.D(ctx.ell, ctx.x(a)))
    jac = ctx.matrix(lambda a, b: ctx.D(ctx.q(a), ctx.x(b)))
    jac_rhs = ctx.evaluate(jac)
    outer = ctx.matrix(lambda a, b: ctx.delta(a, b) * ctx.q(a) - ctx.q(a) * ctx.q(b))
    return [
        Step("softmax", "Softmax", ctx.vector(ctx.q), softmax, "definition of the softmax"),
        Step("lse", "Log-sum-exp", ctx.ell, ctx.lse_explicit(),
             r"definition: $\ell$ is the log-sum-exp of the logits"),
        Step(
            "shift_sum",
            "Shifting the logits",
            shifted_sum,
            factored_sum,
            "$e^{x_j-m} = e^{x_j} e^{-m}$; the constant factor leaves the sum (linearity)",
        ),
        Step(
            "shift_invariance",
            "Shift invariance",
            shifted if symbolic else substituted,
            ctx.vector(ctx.q),
            "$\\operatorname{softmax}(x - m)_k = e^{x_k - m} / \\sum_j e^{x_j - m}$; "
            "substitute the shifted sum; the factor $e^{-m}$ cancels, leaving the definition "
            "of $q_k$: $\\operatorname{softmax}(x - m) = \\operatorname{softmax}(x)$ "
            "for every constant $m$",
            # for a concrete n the statement's n-term denominators cost seconds to
            # re-decide (64 classes: 3 s); the chain starts at the substituted form
            via=(substituted, softmax) if symbolic else (softmax,),
        ),
        Step(
            "lse_gradient",
            "Gradient of log-sum-exp",
            dlse,
            ctx.evaluate(dlse),
            "chain rule for $\\log$; Kronecker-delta sifting of the sum's derivative",
        ),
        Step(
            "jacobian",
            "Softmax Jacobian",
            jac,
            jac_rhs,
            "quotient rule; Kronecker-delta sifting; substitute the softmax definition",
        ),
        Step(
            "jacobian_matrix",
            "Jacobian in matrix form",
            jac_rhs,
            outer,
            "expand: $\\operatorname{diag}(q) - q q^{T}$",
        ),
    ]


def teacher_softmax_steps(ctx: Context) -> list[Step]:
    """The teacher's softmax ``p = softmax(φ(t))`` and its Jacobian in ``t``."""
    jac = ctx.matrix(lambda a, b: ctx.D(ctx.c(a), ctx.t(b)))
    return [
        Step("teacher_softmax", "The teacher's softmax", ctx.vector(ctx.c),
             ctx.vector(ctx.teacher_softmax_explicit),
             "definition: the teacher's probabilities are the softmax of its logits"),
        Step("teacher_jacobian", "The teacher's softmax Jacobian", jac, ctx.evaluate(jac),
             "quotient rule; Kronecker-delta sifting; substitute the softmax definition"),
    ]
