"""Knowledge distillation ``L = T² Σ_i p_i (log p_i − log q_i)``.

``p = softmax(t/T)`` is the teacher's distribution, ``q = softmax(u/T)`` the
student's, ``T`` the temperature (Hinton et al., 2015; the ``T²`` keeps the
gradient's scale independent of ``T``).  The teacher's logits are the target
(the shared teacher model: a boolean ``mask`` drops padding rows); both the
student's and the teacher's gradient are derived.
"""

from __future__ import annotations

import sympy as sp

from symce.engine.context import Context
from symce.losses import register
from symce.losses.spec import Loss, Param, Term, Transform
from symce.losses.targets import TEACHER

TEMPERATURE = sp.Symbol("T", positive=True)


def _kl(ctx: Context) -> sp.Expr:
    return TEMPERATURE**2 * ctx.sum(lambda i: ctx.c(i) * (sp.log(ctx.c(i)) - sp.log(ctx.q(i))))


@register
def kl_distillation() -> Loss:
    return Loss(
        name="kl_distillation",
        description="distillation L = T^2 KL(softmax(t/T) || softmax(x/T)) "
                    "(teacher logits t, temperature T)",
        summary="knowledge distillation",
        terms=(Term("kl", "Distillation loss", _kl,
                    r"definition: $T^2$ times the KL divergence of the student's $q$ from "
                    r"the teacher's $p$", reduction="rows"),),
        targets=TEACHER,
        params=(Param("temperature", TEMPERATURE, 1.0, sp.Gt(TEMPERATURE, 0, evaluate=False),
                      "a number > 0", "softmax temperature of student and teacher",
                      leading=True, examples=(2.0,)),),
        transform=Transform(
            "temperature", "Temperature", lambda u: u / TEMPERATURE,
            lambda x: TEMPERATURE * x,
            r"definition: the softmax sees the logits divided by the temperature, "
            r"$x_k = u_k / T$ (the teacher's alike)", teacher=True),
        module_class="KLDistillationLoss",
        notation=r"teacher $p = \operatorname{softmax}(t / T)$, student "
                 r"$q = \operatorname{softmax}(u / T)$",
        conventions=(
            "reduction='batchmean' sums over classes and averages over the rows that count "
            "(mask), 'sum' sums everything, 'none' gives one value per row, 'mean' averages "
            "over rows x classes (as torch.nn.functional.kl_div).",
            "Gradients flow to input and, when it requires grad, to teacher.",
        ),
    )
