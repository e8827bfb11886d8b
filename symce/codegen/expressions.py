"""The expressions generated code evaluates, taken from a checked derivation.

Nothing here is typed in by hand: every piece starts from a proved step of the
symbolic-``n`` cross-entropy derivation and is transformed by SymPy.

1. **Stable log-sum-exp** (:func:`stable_lse`).  The loss in log-sum-exp form
   (step ``loss_lse``) is rewritten with every logit shifted by the row maximum
   ``m``: ``(Σc)·log Σ exp(x_j − m) − Σ c_j (x_j − m)``.  The rewrite is
   justified by the proved ``shift_invariance`` step and is itself re-checked
   by the derivation's context before it is used (a wrong rewrite raises
   :class:`~symce.errors.ProofError`).  The shifted logits ``z = x − m`` and
   their exponentials ``e = exp(z)`` are what the kernels keep in the gradient
   buffer; ``e ≤ 1`` never overflows.
2. **Gradient** (step ``gradient``, ``q·Σc − c``): ``q`` is replaced by the
   left-hand side of ``shift_invariance``, ``exp(x_k − m) / Σ exp(x_j − m)``,
   i.e. ``e_k / Σ e_j``.  The reduction's chain rule contributes a per-row
   factor ``scale`` (``grad_output`` over the reduction's denominator).
3. **Target coefficients**: one model of ``c`` per target kind is substituted
   into both (``valid`` is 0 for an ``ignore_index`` row, ``ε`` is the label
   smoothing, ``w`` the class weights, ``y`` the class index)::

       class indices:        c_j = valid · ((1 − ε) w_y δ_jy + (ε/n) w_j)
       class probabilities:  c_j = w_j · ((1 − ε) p_j + ε/n)

   Sums are made linear and ``Σ_j f_j δ_jy`` is sifted to ``f_y``.
4. **Split for an in-place kernel**: the gradient is linear in ``e_k``, in
   ``δ_ky`` and in the per-class arrays, so it splits into
   ``alpha·e_k + beta·δ_ky + dense_k`` with per-row ``alpha`` and ``beta``.
   A kernel scales the exponentials in place by ``alpha``, adds ``beta`` at
   the target and adds ``dense`` (absent without smoothing for class indices).
5. **Hoisting**: each class-axis ``Sum`` and each gather ``a[y]`` becomes a
   named symbol with its own definition, grouped by when a kernel can compute
   it: ``constants`` (class weights only, once per call), ``before_exp`` (need
   the shifted logits ``z`` before they are exponentiated in place) and
   ``after_exp`` (need ``e``).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from symce.errors import ProofError
from symce.proof import Derivation

# Names the kernels use.  Bases are arrays with a class axis, the rest are
# per-row (or per-call) values that a template computes.
Z = sp.IndexedBase("z", real=True)  # shifted logits x - m
E = sp.IndexedBase("e", positive=True)  # exp(z), kept in the gradient buffer
W = sp.IndexedBase("w", real=True)  # class weights
P = sp.IndexedBase("p", real=True)  # probability targets
Y = sp.Symbol("y", integer=True)  # class index of the row
VALID = sp.Symbol("valid", nonnegative=True)  # 0 where target == ignore_index
EPS = sp.Symbol("label_smoothing", nonnegative=True)
SCALE = sp.Symbol("scale", real=True)  # d(reduced loss)/d(row loss)

TARGET_KINDS = ("index", "probability")

#: Arrays that vary along the rows (the rest, ``w``, are per class only).
ROW_BASES = frozenset({Z, E, P})


@dataclass(frozen=True)
class KernelExpressions:
    """The pieces one target kind's kernel evaluates, all SymPy expressions.

    ``constants``, ``before_exp``, ``after_exp``: ``(symbol, definition)`` in
    evaluation order.  ``loss``: the per-row loss.  ``alpha``, ``beta``,
    ``dense``: the gradient ``scale·(q·Σc − c) = alpha·e + beta·δ_y + dense``
    (``beta``/``dense`` are zero when a kind has no such term).
    """

    kind: str
    weighted: bool
    smoothed: bool
    constants: tuple[tuple[sp.Symbol, sp.Expr], ...]
    before_exp: tuple[tuple[sp.Symbol, sp.Expr], ...]
    after_exp: tuple[tuple[sp.Symbol, sp.Expr], ...]
    loss: sp.Expr
    alpha: sp.Expr
    beta: sp.Expr
    dense: sp.Expr

    @property
    def dense_terms(self) -> tuple[tuple[sp.Expr, tuple[sp.Indexed, ...]], ...]:
        """``dense`` as ``Σ coefficient · Π arrays``: per-row factors times class arrays.

        A kernel adds each term in place (one product into a scratch block,
        no temporaries), or a bare per-row coefficient by broadcasting.
        """
        groups: dict[tuple[sp.Indexed, ...], sp.Expr] = {}
        for term in sp.Add.make_args(sp.expand(self.dense)):
            factors = sp.Mul.make_args(term)
            arrays = tuple(sorted((f for f in factors if isinstance(f, sp.Indexed)),
                                  key=sp.default_sort_key))
            coef = sp.Mul(*[f for f in factors if not isinstance(f, sp.Indexed)])
            groups[arrays] = groups.get(arrays, sp.S.Zero) + coef
        return tuple((sp.factor_terms(c), a) for a, c in groups.items() if c != 0)


# -- 1. the stable log-sum-exp rewrite -------------------------------------
def stable_lse(derivation: Derivation) -> sp.Expr:
    """``loss_lse`` with every logit shifted by ``m``, checked by the context.

    >>> import symce
    >>> stable_lse(symce.derive())
    log(Sum(exp(-m + x[j]), (j, 1, n)))*Sum(c[j], (j, 1, n)) - Sum((-m + x[j])*c[j], (j, 1, n))
    """
    ctx = derivation.context
    derivation.step("shift_invariance")  # the rewrite rests on this proved step
    loss = derivation.step("loss_lse").rhs
    x = ctx.x(ctx.k).base
    shifted = loss.replace(
        lambda t: isinstance(t, sp.Indexed) and t.base == x, lambda t: t - ctx.m
    )
    if not ctx.equal(loss, shifted, ()):
        raise ProofError("the max-shifted log-sum-exp form does not equal loss_lse")
    return shifted


def _shifted_gradient(derivation: Derivation) -> sp.Expr:
    """The gradient with ``q_k`` replaced by ``exp(x_k − m) / Σ exp(x_j − m)``.

    That quotient is the proved ``shift_invariance`` (with ``shift_sum``
    folding the ``e^{-m}`` back into the sum); the context re-checks it here
    in exactly the form that is substituted.
    """
    ctx = derivation.context
    derivation.step("shift_invariance")
    q_k = ctx.q(ctx.k)
    shifted = sp.exp(ctx.x(ctx.k) - ctx.m) / ctx.sum(lambda j: sp.exp(ctx.x(j) - ctx.m))
    if not ctx.equal(shifted, q_k, ()):
        raise ProofError(f"shift invariance does not give {q_k} = {shifted}")
    return derivation.result.xreplace({q_k: shifted})


def _to_buffers(expr: sp.Expr, derivation: Derivation) -> sp.Expr:
    """``x − m → z`` then ``exp(z) → e``: the names of what the buffer holds."""
    ctx = derivation.context
    x = ctx.x(ctx.k).base
    expr = expr.replace(
        lambda t: isinstance(t, sp.Indexed) and t.base == x, lambda t: Z[t.indices] + ctx.m
    )
    expr = expr.replace(lambda t: isinstance(t, sp.exp) and isinstance(t.args[0], sp.Indexed)
                        and t.args[0].base == Z, lambda t: E[t.args[0].indices])
    if expr.has(ctx.m):
        raise ProofError(f"the shifted form still depends on the shift m: {expr}")
    return expr


# -- 3. target coefficients --------------------------------------------------
def coefficient_model(kind: str, derivation: Derivation, weighted: bool = True,
                      smoothed: bool = True):
    """``j ↦ c_j`` for a target kind (see the module docstring).

    ``weighted=False`` specialises ``w = 1``, ``smoothed=False`` ``ε = 0``: the
    kernels for those cases then carry no dead terms.
    """
    n = derivation.context.n
    eps = EPS if smoothed else sp.S.Zero

    def w(j):
        return W[j] if weighted else sp.S.One

    if kind == "index":
        return lambda j: VALID * ((1 - eps) * w(Y) * sp.KroneckerDelta(j, Y) + eps / n * w(j))
    if kind == "probability":
        return lambda j: w(j) * ((1 - eps) * P[j] + eps / n)
    raise ValueError(f"unknown target kind {kind!r}; expected one of {TARGET_KINDS}")


def _substitute_c(expr: sp.Expr, kind: str, derivation: Derivation, weighted: bool,
                  smoothed: bool) -> sp.Expr:
    c_base = derivation.context.c(derivation.context.k).base
    model = coefficient_model(kind, derivation, weighted, smoothed)
    expr = expr.replace(
        lambda t: isinstance(t, sp.Indexed) and t.base == c_base,
        lambda t: model(t.indices[0]),
    )
    return _linear_sums(expr)


def _linear_sums(expr: sp.Expr) -> sp.Expr:
    """Split sums over ``+``, pull out factors free of the dummy, sift deltas."""
    if isinstance(expr, sp.Sum):
        (j, lo, hi), = expr.limits
        total = []
        for term in sp.Add.make_args(sp.expand(_linear_sums(expr.function))):
            outside, inside = term.as_independent(j, as_Add=False)
            deltas = [f for f in sp.Mul.make_args(inside) if isinstance(f, sp.KroneckerDelta)]
            if deltas:  # Σ_j f_j δ_jy = f_y  (y is a class: 1 ≤ y ≤ n)
                (delta,) = deltas
                (other,) = set(delta.args) - {j}
                rest = sp.Mul(*[f for f in sp.Mul.make_args(inside) if f is not delta])
                total.append(outside * rest.xreplace({j: other}))
            elif inside.has(j):
                total.append(outside * sp.Sum(inside, (j, lo, hi)))
            else:
                total.append(outside * inside * (hi - lo + 1))
        return sp.Add(*total)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_linear_sums(a) for a in expr.args])


# -- 4. split the gradient ---------------------------------------------------
def _split_gradient(grad: sp.Expr, k: sp.Symbol) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    grad = sp.expand(grad)
    e_k, delta = E[k], sp.KroneckerDelta(k, Y)
    alpha = grad.coeff(e_k)
    beta = grad.coeff(delta)
    dense = sp.expand(grad - alpha * e_k - beta * delta)
    for part in (alpha, beta):
        if part.has(k):
            raise ProofError(f"gradient is not linear in e_k and delta_ky: {grad}")
    return sp.factor_terms(alpha), sp.factor_terms(beta), sp.factor_terms(dense)


# -- 5. hoisting -------------------------------------------------------------
def _bases(expr: sp.Expr) -> set[sp.IndexedBase]:
    return {t.base for t in expr.atoms(sp.Indexed)}


def _hoist_name(term: sp.Expr) -> str:
    letters = "".join(sorted(str(b) for b in _bases(term)))
    if isinstance(term, sp.Sum):
        return f"sum_{letters}"
    return f"{term.base}_{term.indices[0]}"


def _hoist(exprs: list[sp.Expr], k: sp.Symbol):
    """Replace sums and gathers by named symbols; return definitions by stage."""
    found: dict[sp.Expr, sp.Symbol] = {}
    for expr in exprs:
        for t in sorted(expr.atoms(sp.Sum) | expr.atoms(sp.Indexed), key=sp.default_sort_key):
            # class-axis reductions and gathers at the target are per-row values;
            # arrays indexed by k (or by a sum's dummy) stay arrays
            if isinstance(t, sp.Sum) or t.indices[0] == Y:
                found.setdefault(t, sp.Symbol(_hoist_name(t), real=True))
    stages: dict[str, list[tuple[sp.Symbol, sp.Expr]]] = {
        "constants": [], "before_exp": [], "after_exp": []
    }
    for term, name in sorted(found.items(), key=lambda kv: str(kv[1])):
        bases = _bases(term)
        stage = ("after_exp" if E in bases else
                 "before_exp" if bases & ROW_BASES or term.has(Y) else "constants")
        stages[stage].append((name, term))
    replaced = [e.xreplace(found) for e in exprs]
    return replaced, {s: tuple(v) for s, v in stages.items()}


def kernel_expressions(derivation: Derivation, kind: str, weighted: bool = True,
                       smoothed: bool = True) -> KernelExpressions:
    """The hoisted loss and gradient pieces for one target kind.

    >>> import symce
    >>> kernel_expressions(symce.derive(), "index").beta
    scale*valid*w_y*(label_smoothing - 1)
    """
    if derivation.n is not None:
        raise ValueError("code generation needs the symbolic-n derivation (n=None)")
    ctx = derivation.context
    options = (kind, derivation, weighted, smoothed)
    loss = _substitute_c(_to_buffers(stable_lse(derivation), derivation), *options)
    grad = _substitute_c(SCALE * _to_buffers(_shifted_gradient(derivation), derivation),
                         *options)
    alpha, beta, dense = _split_gradient(grad, ctx.k)
    (loss, alpha, beta, dense), stages = _hoist([sp.factor_terms(loss), alpha, beta, dense],
                                                ctx.k)
    return KernelExpressions(kind=kind, weighted=weighted, smoothed=smoothed, loss=loss,
                             alpha=alpha, beta=beta, dense=dense, **stages)
