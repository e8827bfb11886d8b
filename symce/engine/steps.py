"""The standard steps of every softmax loss, built from its declaration.

For each term ``L_t`` of the per-row loss (the first is the main one; the
others' step names start with the term's name):

``loss``         the definition ``L_t = F``;
``loss_lse``     ``F`` with ``log q_i = x_i − ℓ`` (where ``F`` has ``log q``);
``dl_dq``        ``∂F/∂q_k`` with ``ℓ`` held fixed (where ``F`` has ``q``);
``dl_dlse``      ``∂F/∂ℓ`` with ``q`` held fixed (where ``F`` has ``ℓ``);
``chain_rule``   ``∂L_t/∂x_k = Σ_j ∂F/∂q_j · ∂q_j/∂x_k + ∂F/∂ℓ · ∂ℓ/∂x_k``,
                 with the proved Jacobian and log-sum-exp gradient;
``gradient``     its closed form;
``normalised``   the gradient under ``Σc = 1`` (where ``Σc`` appears; a
                 theorem, not an assumption, for a teacher's softmax);
``hessian``      ``∂²L_t/∂x_i∂x_k``;
``dl_dc``        ``∂F/∂c_k``, the gradient with respect to the coefficients.

Then, with a transform ``x = φ(u)``: its definition, ``∂x_k/∂u_k`` in terms
of ``x`` and the chain rule ``∂L_t/∂u_k = ∂L_t/∂x_k · ∂x_k/∂u_k``; with a
teacher: its softmax Jacobian and ``∂L/∂t_k`` through it.  Every right-hand
side is computed by the context (SymPy) and every step re-proved by
``Derivation.check``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sympy as sp

from symce.engine.context import Context
from symce.engine.softmax import softmax_steps, teacher_softmax_steps
from symce.losses.spec import Loss, Term
from symce.proof import Step


@dataclass(frozen=True)
class TermSteps:
    """Names of one term's steps (for code generation and documents)."""

    term: str
    symbol: sp.Symbol
    gradient: str
    normalised: str | None
    hessian: str | None
    dl_dc: str | None
    transform_chain: str | None
    teacher_gradient: str | None


def _prefix(term: Term, loss: Loss) -> str:
    return "" if term is loss.main else f"{term.name}_"


def _symbol(ctx: Context, term: Term, loss: Loss) -> sp.Symbol:
    return ctx.L if term is loss.main else sp.Symbol(f"L_{term.name}")


def term_steps(ctx: Context, loss: Loss, term: Term, jac, dlse) -> tuple[list[Step], TermSteps]:
    pre = _prefix(term, loss)
    L = _symbol(ctx, term, loss)
    formula = term.formula(ctx)
    ctx.define_term(L, lambda: formula)
    steps = [Step(f"{pre}loss", term.title, L, formula, term.rule)]
    lse_form = ctx.log_softmax_form(formula)
    if lse_form != formula:
        steps.append(Step(f"{pre}loss_lse", "Log-sum-exp form", formula, lse_form,
                          r"$\log q_i = x_i - \ell$ by the definitions of the softmax and "
                          r"of $\ell = \log \sum_j e^{x_j}$; linearity of the sum"))
    has_q = ctx.depends_on_q(formula)
    has_ell = formula.has(ctx.ell)
    if ctx.depends_on_x_directly(formula):
        raise ValueError(f"{loss.name}: term {term.name!r} depends on the logits other than "
                         "through q and the log-sum-exp; not supported")
    chain = 0
    if has_q:
        dl_dq = ctx.vector(lambda a: ctx.D(L, ctx.q(a)))
        dl_dq_rhs = ctx.evaluate(dl_dq)
        steps.append(Step(f"{pre}dl_dq", "Derivative with respect to the probabilities",
                          dl_dq, dl_dq_rhs,
                          r"differentiate with $q$ and $\ell$ as independent variables"))
        chain = ctx.vector(
            lambda a: ctx.sum(lambda j: ctx.entry(dl_dq_rhs, j) * ctx.entry(jac, j, a)))
    if has_ell:
        dl_dell = ctx.evaluate(ctx.D(L, ctx.ell))
        steps.append(Step(f"{pre}dl_dlse", "Derivative with respect to the log-sum-exp",
                          ctx.D(L, ctx.ell), dl_dell,
                          r"differentiate with $q$ and $\ell$ as independent variables"))
        through_ell = ctx.vector(lambda a: dl_dell * ctx.entry(dlse, a))
        chain = through_ell if isinstance(chain, int) else chain + through_ell
    if isinstance(chain, int):
        raise ValueError(f"{loss.name}: term {term.name!r} does not depend on the logits")
    rule = []
    if has_q:
        rule.append(r"through $q$ with the softmax Jacobian")
    if has_ell:
        rule.append(r"through $\ell$ with $\partial \ell / \partial x_k = q_k$")
    lhs = ctx.vector(lambda a: ctx.D(L, ctx.x(a)))
    steps.append(Step(f"{pre}chain_rule", "Chain rule", lhs, chain,
                      "chain rule " + " and ".join(rule)))
    gradient = ctx.evaluate(chain)
    steps.append(Step(f"{pre}gradient", "Gradient", chain, gradient,
                      "Kronecker-delta sifting; linearity of the sum"))
    names = {"gradient": f"{pre}gradient", "normalised": None, "hessian": None,
             "dl_dc": None, "transform_chain": None, "teacher_gradient": None}
    normalised = ctx.normalise(gradient)
    if ctx.has_coefficient_sum(gradient):
        if ctx.teacher:
            steps.append(Step(f"{pre}normalised", "The teacher's probabilities sum to one",
                              gradient, normalised,
                              r"$\sum_j p_j = 1$: $p$ is a softmax"))
        else:
            steps.append(Step(f"{pre}normalised", "Normalised targets", gradient, normalised,
                              r"the target coefficients sum to one; we write $p = c$",
                              ("normalised",)))
        names["normalised"] = f"{pre}normalised"
    hessian_lhs = ctx.matrix(lambda a, b: ctx.D(ctx.entry(gradient, a), ctx.x(b)))
    steps.append(Step(f"{pre}hessian", "Hessian", hessian_lhs, ctx.evaluate(hessian_lhs),
                      "differentiate the gradient; softmax Jacobian"))
    names["hessian"] = f"{pre}hessian"
    dl_dc = ctx.vector(lambda a: ctx.D(L, ctx.c(a)))
    dl_dc_rhs = ctx.evaluate(dl_dc)
    if not _is_zero(dl_dc_rhs):
        steps.append(Step(f"{pre}dl_dc", "Derivative with respect to the targets", dl_dc,
                          dl_dc_rhs, r"differentiate with $q$ and $c$ as independent variables"))
        names["dl_dc"] = f"{pre}dl_dc"
    info = TermSteps(term=term.name, symbol=L, **names)
    return steps, info


def _is_zero(obj) -> bool:
    if isinstance(obj, sp.MatrixBase):
        return all(e == 0 for e in obj)
    return obj == 0


def transform_steps(ctx: Context, loss: Loss, infos: list[TermSteps],
                    gradients: dict[str, object]) -> tuple[list[Step], list[TermSteps]]:
    tr = loss.transform
    steps = [
        Step("transform", tr.title, ctx.vector(ctx.x), ctx.vector(lambda a: tr.apply(ctx.u(a))),
             tr.rule),
    ]
    dx_du = ctx.vector(lambda a: ctx.D(ctx.x(a), ctx.u(a)))
    factor = ctx.evaluate(dx_du)
    steps.append(Step("transform_derivative", "Derivative of the transform", dx_du, factor,
                      r"differentiate $x_k$ in $u_k$; write the result in $x_k$"))
    out = []
    for info in infos:
        steps.append(_transform_chain(ctx, info, gradients[info.term], factor))
        out.append(_replace(info, transform_chain=steps[-1].name))
    return steps, out


def _transform_chain(ctx: Context, info: TermSteps, gradient, factor) -> Step:
    pre = "" if info.symbol == ctx.L else f"{info.term}_"
    lhs = ctx.vector(lambda a: ctx.D(info.symbol, ctx.u(a)))
    rhs = ctx.vector(lambda a: ctx.entry(gradient, a) * ctx.entry(factor, a))
    return Step(f"{pre}transform_chain", "Chain rule through the transform", lhs, rhs,
                r"chain rule: $x_k$ depends on $u_k$ alone")


def teacher_steps(ctx: Context, loss: Loss, infos: list[TermSteps],
                  dl_dcs: dict[str, object]) -> tuple[list[Step], list[TermSteps]]:
    steps = teacher_softmax_steps(ctx)
    jac = next(s.rhs for s in steps if s.name == "teacher_jacobian")
    out = []
    for info in infos:
        if info.dl_dc is None:
            out.append(info)
            continue
        steps += _teacher_chain(ctx, info, dl_dcs[info.term], jac)
        out.append(_replace(info, teacher_gradient=steps[-1].name))
    return steps, out


def _teacher_chain(ctx: Context, info: TermSteps, dl_dc, jac) -> list[Step]:
    pre = "" if info.symbol == ctx.L else f"{info.term}_"
    chain = ctx.vector(lambda a: ctx.sum(lambda j: ctx.entry(dl_dc, j) * ctx.entry(jac, j, a)))
    lhs = ctx.vector(lambda a: ctx.D(info.symbol, ctx.t(a)))
    return [
        Step(f"{pre}teacher_chain_rule", "Chain rule for the teacher", lhs, chain,
             "chain rule through the teacher's softmax"),
        Step(f"{pre}teacher_gradient", "Gradient with respect to the teacher", chain,
             ctx.evaluate(chain), "Kronecker-delta sifting; linearity of the sum"),
    ]


def _replace(info: TermSteps, **changes) -> TermSteps:
    return dataclasses.replace(info, **changes)


def standard_steps(ctx: Context, loss: Loss) -> tuple[list[Step], list[TermSteps]]:
    """Every standard step of ``loss`` in ``ctx``, and the names of each term's results."""
    steps = softmax_steps(ctx)
    jac = next(s.rhs for s in steps if s.name == "jacobian")
    dlse = next(s.rhs for s in steps if s.name == "lse_gradient")
    infos: list[TermSteps] = []
    for term in loss.terms:
        found, info = term_steps(ctx, loss, term, jac, dlse)
        steps += found
        infos.append(info)
    by_name = {s.name: s for s in steps}
    if loss.transform is not None:
        gradients = {i.term: by_name[i.gradient].rhs for i in infos}
        found, infos = transform_steps(ctx, loss, infos, gradients)
        steps += found
    if ctx.teacher:
        dl_dcs = {i.term: by_name[i.dl_dc].rhs for i in infos if i.dl_dc}
        found, infos = teacher_steps(ctx, loss, infos, dl_dcs)
        steps += found
    return steps, infos
