"""Focal loss ``L = −Σ_i c_i (1 − q_i)^γ log q_i`` (Lin et al., 2017).

The target coefficients ``c`` come from the shared class-target model, so
class indices, probability targets, class weights, label smoothing and
``ignore_index`` all work as for cross-entropy, and ``mean`` uses
cross-entropy's denominator.  ``γ = 0`` is cross-entropy (a checked step).
"""

from __future__ import annotations

import sympy as sp

from symce.engine.context import Context
from symce.losses import register
from symce.losses.spec import Loss, Param, Term
from symce.losses.targets import CLASSES
from symce.proof import Step

GAMMA = sp.Symbol("gamma", nonnegative=True)


def _focal(ctx: Context) -> sp.Expr:
    return -ctx.sum(lambda i: ctx.c(i) * (1 - ctx.q(i)) ** GAMMA * sp.log(ctx.q(i)))


def _own_steps(ctx: Context, steps: dict[str, Step]) -> list[Step]:
    focal = steps["loss"].rhs
    cross_entropy = -ctx.sum(lambda i: ctx.c(i) * sp.log(ctx.q(i)))
    # the focal loss at γ = 0 as written, (1 − q_i)^0 kept for the reader (checked evaluated)
    unfocused = focal.replace(
        lambda t: isinstance(t, sp.Pow) and t.exp == GAMMA,
        lambda t: sp.UnevaluatedExpr(sp.Pow(t.base, 0, evaluate=False)))
    return [
        Step("gamma_zero", "No focusing: cross-entropy", unfocused, cross_entropy,
             r"$(1 - q_i)^0 = 1$: with $\gamma = 0$ the focal loss is the cross-entropy"),
    ]


@register
def focal_loss() -> Loss:
    return Loss(
        name="focal_loss",
        description="focal loss L = -sum_i c_i (1 - q_i)^gamma log q_i (target coefficients c)",
        summary="focal loss",
        terms=(Term("focal", "Focal loss", _focal,
                    r"definition: the focal loss, focusing parameter $\gamma \ge 0$"),),
        targets=CLASSES,
        params=(Param("gamma", GAMMA, 2.0, sp.Ge(GAMMA, 0, evaluate=False), "a number >= 0",
                      "focusing parameter: (1 - q)**gamma down-weights well-classified rows",
                      leading=True, specialise=True, off=0.0, examples=(0.0, 0.5)),),
        module_class="FocalLoss",
        notation=r"loss $L = -\sum_i c_i (1 - q_i)^{\gamma} \log q_i$",
        extra_steps=_own_steps,
        conventions=("gamma = 0 is exactly cross_entropy; mean divides by cross-entropy's "
                     "denominator (the sum of the target weights of the rows that count).",),
    )
