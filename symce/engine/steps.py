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
from symce.progress import report
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
    shown = 0  # the chain rule as a reader writes it out, before SymPy cancels
    cancels = False
    if has_q:
        report(f"deriving {pre}dl_dq")
        dl_dq = ctx.vector(lambda a: ctx.D(L, ctx.q(a)))
        dl_dq_rhs = ctx.evaluate(dl_dq)
        steps.append(Step(f"{pre}dl_dq", "Derivative with respect to the probabilities",
                          dl_dq, dl_dq_rhs,
                          r"differentiate with $q$ and $\ell$ as independent variables"))
        chain = ctx.vector(
            lambda a: ctx.sum(lambda j: ctx.entry(dl_dq_rhs, j) * ctx.entry(jac, j, a)))
        if _chain_written_out(ctx):
            shown = ctx.vector(lambda a: ctx.sum(lambda j: _product(ctx.entry(dl_dq_rhs, j),
                                                                    ctx.entry(jac, j, a))))
        cancels = _divides_by_q(ctx, dl_dq_rhs)
    if has_ell:
        report(f"deriving {pre}dl_dlse")
        dl_dell = ctx.evaluate(ctx.D(L, ctx.ell))
        steps.append(Step(f"{pre}dl_dlse", "Derivative with respect to the log-sum-exp",
                          ctx.D(L, ctx.ell), dl_dell,
                          r"differentiate with $q$ and $\ell$ as independent variables"))
        through_ell = ctx.vector(lambda a: dl_dell * ctx.entry(dlse, a))
        chain = through_ell if isinstance(chain, int) else chain + through_ell
        if has_q and _chain_written_out(ctx):
            shown = shown + ctx.vector(lambda a: _product(dl_dell, ctx.entry(dlse, a)))
    if isinstance(chain, int):
        raise ValueError(f"{loss.name}: term {term.name!r} does not depend on the logits")
    rule = []
    if has_q:
        rule.append(r"through $q$ with the softmax Jacobian "
                    r"$\partial q_j / \partial x_k = q_j (\delta_{jk} - q_k)$")
    if has_ell:
        rule.append(r"through $\ell$ with $\partial \ell / \partial x_k = q_k$")
    lhs = ctx.vector(lambda a: ctx.D(L, ctx.x(a)))
    steps.append(Step(f"{pre}chain_rule", "Chain rule", lhs, chain,
                      "chain rule " + " and ".join(rule)
                      + (r"; $q_j$ cancels, as $q_j > 0$" if cancels else ""),
                      via=(shown,) if has_q and _chain_written_out(ctx) else ()))
    report(f"deriving {pre}gradient")
    gradient = ctx.evaluate(chain)
    steps.append(Step(f"{pre}gradient", "Gradient", chain, gradient,
                      "Kronecker-delta sifting, $\\sum_j f_j \\delta_{jk} = f_k$; "
                      "linearity of the sum" if gradient != chain else
                      "the chain rule gives the gradient in closed form"))
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
    report(f"deriving {pre}hessian")
    hessian_lhs = ctx.matrix(lambda a, b: ctx.D(ctx.entry(gradient, a), ctx.x(b)))
    derived = ctx.evaluate(hessian_lhs)
    hessian = ctx.logits_in_q(derived)
    steps.append(Step(f"{pre}hessian", "Hessian", hessian_lhs, hessian,
                      "differentiate the gradient with the softmax Jacobian"
                      + (r"; $x_j = \log q_j + \ell$" if hessian != derived else "")))
    names["hessian"] = f"{pre}hessian"
    report(f"deriving {pre}dl_dc")
    dl_dc = ctx.vector(lambda a: ctx.D(L, ctx.c(a)))
    dl_dc_rhs = ctx.evaluate(dl_dc)
    if not _is_zero(dl_dc_rhs):
        steps.append(Step(f"{pre}dl_dc", "Derivative with respect to the targets", dl_dc,
                          dl_dc_rhs, r"differentiate with $q$ and $c$ as independent variables"))
        names["dl_dc"] = f"{pre}dl_dc"
    info = TermSteps(term=term.name, symbol=L, **names)
    return steps, info


#: up to this many classes the chain rule is also shown before SymPy cancels; beyond,
#: building and re-checking the n² written-out products costs seconds (64 classes:
#: 2 s) and a document shows the symbolic chain as the general entry instead
CHAIN_WRITTEN_OUT_UP_TO = 8


def _chain_written_out(ctx: Context) -> bool:
    return not isinstance(ctx.n, int) or ctx.n <= CHAIN_WRITTEN_OUT_UP_TO


def _product(*factors) -> sp.Expr:
    """``f·g`` as written, before SymPy cancels (``(−c_j/q_j) · q_j(δ_jk − q_k)``)."""
    # _from_args: the node as given (Mul(..., evaluate=False) would also ask every
    # factor's assumptions, seconds for the n² factors of a 64-class chain rule)
    return sp.Mul._from_args([sp.UnevaluatedExpr(f) for f in factors], is_commutative=True)


def _entries(obj) -> list:
    return list(obj) if isinstance(obj, sp.MatrixBase) else [obj]


def _divides_by_q(ctx: Context, dl_dq) -> bool:
    """Each ``∂L/∂q_j`` has the factor ``1/q_j``, which the Jacobian's ``q_j`` cancels."""
    def divides(e) -> bool:
        return any(isinstance(f, sp.Pow) and f.exp == -1 and ctx.depends_on_q(f.base)
                   and not f.base.is_Add for f in sp.Mul.make_args(sp.factor_terms(e)))

    return all(divides(e) for e in _entries(dl_dq))


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
    report("deriving transform_derivative")
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
    report(f"deriving {pre}teacher_gradient")
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


#: the standard steps' names, by where they come from (a term's carry its prefix)
SOFTMAX_STEPS = ("softmax", "lse", "shift_sum", "shift_invariance", "lse_gradient", "jacobian",
                 "jacobian_matrix")
TERM_STEPS = ("loss", "loss_lse", "dl_dq", "dl_dlse", "chain_rule", "gradient", "normalised",
              "hessian", "dl_dc")
TRANSFORM_STEPS = ("transform", "transform_derivative")
TEACHER_STEPS = ("teacher_softmax", "teacher_jacobian")


def step_group(name: str, loss: Loss) -> str:
    """Where a step comes from: ``"softmax"``, a term's name, ``"transform"``,
    ``"teacher"``, or ``"own"`` (the loss's own steps)."""
    if name in SOFTMAX_STEPS:
        return "softmax"
    if name in TRANSFORM_STEPS:
        return "transform"
    if name in TEACHER_STEPS:
        return "teacher"
    for term in loss.terms:
        pre = _prefix(term, loss)
        if name.startswith(pre) and name[len(pre):] in TERM_STEPS:
            return term.name
        if name[len(pre):] == "transform_chain" and name.startswith(pre):
            return "transform"
        if name.startswith(pre) and name[len(pre):] in ("teacher_chain_rule",
                                                         "teacher_gradient"):
            return "teacher"
    return "own"


# -- second order: what autograd's double backward needs --------------------------
#: the direction of a Hessian-vector product (autograd's cotangent of a gradient)
V = sp.IndexedBase("v", real=True)


@dataclass(frozen=True)
class SecondOrderSteps:
    """Names of one term's second-order steps with respect to the raw logits ``r``
    (``"x"``; with a transform also ``"u"``): ``hvp`` ``Σ_l ∂²L/∂r_k∂r_l v_l``,
    ``grad_c`` ``∂(Σ_l v_l ∂L/∂r_l)/∂c_k``, ``dl_dc_r`` ``∂(Σ_l v_l ∂L/∂c_l)/∂r_k``,
    ``dl_dc_c`` ``∂(Σ_l v_l ∂L/∂c_l)/∂c_k`` (None where the term has no ``∂L/∂c``
    or the coefficients are a teacher's softmax)."""

    term: str
    var: str
    gradient: str
    hvp: str
    grad_c: str | None
    dl_dc_r: str | None
    dl_dc_c: str | None
    #: with a teacher: ``∂(Σ_l v_l ∂L/∂r_l)/∂t_k``, ``∂(Σ_l v_l ∂L/∂t_l)/∂r_k`` and
    #: ``∂(Σ_l v_l ∂L/∂t_l)/∂t_k`` (the teacher's Hessian-vector product)
    teacher_cross: str | None = None
    teacher_dl_r: str | None = None
    teacher_hvp: str | None = None


def second_order_steps(ctx: Context, loss: Loss, by_name: dict[str, Step],
                       infos) -> tuple[list[Step], list[SecondOrderSteps]]:
    """The Hessian-vector products and the mixed derivatives in the coefficients.

    Symbolic ``n`` only (the products are contractions over a second index
    ``l``).  Each right-hand side is computed by the context and re-proved by
    ``Derivation.check`` like every step.  With respect to ``x`` the product
    is the proved Hessian times ``v``; with a transform, with respect to the
    raw logits ``u``, the derivative of the proved chain rule.
    """
    if isinstance(ctx.n, int):
        raise ValueError("the second-order steps are derived for a symbolic n")
    ell = ctx.l  # the contraction's index: free in none of the derived expressions

    def contract(vector, a):
        return sp.Sum(ctx.entry(vector, a) * V[a], (a, 1, ctx.n)) if a == ell else None

    steps: list[Step] = []
    found: list[SecondOrderSteps] = []
    variables = [("x", ctx.x)] + ([("u", ctx.u)] if loss.transform is not None else [])
    for info in infos:
        pre = "" if info.symbol == ctx.L else f"{info.term}_"
        dl_dc = by_name[info.dl_dc].rhs if info.dl_dc is not None else None
        for var, r in variables:
            name = f"{pre}{var}_"
            grad_step = info.gradient if var == "x" else info.transform_chain
            G = by_name[grad_step].rhs
            report(f"deriving {name}hvp")
            if var == "x":
                H = by_name[info.hessian].rhs
                lhs = sp.Sum(ctx.entry(H, ctx.k, ell) * V[ell], (ell, 1, ctx.n))
                rule = r"the proved Hessian times $v$; Kronecker-delta sifting"
            else:
                lhs = sp.Sum(ctx.D(G, r(ell)) * V[ell], (ell, 1, ctx.n))
                rule = r"differentiate the chain rule through the transform; contract with $v$"
            steps.append(Step(f"{name}hvp", "Hessian-vector product", lhs, ctx.evaluate(lhs),
                              rule))
            names = {"hvp": f"{name}hvp", "grad_c": None, "dl_dc_r": None, "dl_dc_c": None}
            if not ctx.teacher:
                report(f"deriving {name}grad_c")
                lhs = ctx.D(contract(G.xreplace({ctx.k: ell}), ell), ctx.c(ctx.k))
                steps.append(Step(f"{name}grad_c", "Gradient in the coefficients, contracted",
                                  lhs, ctx.evaluate(lhs),
                                  r"differentiate with $q$ and $c$ as independent variables"))
                names["grad_c"] = f"{name}grad_c"
            if dl_dc is not None and not ctx.teacher:
                contracted = contract(dl_dc.xreplace({ctx.k: ell}), ell)
                for key, wrt in (("dl_dc_r", r(ctx.k)), ("dl_dc_c", ctx.c(ctx.k))):
                    if key == "dl_dc_c" and var == "u":
                        names[key] = f"{pre}x_dl_dc_c"  # the same: nothing of u in it
                        continue
                    report(f"deriving {name}{key}")
                    lhs = ctx.D(contracted, wrt)
                    steps.append(Step(f"{name}{key}", "Target gradient, differentiated", lhs,
                                      ctx.evaluate(lhs), "differentiate; contract with $v$"))
                    names[key] = f"{name}{key}"
            if ctx.teacher and info.teacher_gradient is not None:
                Gt = by_name[info.teacher_gradient].rhs
                for key, f, wrt in (("teacher_cross", G, ctx.t(ctx.k)),
                                    ("teacher_dl_r", Gt, r(ctx.k)),
                                    ("teacher_hvp", Gt, ctx.t(ctx.k))):
                    if key == "teacher_hvp" and var == "u":
                        names[key] = f"{pre}x_teacher_hvp"  # the same: nothing of u in it
                        continue
                    report(f"deriving {name}{key}")
                    lhs = ctx.D(contract(f.xreplace({ctx.k: ell}), ell), wrt)
                    steps.append(Step(f"{name}{key}", "Teacher gradient, differentiated", lhs,
                                      ctx.evaluate(lhs), "differentiate; contract with $v$"))
                    names[key] = f"{name}{key}"
            found.append(SecondOrderSteps(term=info.term, var=var, gradient=grad_step, **names))
    return steps, found
