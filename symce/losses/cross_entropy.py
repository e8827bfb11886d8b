"""Softmax cross-entropy ``L = −Σ_i c_i log q_i``, with z-loss and soft-capping.

One coefficient vector covers every option of ``torch.nn.CrossEntropyLoss``
(hard labels, class weights, label smoothing, probability targets,
``ignore_index``: the shared :data:`~symce.losses.targets.CLASSES` model), so
one derivation serves them all.  Two options that language-model training
uses are part of the declaration:

* ``z_loss = λ ≥ 0`` (PaLM's auxiliary loss) adds the term ``λ ℓ²`` to every
  row that counts, ``ℓ`` the log-sum-exp; ``mean`` divides it by the number of
  rows that count, while the cross-entropy keeps PyTorch's denominator
  (Liger-Kernel's convention);
* ``softcap = s > 0`` (Gemma 2) replaces the logits by ``s·tanh(u/s)`` first.

The derivation also shows that LogSoftmax + NLLLoss is the same function and
that KL(c‖q) has the same gradient.
"""

from __future__ import annotations

import sympy as sp

from symce.engine.context import Context
from symce.losses import register
from symce.losses.spec import Loss, Param, Term, Transform
from symce.losses.targets import CLASSES
from symce.proof import Step

LAMBDA = sp.Symbol("lambda", nonnegative=True)
CAP = sp.Symbol("s", positive=True)


def _cross_entropy(ctx: Context) -> sp.Expr:
    return -ctx.sum(lambda i: ctx.c(i) * sp.log(ctx.q(i)))


def _z_loss(ctx: Context) -> sp.Expr:
    return LAMBDA * ctx.lse() ** 2


def _own_steps(ctx: Context, steps: dict[str, Step]) -> list[Step]:
    loss_q = steps["loss"].rhs
    gradient = steps["gradient"].rhs
    nll = -ctx.sum(lambda j: ctx.c(j) * (ctx.x(j) - ctx.lse()))
    kl = ctx.sum(lambda j: ctx.c(j) * sp.log(ctx.c(j) / ctx.q(j)))
    entropy = -ctx.sum(lambda j: ctx.c(j) * sp.log(ctx.c(j)))
    return [
        Step("log_softmax_nll", "LogSoftmax + NLLLoss", nll, loss_q,
             r"$\log \operatorname{softmax}(x)_i = x_i - \ell = \log q_i$: the same function"),
        Step("kl_decomposition", "KL divergence", kl, loss_q - entropy,
             r"$\log(c_i/q_i) = \log c_i - \log q_i$ as $q_i > 0$ (with $0 \log 0 = 0$ "
             r"where $c_i = 0$), so $\operatorname{KL}(c \| q) = \operatorname{CE}(c, q) - H(c)$"),
        Step("kl_gradient", "Gradient of the KL divergence",
             ctx.vector(lambda a: ctx.D(kl, ctx.x(a))), gradient,
             r"$H(c)$ does not depend on $x$, so KL has the cross-entropy gradient"),
    ]


@register
def cross_entropy() -> Loss:
    return Loss(
        name="cross_entropy",
        description="softmax cross-entropy L = -sum_i c_i log softmax(x)_i "
                    "(target coefficients c), with z-loss and soft-capping",
        summary="cross-entropy",
        terms=(
            Term("cross_entropy", "Cross-entropy", _cross_entropy,
                 "definition: cross-entropy with target coefficients $c$"),
            Term("z", "z-loss", _z_loss,
                 r"definition: the z-loss $\lambda \ell^2$ of the log-sum-exp",
                 reduction="rows", returned_by="return_z_loss", gate="z_loss"),
        ),
        targets=CLASSES,
        params=(
            Param("z_loss", LAMBDA, 0.0, sp.Ge(LAMBDA, 0, evaluate=False), "a number >= 0",
                  "weight of the z-loss term z_loss * logsumexp(x)**2 per row that counts",
                  specialise=True, off=0.0, examples=(0.1,)),
            Param("softcap", CAP, None, sp.Gt(CAP, 0, evaluate=False), "None or a number > 0",
                  "soft-capping: the logits become softcap * tanh(input / softcap)",
                  optional=True, specialise=True, examples=(2.5,)),
        ),
        transform=Transform(
            "softcap", "Soft-capping", lambda u: CAP * sp.tanh(u / CAP),
            lambda x: CAP * sp.atanh(x / CAP),
            r"definition: the logits are capped, $x_k = s \tanh(u_k / s)$", gate="softcap"),
        module_class="CrossEntropyLoss",
        notation=r"loss $L = -\sum_i c_i \log q_i$ and z-loss $L_z = \lambda \ell^2$",
        extra_steps=_own_steps,
        conventions=(
            "z_loss adds z_loss * logsumexp(x)**2 for every row that counts (not multiplied "
            "by class weights or label smoothing); with reduction='mean' the summed z-term "
            "is divided by the number of rows that count (for probability targets: the "
            "number of rows), while the cross-entropy keeps PyTorch's denominator "
            "(Liger-Kernel's convention).",
            "return_z_loss=True returns (loss, z_term): loss is the total, exactly what is "
            "returned without the flag; z_term the reduced z part alone, for logging.",
            "softcap=s replaces the logits by s * tanh(input / s) before everything else.",
        ),
    )
