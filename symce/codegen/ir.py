"""The kernel description: what one kernel computes, lowered from a checked derivation.

A :class:`Kernel` is the contract between the mathematics and every backend.
It is built from the symbolic-``n`` derivation of a loss, for one target kind
(class indices, probabilities, a teacher) and one setting of the specialised
options (class weights given or not, label smoothing on or off, a loss's own
``specialise`` parameters), in these steps, each a SymPy rewrite:

1. **Lowering to what a row holds.**  The derivation speaks of ``q``, ``ℓ``,
   ``x`` (and a teacher's ``p``, ``ℓ_t``); a kernel of the shifted logits
   ``z = x − m`` and their exponentials ``e = exp(z)`` (``m`` the row
   maximum): ``log q_a = z_a − log Σe``, ``q_a = e_a / Σe``, ``ℓ = m + log Σe``
   — the proved ``shift_sum`` and ``shift_invariance``.
   Each lowered expression is substituted back and re-proved equal to the
   derivation's by its context (:func:`lower` raises ``ProofError``
   otherwise), so no rewrite is taken on trust.
2. **Target coefficients**: the target model's ``c_j`` (shared by all losses)
   is substituted, sums are made linear and ``Σ_j f_j δ_jy`` is sifted.
3. **Rows that do not count, and the reduction**: every term of a row is
   multiplied by the row mask; each term's gradient by its own per-row
   factor ``scale_<term>`` (``grad_output`` over that term's denominator).
4. **The transform's chain rule** (soft-capping, a temperature): the
   gradient with respect to the raw logits is the gradient in ``x`` times the
   proved ``∂x_k/∂u_k``.
5. **Hoisting**: each class-axis ``Sum`` becomes a named row value with the
   walk (*level*) that can compute it — a sum of ``z``, ``e`` and the targets
   needs only the maximum (level 1), a sum over ``q`` also ``Σe`` (level 2) —
   and each value at the target class ``y`` a gather of the raw data.
6. **The gradient, split for in-place kernels**: the element of class ``k``
   is ``Σ_i coefficient_i · factor_i(k)`` with per-row coefficients and
   element factors, plus ``target`` added at ``k = y`` (the coefficient of
   ``δ_ky``, evaluated at ``y``).

Backends print these expressions (each with its printer table) into their
templates; nothing of a loss's mathematics is written anywhere else.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import sympy as sp

from symce.errors import ProofError
from symce.losses import get_loss
from symce.losses.spec import Loss, Param
from symce.losses.targets import EPS, MASK, N_CLASSES, W, Y
from symce.proof import Derivation

# -- element symbols: one class ``k`` of one row ---------------------------------
K = sp.Symbol("k", integer=True)  # the class of a gradient entry
J = sp.Symbol("j", integer=True)  # a class-axis sum's dummy


@dataclass(frozen=True)
class Stream:
    """A softmax over a row: its raw logits, transformed, shifted, exponentiated."""

    name: str
    raw: sp.IndexedBase
    logit: sp.IndexedBase
    shifted: sp.IndexedBase
    exp: sp.IndexedBase
    max: sp.Symbol
    sum: sp.Symbol


STUDENT = Stream("input", sp.IndexedBase("u", real=True), sp.IndexedBase("x", real=True),
                 sp.IndexedBase("z", real=True), sp.IndexedBase("e", positive=True),
                 sp.Symbol("m", real=True), sp.Symbol("sum_e", positive=True))
TEACHER = Stream("teacher", sp.IndexedBase("tu", real=True), sp.IndexedBase("tx", real=True),
                 sp.IndexedBase("tz", real=True), sp.IndexedBase("te", positive=True),
                 sp.Symbol("mt", real=True), sp.Symbol("sum_te", positive=True))

#: exp(z) = 2^(z·log2 e): the kernels' exponential (a cheaper machine operation)
LOG2_E = sp.N(1 / sp.log(2), 30)


def scale_symbol(term: str) -> sp.Symbol:
    """``d(reduced loss)/d(row's term)``: ``grad_output`` over the term's denominator."""
    return sp.Symbol(f"scale_{term}", real=True)


@dataclass(frozen=True)
class RowValue:
    """A per-row value: ``max`` of a stream, a class ``sum``, a ``gather`` at ``y``,
    or a ``constant``: a class sum of the weights alone, the same for every row;
    or an ``input``: a per-row value the caller supplies (an array), computed
    elsewhere (the combined values a vocabulary-parallel slice's gradient reads).

    ``definition``: for a sum, ``Sum(summand(J), (J, 1, n))`` (the summand in
    element symbols at ``J`` and row values of lower levels); for a gather,
    the raw array at ``Y``; for a max, the stream's logits at ``J``.
    ``level``: 0 for maxima and gathers, else the walk over the row that
    computes it (1: needs only the maxima).
    """

    symbol: sp.Symbol
    kind: str
    definition: sp.Expr
    level: int

    @property
    def summand(self) -> sp.Expr:
        """A sum's summand at the element ``K`` (the walk's element)."""
        (j, _, _), = self.definition.limits
        return self.definition.function.xreplace({j: K})


@dataclass(frozen=True)
class Gradient:
    """``∂(reduced loss)/∂(raw logit k)`` of one row, split for an in-place kernel.

    ``element`` is the whole entry (without the target term);
    ``terms`` the same as ``((coefficient, factor), …)`` with per-row
    coefficients and element factors (``e_k``, ``p_k``, …); ``target`` the
    per-row amount added at ``k = y`` (0 if none).
    """

    element: sp.Expr
    terms: tuple[tuple[sp.Expr, sp.Expr], ...]
    target: sp.Expr


@dataclass(frozen=True)
class Kernel:
    """One kernel of one loss: target kind × specialised options."""

    loss: str
    kind: str
    flags: tuple[tuple[str, bool], ...]
    streams: tuple[Stream, ...]
    #: element definitions in evaluation order: logit = φ(raw), shifted, exp
    elements: tuple[tuple[sp.Indexed, sp.Expr], ...]
    row_values: tuple[RowValue, ...]
    #: per term: the per-row loss (row mask applied)
    losses: tuple[tuple[str, sp.Expr], ...]
    grad: Gradient
    grad_teacher: Gradient | None
    #: runtime scalars the kernel reads: loss parameters, label smoothing
    scalars: tuple[str, ...]
    #: the arrays the kernel reads besides the logits: p, w, y, valid, teacher
    arrays: tuple[str, ...]
    masked: bool
    transformed: bool
    #: the per-row factor of each term's gradient (``scale_<term>``)
    scales: tuple[str, ...]
    names: Mapping[sp.Basic, str] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple:
        return (self.kind, *(value for _, value in self.flags))

    @property
    def name(self) -> str:
        return "_".join([self.kind] + [f for f, on in self.flags if on])

    @property
    def levels(self) -> int:
        """Walks over a row that compute sums (the maxima's walk not counted)."""
        return max((v.level for v in self.row_values if v.kind == "sum"), default=0)

    def values(self, kind: str | None = None, level: int | None = None) -> list[RowValue]:
        return [v for v in self.row_values if (kind is None or v.kind == kind)
                and (level is None or v.level == level)]

    def flag(self, name: str) -> bool:
        return dict(self.flags)[name]


# -- 1. lowering ---------------------------------------------------------------
def _streams(loss: Loss) -> tuple[Stream, ...]:
    return (STUDENT, TEACHER) if loss.targets.name == "teacher" else (STUDENT,)


def _sum(body) -> sp.Sum:
    return sp.Sum(body(J), (J, 1, N_CLASSES))


def lower(expr: sp.Expr, derivation: Derivation, check: bool = True) -> sp.Expr:
    """The derivation's ``expr`` (free index ``k``) in what a kernel's row holds.

    Checked: substituted back (``z = x − m``, ``e = e^{x−m}``) it must equal
    ``expr`` by the derivation's own decision procedure.
    """
    ctx = derivation.context
    xs, qs, cs = ctx._x, ctx._q, ctx._c
    out = expr.xreplace({ctx.k: K, ctx.n: N_CLASSES})
    s = STUDENT
    # the sums substituted here get their own dummy; _rename_dummies then names
    # every sum's dummy by its depth (a nested sum never shares its outer's)
    inner = sp.Symbol("j_inner", integer=True)
    sum_e = sp.Sum(s.exp[inner], (inner, 1, N_CLASSES))

    def is_(base):
        return lambda t: isinstance(t, sp.Indexed) and t.base == base

    out = out.replace(lambda t: isinstance(t, sp.log) and is_(qs)(t.args[0]),
                      lambda t: s.shifted[t.args[0].indices[0]] - sp.log(sum_e))
    out = out.replace(is_(qs), lambda t: s.exp[t.indices[0]] / sum_e)
    out = out.xreplace({ctx.ell: s.max + sp.log(sum_e)})
    out = out.replace(is_(xs), lambda t: s.logit[t.indices[0]])
    if ctx.teacher:
        t = TEACHER
        sum_t = sp.Sum(t.exp[inner], (inner, 1, N_CLASSES))
        out = out.replace(lambda e: isinstance(e, sp.log) and is_(cs)(e.args[0]),
                          lambda e: t.shifted[e.args[0].indices[0]] - sp.log(sum_t))
        out = out.replace(is_(cs), lambda e: t.exp[e.indices[0]] / sum_t)
        out = out.xreplace({ctx.ell_t: t.max + sp.log(sum_t)})
    out = _rename_dummies(out)
    if check:
        _check_lowering(expr, out, derivation)
    return out


def _rename_dummies(expr: sp.Expr) -> sp.Expr:
    """Every sum's dummy renamed to ``J`` (nested sums: fresh names)."""
    def rename(t: sp.Sum, depth: int = 0) -> sp.Expr:
        (d, lo, hi), = t.limits
        new = J if depth == 0 else sp.Symbol(f"j{depth + 1}", integer=True)
        body = t.function.xreplace({d: new})
        body = body.replace(lambda u: isinstance(u, sp.Sum), lambda u: rename(u, depth + 1))
        return sp.Sum(body, (new, lo, hi))

    return expr.replace(lambda t: isinstance(t, sp.Sum), rename)


def _check_lowering(original: sp.Expr, lowered: sp.Expr, derivation: Derivation) -> None:
    ctx = derivation.context
    m, mt = sp.Symbol("m_shift", real=True), sp.Symbol("mt_shift", real=True)
    s, t = STUDENT, TEACHER
    back = lowered.xreplace({K: ctx.k, N_CLASSES: ctx.n, s.max: m, t.max: mt})
    back = back.replace(lambda e: isinstance(e, sp.Indexed) and e.base == s.logit,
                        lambda e: ctx.x(e.indices[0]))
    back = back.replace(lambda e: isinstance(e, sp.Indexed) and e.base == s.shifted,
                        lambda e: ctx.x(e.indices[0]) - m)
    back = back.replace(lambda e: isinstance(e, sp.Indexed) and e.base == s.exp,
                        lambda e: sp.exp(ctx.x(e.indices[0]) - m))
    if ctx.teacher:
        back = back.replace(lambda e: isinstance(e, sp.Indexed) and e.base == t.shifted,
                            lambda e: ctx.teacher_logit(e.indices[0]) - mt)
        back = back.replace(lambda e: isinstance(e, sp.Indexed) and e.base == t.exp,
                            lambda e: sp.exp(ctx.teacher_logit(e.indices[0]) - mt))
    if not ctx.equal(original, back, ()):
        raise ProofError(f"lowering {original} to the shifted form {lowered} is not proved by "
                         "the shift-invariance of the softmax")


# -- 2. target coefficients ------------------------------------------------------
def substitute_targets(expr: sp.Expr, derivation: Derivation, kind: str, weighted: bool,
                       smoothed: bool) -> sp.Expr:
    """``c_j`` → the target model's coefficients; sums linear; deltas sifted."""
    loss = get_loss(derivation.loss)
    model = loss.targets.coefficients(kind, weighted, smoothed)
    if model is not None:
        c_base = derivation.context._c
        expr = expr.replace(lambda t: isinstance(t, sp.Indexed) and t.base == c_base,
                            lambda t: model(t.indices[0]))
    return linear_sums(expr)


def expand(expr: sp.Expr) -> sp.Expr:
    """``sp.expand`` without splitting ``e^{a+b}`` (``e^{x_y − m}`` must stay one exponential:
    ``e^{x_y}`` alone may overflow) or logarithms."""
    return sp.expand(expr, power_exp=False, log=False)


def linear_sums(expr: sp.Expr) -> sp.Expr:
    """Split sums over ``+``, pull out factors free of the dummy, sift deltas."""
    if isinstance(expr, sp.Sum):
        (j, lo, hi), = expr.limits
        total = []
        for term in sp.Add.make_args(expand(linear_sums(expr.function))):
            outside, inside = sp.factor_terms(term).as_independent(j, as_Add=False)
            factors = sp.Mul.make_args(inside)
            deltas = [f for f in factors if isinstance(f, sp.KroneckerDelta) and f.has(j)]
            if deltas:  # Σ_j f_j δ_jy = f_y  (y is a class: 1 ≤ y ≤ n)
                delta = deltas[0]
                (other,) = set(delta.args) - {j}
                rest = sp.Mul(*[f for f in factors if f is not delta])
                total.append(outside * linear_sums(rest.xreplace({j: other})))
            elif inside.has(j):
                total.append(outside * sp.Sum(inside, (j, lo, hi)))
            else:
                total.append(outside * inside * (hi - lo + 1))
        return sp.Add(*total)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[linear_sums(a) for a in expr.args])


# -- 5. hoisting -----------------------------------------------------------------
def _element_bases(streams: Iterable[Stream]) -> dict[sp.IndexedBase, Stream]:
    found = {}
    for s in streams:
        for base in (s.raw, s.logit, s.shifted, s.exp):
            found[base] = s
    return found


class _Hoister:
    """Names every class sum and every gather at ``y``, innermost first, with its level."""

    def __init__(self, streams: tuple[Stream, ...], transform):
        self.streams = streams
        self.transform = transform
        self.values: dict[sp.Expr, RowValue] = {}
        self.level: dict[sp.Symbol, int] = {s.max: 0 for s in streams}
        for s in streams:
            self.values[s.max] = RowValue(s.max, "max", s.logit[J], 0)
        self.bases = _element_bases(streams)

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        expr = self._gathers(expr)
        while True:
            # in a structural order: atoms() is a set, and the names given here
            # (sum_e_, sum_e__ …) and the sums' order must not depend on the hash seed
            innermost = sorted((t for t in expr.atoms(sp.Sum) if not t.function.has(sp.Sum)),
                               key=sp.default_sort_key)
            if not innermost:
                return expr
            expr = expr.xreplace({t: self._sum(t) for t in innermost})

    def _gathers(self, expr: sp.Expr) -> sp.Expr:
        """Element symbols at ``y`` in terms of the raw data gathered at ``y``."""
        def at_y(t: sp.Indexed) -> sp.Expr:
            s = self.bases.get(t.base)
            if s is None:  # p, w: raw arrays
                return self._gather(t)
            raw = self._gather(s.raw[Y])
            logit = self.transform(raw, s) if self.transform else raw
            if t.base == s.raw:
                return raw
            if t.base == s.logit:
                return logit
            if t.base == s.shifted:
                return logit - s.max
            return sp.exp(logit - s.max)

        return expr.replace(lambda t: isinstance(t, sp.Indexed) and t.indices[0] == Y, at_y)

    def _gather(self, t: sp.Indexed) -> sp.Symbol:
        if t not in self.values:
            symbol = sp.Symbol(f"{t.base}_y", real=True)
            self.values[t] = RowValue(symbol, "gather", t, 0)
            self.level[symbol] = 0
        return self.values[t].symbol

    def _sum(self, t: sp.Sum) -> sp.Symbol:
        (j, lo, hi), = t.limits
        canonical = sp.Sum(t.function.xreplace({j: J}), (J, lo, hi))
        if canonical in self.values:
            return self.values[canonical].symbol
        if self._per_class_only(canonical.function):
            kind, level = "constant", 0  # the same for every row: once per call
        else:
            uses = [self.level[s] for s in canonical.free_symbols if s in self.level]
            kind, level = "sum", 1 + max(uses, default=0)
        symbol = sp.Symbol(self._name(canonical), real=True)
        taken = {v.symbol for v in self.values.values()}
        while symbol in taken:
            symbol = sp.Symbol(symbol.name + "_", real=True)
        self.values[canonical] = RowValue(symbol, kind, canonical, level)
        self.level[symbol] = level
        return symbol

    def _per_class_only(self, summand: sp.Expr) -> bool:
        """Only class weights (and parameters): no logits, targets or row values."""
        bases = {t.base for t in summand.atoms(sp.Indexed)}
        return bases <= {W} and not (summand.free_symbols & set(self.level))

    def _name(self, t: sp.Sum) -> str:
        for s in self.streams:
            if t.function == s.exp[J]:
                return s.sum.name
        letters = "".join(sorted({str(b.base) for b in t.atoms(sp.Indexed)}))
        return f"sum_{letters}"

    def gradient(self, g: Gradient) -> Gradient:
        terms = tuple((self(c), self(f)) for c, f in g.terms)
        return Gradient(element=sp.Add(*[c * f for c, f in terms]), terms=terms,
                        target=self(g.target))

    def ordered(self) -> tuple[RowValue, ...]:
        order = {"constant": 0, "max": 1, "gather": 2, "sum": 3}
        values = list(self.values.values())
        return tuple(sorted(values, key=lambda v: (v.level, order[v.kind])))


# -- 6. the gradient split ---------------------------------------------------------
def _is_element(expr: sp.Expr) -> bool:
    return any(K in t.indices for t in expr.atoms(sp.Indexed))


def split_gradient(grad: sp.Expr) -> Gradient:
    """``grad`` (in ``K``, with ``δ_KY``) as element terms plus the target term."""
    grad = expand(grad)
    delta = sp.KroneckerDelta(K, Y)
    grad = grad.replace(lambda t: t.is_Pow and isinstance(t.base, sp.KroneckerDelta)
                        and t.exp.is_positive, lambda t: t.base)
    target = sp.S.Zero
    rest = []
    for term in sp.Add.make_args(grad):
        if term.has(sp.KroneckerDelta):
            factors = sp.Mul.make_args(term)
            deltas = [f for f in factors if isinstance(f, sp.KroneckerDelta)]
            if len(deltas) != 1 or deltas[0] != delta:
                raise ProofError(f"the gradient is not linear in δ_ky: {term}")
            # f(k) δ_ky = f(y) δ_ky: the delta is zero unless k = y
            others = sp.Mul(*[f for f in factors if f is not deltas[0]])
            if others.has(sp.KroneckerDelta):
                raise ProofError(f"the gradient is not linear in δ_ky: {term}")
            target += others.xreplace({K: Y})
        else:
            rest.append(term)
    groups: dict[sp.Expr, sp.Expr] = {}
    for term in rest:
        factors = sp.Mul.make_args(term)
        element = sp.Mul(*[f for f in factors if _is_element(f)])
        coefficient = sp.Mul(*[f for f in factors if not _is_element(f)])
        groups[element] = groups.get(element, sp.S.Zero) + coefficient
    terms = tuple(sorted(((sp.factor_terms(c), e) for e, c in groups.items() if c != 0),
                         key=lambda ce: sp.default_sort_key(ce[1])))
    element = sp.Add(*[c * e for c, e in terms])
    return Gradient(element=element, terms=terms, target=sp.factor_terms(target))


# -- the kernel ----------------------------------------------------------------------
def flag_names(loss: Loss) -> tuple[str, ...]:
    """The options kernels are specialised on, in a fixed order."""
    model = loss.targets
    names = []
    if model.name == "classes":
        names += ["weighted", "smoothed"]
    names += [p.name for p in loss.params if p.specialise]
    return tuple(names)


def kernel_keys(loss: Loss) -> list[tuple[str, tuple[tuple[str, bool], ...]]]:
    flags = flag_names(loss)
    return [(kind, tuple(zip(flags, values, strict=True)))
            for kind in loss.targets.kinds
            for values in itertools.product((False, True), repeat=len(flags))]


def _transform_of(loss: Loss, on: bool):
    """``φ`` for the element definitions (None: the identity)."""
    tr = loss.transform
    if tr is None or not on:
        return None

    def apply(raw: sp.Expr, stream: Stream) -> sp.Expr:
        if stream is TEACHER and not tr.teacher:
            return raw
        return tr.apply(raw)

    return apply


@functools.cache
def derivation_of(loss_name: str) -> Derivation:
    """The symbolic-n derivation code is generated from (derived and checked once a
    process: the same one the documents are rendered from)."""
    from symce.render.cache import derivation

    return derivation(loss_name, None)


@functools.cache
def _lowered(loss_name: str, step: str, fixed: tuple[tuple[sp.Symbol, float], ...] = ()
             ) -> sp.Expr:
    """A step's right-hand side lowered; powers of a base combined first
    (``(1 − q)^γ / (1 − q) = (1 − q)^{γ−1}``: no ``0/0`` where ``q`` rounds to 1).

    ``fixed``: parameters set to their "off" value first (a kernel specialised
    for it): SymPy then drops what vanishes — with ``γ = 0`` the focal loss's
    expressions are cross-entropy's, and no ``0 · (1 − q)^{−1}`` is left to be
    ``0 · ∞`` where ``q`` rounds to 1.
    """
    derivation = derivation_of(loss_name)
    return lower_at(derivation.step(step).rhs, derivation, fixed)


def lower_at(expr: sp.Expr, derivation: Derivation,
             fixed: tuple[tuple[sp.Symbol, float], ...] = ()) -> sp.Expr:
    """``expr`` with the ``fixed`` parameters at their values, powers of a base
    combined, lowered (see :func:`_lowered`)."""
    if fixed:
        expr = expr.xreplace({symbol: sp.nsimplify(value) for symbol, value in fixed})
    return lower(sp.powsimp(expr, deep=True), derivation)


def off_parameters(loss: Loss, on: dict[str, bool]) -> tuple[tuple[sp.Symbol, float], ...]:
    """The specialised parameters a kernel with the flags ``on`` has off: ``(symbol, off)``."""
    return tuple((p.symbol, p.off) for p in loss.params
                 if p.specialise and p.off is not None and not on.get(p.name, True))


@functools.cache
def build_kernel(loss_name: str, kind: str, flags: tuple[tuple[str, bool], ...]) -> Kernel:
    loss = get_loss(loss_name)
    derivation = derivation_of(loss_name)
    on = dict(flags)
    weighted, smoothed = on.get("weighted", False), on.get("smoothed", False)
    transform_on = loss.transform is not None and (
        loss.transform.gate is None or on.get(loss.transform.gate, False))
    transform = _transform_of(loss, transform_on)
    streams = _streams(loss)
    masked = kind in ("index", "teacher")
    mask = MASK if masked else sp.S.One

    # specialised parameters that are off at their declared value: fixed to it
    fixed = off_parameters(loss, on)

    def prepared(step: str) -> sp.Expr:
        return substitute_targets(_lowered(loss_name, step, fixed), derivation, kind,
                                  weighted, smoothed)

    losses, grads, grads_t = [], [], []
    for term, info in zip(loss.terms, derivation.terms, strict=True):
        losses.append((term.name, mask * prepared(f"{_pre(term, loss)}loss")))
        use_normalised = derivation.context.teacher and info.normalised is not None
        g = info.normalised if use_normalised else info.gradient
        grads.append(scale_symbol(term.name) * mask * prepared(g))
        if info.teacher_gradient is not None:
            grads_t.append(scale_symbol(term.name) * mask * prepared(info.teacher_gradient))
    grad = sp.Add(*grads)
    grad_t = sp.Add(*grads_t) if grads_t else None
    if transform_on:  # the teacher's gradient already includes its transform (its Jacobian)
        grad = grad * prepared("transform_derivative")
    hoist = _Hoister(streams, transform)
    losses = [(name, hoist(sp.factor_terms(e))) for name, e in losses]
    grad = hoist.gradient(split_gradient(grad))
    grad_t = hoist.gradient(split_gradient(grad_t)) if grad_t is not None else None
    elements = []
    for s in streams:
        raw = s.raw[K]
        logit = transform(raw, s) if transform else raw
        elements += [(s.logit[K], logit), (s.shifted[K], s.logit[K] - s.max),
                     (s.exp[K], sp.exp(s.shifted[K]))]
    used = set().union(*(e.free_symbols for _, e in losses), _symbols(grad),
                       *(v.definition.free_symbols for v in hoist.values.values()),
                       _symbols(grad_t) if grad_t is not None else set())
    scalars = [p.name for p in loss.params if p.symbol in used]
    if EPS in used:
        scalars.insert(0, "label_smoothing")
    arrays = _arrays(kind, weighted, masked)
    names = _names(loss)
    return Kernel(
        loss=loss.name, kind=kind, flags=flags, streams=streams, elements=tuple(elements),
        row_values=hoist.ordered(), losses=tuple(losses), grad=grad, grad_teacher=grad_t,
        scalars=tuple(scalars), arrays=arrays, masked=masked, transformed=transform_on,
        scales=tuple(t.name for t in loss.terms), names=names,
    )


def _symbols(g: Gradient) -> set[sp.Symbol]:
    return g.element.free_symbols | g.target.free_symbols


def _pre(term, loss: Loss) -> str:
    return "" if term is loss.main else f"{term.name}_"


def _arrays(kind: str, weighted: bool, masked: bool) -> tuple[str, ...]:
    found = []
    if kind == "index":
        found.append("y")
    if kind == "probability":
        found.append("p")
    if kind == "teacher":
        found.append("teacher")
    if weighted:
        found.append("w")
    if masked:
        found.append("valid")
    return tuple(found)


def _names(loss: Loss) -> dict[sp.Basic, str]:
    """What the kernels call each symbol: a parameter by its argument name, always."""
    names: dict[sp.Basic, str] = {p.symbol: p.name for p in loss.params}
    names[EPS] = "label_smoothing"
    names[N_CLASSES] = "n_classes"
    names[MASK] = "valid"
    return names


def kernels(loss: str) -> tuple[Kernel, ...]:
    """Every kernel of ``loss``: each target kind × each setting of the specialised options.

    >>> k = kernels("cross_entropy")[0]
    >>> k.name, k.grad.target
    ('index', -scale_cross_entropy*valid)
    """
    return tuple(build_kernel(loss, kind, flags) for kind, flags in kernel_keys(get_loss(loss)))


def params_of(loss: str) -> tuple[Param, ...]:
    return get_loss(loss).params


__all__ = ["Gradient", "K", "Kernel", "LOG2_E", "RowValue", "STUDENT", "Stream", "TEACHER",
           "build_kernel", "kernel_keys", "kernels", "linear_sums", "lower", "scale_symbol",
           "split_gradient", "substitute_targets"]
