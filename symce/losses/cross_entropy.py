"""Softmax cross-entropy ``L = −Σ_i c_i log q_i`` with target coefficients ``c``.

One coefficient vector covers every option of ``torch.nn.CrossEntropyLoss``
(hard labels, class weights, label smoothing, probability targets,
``ignore_index``), so one derivation serves them all.  The derivation also
shows that LogSoftmax + NLLLoss is the same function and that KL(c‖q) has the
same gradient.
"""

from __future__ import annotations

import sympy as sp

from symce.engine.context import Context
from symce.engine.softmax import softmax_steps
from symce.losses import register
from symce.proof import Step

DESCRIPTION = "softmax cross-entropy L = -sum_i c_i log softmax(x)_i (target coefficients c)"


@register("cross_entropy", DESCRIPTION)
def cross_entropy_steps(ctx: Context) -> list[Step]:
    steps = softmax_steps(ctx)
    jac = next(s.rhs for s in steps if s.name == "jacobian")

    def per_class(a):
        return -ctx.c(a) * sp.log(ctx.q(a))

    ctx.loss_definition(per_class)
    loss_q = ctx.sum(per_class)
    lse = ctx.lse()
    loss_lse = -ctx.sum(lambda j: ctx.c(j) * ctx.x(j)) + ctx.sum(ctx.c) * lse

    dl_dq = ctx.vector(lambda a: ctx.D(ctx.L, ctx.q(a)))
    dl_dq_rhs = ctx.evaluate(dl_dq)
    chain = ctx.vector(
        lambda a: ctx.sum(lambda j: ctx.entry(dl_dq_rhs, j) * ctx.entry(jac, j, a))
    )
    gradient = ctx.evaluate(chain)
    hessian_lhs = ctx.matrix(lambda a, b: ctx.D(ctx.entry(gradient, a), ctx.x(b)))
    nll = -ctx.sum(lambda j: ctx.c(j) * (ctx.x(j) - lse))
    kl = ctx.sum(lambda j: ctx.c(j) * sp.log(ctx.c(j) / ctx.q(j)))
    entropy = -ctx.sum(lambda j: ctx.c(j) * sp.log(ctx.c(j)))

    return steps + [
        Step("loss", "Cross-entropy", ctx.L, loss_q,
             "definition: cross-entropy with target coefficients $c$"),
        Step("loss_lse", "Log-sum-exp form", loss_q, loss_lse,
             "$\\log q_i = x_i - \\operatorname{LSE}(x)$ by the softmax definition; "
             "linearity of the sum"),
        Step("dl_dq", "Derivative with respect to the probabilities", dl_dq, dl_dq_rhs,
             "derivative of the logarithm; Kronecker-delta sifting"),
        Step("chain_rule", "Chain rule", ctx.vector(lambda a: ctx.D(ctx.L, ctx.x(a))), chain,
             "chain rule through $q$, with the softmax Jacobian"),
        Step("gradient", "Gradient", chain, gradient,
             "Kronecker-delta sifting; linearity of the sum"),
        Step("normalised", "Normalised targets", gradient, ctx.normalise(gradient),
             "normalisation: the target coefficients sum to one", ("normalised",)),
        Step("hessian", "Hessian", hessian_lhs, ctx.evaluate(hessian_lhs),
             "differentiate the gradient; softmax Jacobian"),
        Step("log_softmax_nll", "LogSoftmax + NLLLoss", nll, loss_q,
             "$\\operatorname{log\\_softmax}(x)_i = x_i - \\operatorname{LSE}(x) = \\log q_i$: "
             "the same function"),
        Step("kl_decomposition", "KL divergence", kl, loss_q - entropy,
             "$\\log(c_i/q_i) = \\log c_i - \\log q_i$, so "
             "$\\operatorname{KL}(c \\| q) = \\operatorname{CE}(c, q) - H(c)$",
             ("positive_targets",)),
        Step("kl_gradient", "Gradient of the KL divergence",
             ctx.vector(lambda a: ctx.D(kl, ctx.x(a))), gradient,
             "$H(c)$ does not depend on $x$, so KL has the cross-entropy gradient",
             ("positive_targets",)),
    ]
