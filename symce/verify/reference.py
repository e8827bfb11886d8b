"""Two references for any registered loss, in float64, on whole arrays.

* :func:`derived`: NumPy printed from the **derivation** — each term's loss
  (its definition) and its proved gradient, the proved transform derivative
  and the teacher's proved gradient, evaluated in the derivation's own
  vocabulary (``q`` the softmax, ``ℓ`` the log-sum-exp, ``c`` the target
  model's coefficients), without the kernels' lowering, hoisting or
  splitting.
* :func:`definition`: torch autograd through the **declared formula** alone
  (printed to torch from the same declaration; the derivation's gradient is
  not used), the independent check.

Both apply the target model (row mask, coefficients) and the reduction as
every module does (:mod:`symce.losses.targets`), so a module, the derivation
and the definition can be compared on the same inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp

from symce.codegen.printers import NumpyArrayPrinter, TorchArrayPrinter
from symce.losses import get_loss
from symce.losses.spec import Loss
from symce.losses.targets import EPS, MASK, N_CLASSES, P, W, Y


@dataclass
class Inputs:
    """One call: the raw logits, the target (indices, probabilities or a teacher's
    logits), every option by its argument name, and the upstream gradient."""

    input: np.ndarray
    target: np.ndarray
    options: dict[str, Any] = field(default_factory=dict)
    grad_output: Any = 1.0


@dataclass
class Outcome:
    """A reference's answer: the reduced loss (per term too) and the gradients."""

    loss: np.ndarray
    terms: dict[str, np.ndarray]
    grad: np.ndarray
    grad_teacher: np.ndarray | None = None


# -- printing the derivation's vocabulary over whole arrays -----------------------
class _Vocabulary:
    """Symbol → array name for one derivation's vocabulary (layout ``(N, C, S)``)."""

    def __init__(self, derivation):
        ctx = derivation.context
        self.ctx = ctx
        self.bases = {ctx._q: "q", ctx._c: "c", ctx._x: "x", ctx._t: "t"}
        loss = get_loss(derivation.loss)
        self.names = {ctx.ell: "ell", ctx.ell_t: "ell_t", ctx.n: "n_classes",
                      **{p.symbol: p.name for p in loss.params}}


def _printer(base_cls):
    class Printer(base_cls):
        def __init__(self, bases, names):
            super().__init__(names)
            self.bases = bases

        def _print_Indexed(self, expr):
            name = self.bases.get(expr.base)
            if name is None:
                raise ValueError(f"no array for {expr}")
            return name

        def _print_KroneckerDelta(self, expr):
            return "onehot"

    return Printer


_NumpyVocabulary = _printer(NumpyArrayPrinter)
_TorchVocabulary = _printer(TorchArrayPrinter)


@functools.cache
def _derivation(loss: str):
    from symce.codegen.ir import derivation_of

    return derivation_of(loss)


@functools.cache
def _derived_code(loss_name: str, values: tuple[tuple[str, Any], ...] | None = None
                  ) -> dict[str, Any]:
    """The derivation's expressions printed as NumPy over ``(N, C, S)`` arrays.

    ``values``: parameter values substituted (exactly) before printing, so that
    SymPy folds what they decide: ``γ = 0`` removes the focal terms, and a
    number exponent combines ``(1 − q)^γ / (1 − q)`` into ``(1 − q)^(γ−1)``,
    finite where ``q = 1`` for ``γ ≥ 1``; ``None``: the parameters stay
    symbols, read at run time.
    """
    d = _derivation(loss_name)
    ctx = d.context
    vocab = _Vocabulary(d)
    printer = _NumpyVocabulary(vocab.bases, vocab.names)
    by_name = {s.name: s for s in d.steps}
    fixed = {} if values is None else _exact(get_loss(loss_name), dict(values))

    def doprint(expr):
        if values is None:
            return printer.doprint(expr)
        return printer.doprint(_guard_coefficients(expr.xreplace(fixed), ctx._c))

    def stable(expr):
        """``log q = x − ℓ`` (and the teacher's ``log p = φ(t) − ℓ_t``): no log of an
        underflowed probability; the definitions, as in the proved ``loss_lse`` step."""
        expr = ctx.log_softmax_form(expr)
        if ctx.teacher:
            expr = expr.replace(
                lambda t: isinstance(t, sp.log) and isinstance(t.args[0], sp.Indexed)
                and t.args[0].base == ctx._c,
                lambda t: ctx.teacher_logit(t.args[0].indices[0]) - ctx.ell_t)
        return doprint(expr)

    code = {"terms": [], "teacher": []}
    for info in d.terms:
        pre = "" if info.symbol == ctx.L else f"{info.term}_"
        code["terms"].append((info.term, stable(by_name[f"{pre}loss"].rhs),
                              stable(by_name[info.gradient].rhs)))
        if info.teacher_gradient is not None:
            code["teacher"].append((info.term, stable(by_name[info.teacher_gradient].rhs)))
    if "transform_derivative" in by_name:
        code["factor"] = doprint(by_name["transform_derivative"].rhs)
    return code


def _guard_coefficients(expr: sp.Expr, c: sp.IndexedBase) -> sp.Expr:
    """``c_j · f`` as 0 where ``c_j = 0``, for ``f`` with a negative power (unbounded).

    A class with coefficient 0 is not in the loss at all; its term must not
    turn into ``0 · ∞ = nan`` where ``f`` blows up (focal loss's
    ``(1 − q_j)^(γ−1)`` with ``γ < 1`` at ``q_j = 1``).  Other products are
    printed as they are.
    """
    def weighted(e: sp.Basic) -> bool:
        if not e.is_Mul:
            return False
        coefficient = any(isinstance(f, sp.Indexed) and f.base == c for f in e.args)
        unbounded = any(f.is_Pow and f.exp.is_negative for f in e.args)
        return coefficient and unbounded

    def guarded(e: sp.Mul) -> sp.Expr:
        factor = next(f for f in e.args if isinstance(f, sp.Indexed) and f.base == c)
        return sp.Piecewise((0, sp.Eq(factor, 0)), (e, True))

    return expr.replace(weighted, guarded)


def _exact(loss: Loss, values: dict[str, Any]) -> dict[sp.Symbol, sp.Expr]:
    """Parameter symbol → its value as an exact number (``0.1`` → ``1/10``)."""
    return {p.symbol: sp.Rational(repr(float(values[p.name]))) for p in loss.params
            if values.get(p.name) is not None}


@functools.cache
def _definition_code(loss_name: str) -> list[tuple[str, str]]:
    """Each term's declared formula printed as torch over ``(N, C, S)`` tensors."""
    d = _derivation(loss_name)
    ctx = d.context
    vocab = _Vocabulary(d)
    logq, logc = sp.IndexedBase("logq"), sp.IndexedBase("logc")
    printer = _TorchVocabulary({**vocab.bases, logq: "logq", logc: "logc"}, vocab.names)
    loss = get_loss(loss_name)

    def log_of(base, logs):
        # log of a softmax entry as torch's log_softmax (the same function, no
        # log of an underflowed probability): autograd still differentiates
        # the declared formula
        return lambda t: (isinstance(t, sp.log) and isinstance(t.args[0], sp.Indexed)
                          and t.args[0].base == base), lambda t: logs[t.args[0].indices[0]]

    out = []
    for t in loss.terms:
        f = t.formula(ctx).replace(*log_of(ctx._q, logq))
        if ctx.teacher:
            f = f.replace(*log_of(ctx._c, logc))
        out.append((t.name, printer.doprint(f)))
    return out


# -- the target model, on arrays ------------------------------------------------------
def _layout(a: np.ndarray) -> np.ndarray:
    if a.ndim == 1:
        return a.reshape(1, -1, 1)
    return a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:], dtype=np.int64)))


@functools.cache  # printed once per loss and kind (symce check calls this per case)
def _coefficient_code(loss: Loss, kind: str) -> str:
    model = loss.targets.coefficients(kind, True, True)
    j = sp.Symbol("j", integer=True)
    expr = model(j).xreplace({W[Y]: sp.Symbol("w_y")})
    printer = _NumpyVocabulary({W: "w", P: "p"},
                               {EPS: "label_smoothing", N_CLASSES: "n_classes"})
    return printer.doprint(expr)


def _targets(loss: Loss, x3: np.ndarray, inputs: Inputs) -> dict[str, Any]:
    """``kind``, the coefficients ``c`` (or teacher logits), the row mask, the weights."""
    n, n_classes, s = x3.shape
    o = inputs.options
    if loss.targets.name == "teacher":
        t3 = _layout(np.asarray(inputs.target, dtype=np.float64))
        mask = o.get("mask")
        valid = (np.ones((n, 1, s)) if mask is None
                 else np.asarray(mask, dtype=np.float64).reshape(n, 1, s))
        return {"kind": "teacher", "t": t3, "valid": valid, "w_y": None, "weighted": False}
    weight = o.get("weight")
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    target = np.asarray(inputs.target)
    env = {"np": np, "w": w.reshape(1, -1, 1), "n_classes": n_classes,
           "label_smoothing": float(o.get("label_smoothing", 0.0))}
    if target.dtype.kind == "f":
        kind = "probability"
        env["p"] = _layout(target.astype(np.float64))
        valid = np.ones((n, 1, s))
        w_y = None
    else:
        kind = "index"
        y = target.astype(np.int64).reshape(n, 1, s)
        valid = (y != o.get("ignore_index", -100)).astype(np.float64)
        y = np.where(valid > 0, y, 0)
        if ((y < 0) | (y >= n_classes)).any():
            raise IndexError("target out of range")
        onehot = (np.arange(n_classes).reshape(1, -1, 1) == y).astype(np.float64)
        w_y = w[y]
        env.update(onehot=onehot, w_y=w_y)
    c = eval(_coefficient_code(loss, kind), env)  # noqa: S307 - printed from the model
    return {"kind": kind, "c": np.broadcast_to(c, x3.shape), "valid": valid, "w_y": w_y,
            "weighted": weight is not None}


def _denominator(loss: Loss, term, kind: str, found: dict[str, Any], reduction: str,
                 n_classes: int) -> float | None:
    value = _denominator_function(loss, reduction, term.reduction, kind, found["weighted"])
    if value is None:
        return None
    w_y = found["w_y"] if found["w_y"] is not None else 1.0
    return float(np.sum(np.broadcast_to(value(found["valid"], w_y, n_classes),
                                        found["valid"].shape)))


@functools.cache
def _denominator_function(loss: Loss, reduction: str, term_reduction: str, kind: str,
                          weighted: bool):
    """The target model's per-row denominator weight as a NumPy function of
    ``(valid, w_y, n)``, or ``None`` where the reduction does not divide."""
    expr = loss.targets.denominator(reduction, term_reduction, kind, weighted)
    if expr is None:
        return None
    return sp.lambdify((MASK, sp.Symbol("w_y"), N_CLASSES),
                       expr.xreplace({W[Y]: sp.Symbol("w_y")}), "numpy")


def _reduce(loss: Loss, found, reduction, rows, n_classes, input_shape):
    """Each term's reduced loss, and the row factor ``d(reduced)/d(row term)``."""
    terms, factors = {}, {}
    for term in loss.terms:
        r = rows[term.name]
        if reduction in loss.targets.per_row_reductions:
            shape = () if len(input_shape) == 1 else (input_shape[0],) + tuple(input_shape[2:])
            terms[term.name] = r.reshape(shape)
            factors[term.name] = 1.0
            continue
        d = _denominator(loss, term, found["kind"], found, reduction, n_classes)
        total = float(np.sum(r))
        if d is None:
            terms[term.name], factors[term.name] = np.asarray(total), 1.0
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                terms[term.name] = np.asarray(np.float64(total) / d)
            factors[term.name] = 0.0 if d == 0 else 1.0 / d
    return terms, factors


def _upstream(inputs: Inputs, loss: Loss, reduction: str, n: int, s: int):
    if reduction in loss.targets.per_row_reductions:
        shape = inputs.input.shape
        rows = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
        return np.broadcast_to(np.asarray(inputs.grad_output, dtype=np.float64),
                               rows).reshape(n, 1, s)
    return float(inputs.grad_output)


def _evaluate(loss: Loss, code: dict[str, Any], u3: np.ndarray, found: dict[str, Any],
              values: dict[str, Any], perturb=None):
    """The derivation's per-row terms on ``(N, C, S)`` raw logits ``u3``.

    ``found`` is the target model's answer (:func:`_targets`: ``c``, or the
    teacher's raw logits ``t``, and the row mask ``valid``).  Returns ``(rows,
    grads, teacher, env)``: each term's row loss (mask applied), its gradient
    with respect to the transformed logits and, with a teacher, with respect
    to the teacher's raw logits (both unmasked), and the evaluation's names
    (for the transform's derivative, ``code["factor"]``).
    """
    n, n_classes, s = u3.shape
    transform = _transform_numpy(loss, values)
    x = transform(u3) if transform else u3
    env = {"np": np, "x": x, "n_classes": n_classes, "_class_dot": _class_dot,
           **{p.name: (0.0 if values.get(p.name, p.default) is None
                       else float(values.get(p.name, p.default)))
              for p in loss.params}}
    m = x.max(axis=1, keepdims=True)
    env["ell"] = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    env["q"] = np.exp(x - env["ell"])
    if perturb is not None:
        env["q"] = perturb(env["q"])
    if found["kind"] == "teacher":
        tx = transform(found["t"]) if transform and loss.transform.teacher else found["t"]
        mt = tx.max(axis=1, keepdims=True)
        env["ell_t"] = mt + np.log(np.exp(tx - mt).sum(axis=1, keepdims=True))
        env["c"] = np.exp(tx - env["ell_t"])
        env["t"] = found["t"]
    else:
        env["c"] = found["c"]
    rows, grads, teacher = {}, {}, {}
    for term, loss_code, grad_code in code["terms"]:
        rows[term] = np.broadcast_to(eval(loss_code, env), (n, 1, s)) * found["valid"]  # noqa: S307
        grads[term] = np.broadcast_to(eval(grad_code, env), x.shape)  # noqa: S307
    for term, teacher_code in code["teacher"]:
        teacher[term] = np.broadcast_to(eval(teacher_code, env), x.shape)  # noqa: S307
    return rows, grads, teacher, (env if transform is not None else None)


def derived(loss_name: str, inputs: Inputs) -> Outcome:
    """The loss and gradients printed from the derivation, in float64 NumPy."""
    loss = get_loss(loss_name)
    code = _derived_code(loss_name)
    o = inputs.options
    reduction = o.get("reduction", loss.targets.default_reduction)
    u3 = _layout(np.asarray(inputs.input, dtype=np.float64))
    n, n_classes, s = u3.shape
    transform = _transform_numpy(loss, o)
    found = _targets(loss, transform(u3) if transform else u3, inputs)
    # a guarded product (``_guard_coefficients``) evaluates both branches of its
    # select: the one not taken may divide 0 by 0; a NaN that reaches the result
    # is still one (the comparison counts it)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows, grads, teacher, env = _evaluate(loss, code, u3, found, o)
    terms, factors = _reduce(loss, found, reduction, rows, n_classes, inputs.input.shape)
    up = _upstream(inputs, loss, reduction, n, s)
    grad = sum(up * factors[t] * found["valid"] * grads[t] for t in grads)
    if env is not None:
        grad = grad * eval(code["factor"], env)  # noqa: S307
    grad_t = None
    if teacher:
        grad_t = sum(up * factors[t] * found["valid"] * teacher[t] for t in teacher)
        grad_t = grad_t.reshape(inputs.input.shape)
    return Outcome(loss=sum(terms.values()), terms=terms, grad=grad.reshape(inputs.input.shape),
                   grad_teacher=grad_t)


# -- one row per sample and position: the core that symce check evaluates ----------
@dataclass
class Rows:
    """Each term's values on rows (one per sample and position, the classes last).

    ``loss[t]``: the row's term ``[R]`` (masked rows 0); ``grad[t]``: its
    gradient with respect to the row's raw logits ``[R, C]`` (the transform's
    derivative chained; masked rows 0); ``grad_teacher[t]``: with respect to
    the teacher's raw logits (teacher targets only).
    """

    loss: dict[str, np.ndarray]
    grad: dict[str, np.ndarray]
    grad_teacher: dict[str, np.ndarray] = field(default_factory=dict)


def derived_rows(loss_name: str, x: np.ndarray, target: np.ndarray, *,
                 params: dict[str, Any] | None = None,
                 valid: np.ndarray | None = None, dtype: str = "float64",
                 perturb=None) -> Rows:
    """The derivation's per-row terms and gradients for rows ``x`` and their targets.

    ``x``: raw logits ``[R, C]`` (before the loss's transform); ``target``:
    the target coefficients ``c`` ``[R, C]`` (class targets: any ``c``, not
    only what the options give, so a checker can evaluate the loss the usual
    wrong ways), or the teacher's raw logits ``[R, C]``; ``valid``: ``[R]``,
    1 for a row that counts, 0 for a masked one (default: all count);
    ``params``: parameter values by name (the defaults for the rest);
    ``dtype``: the precision it is evaluated in (float64 unless asked: a
    checker may want to know where the same formulas fail in float32);
    ``perturb``: a function applied to the softmax ``q`` once computed (a
    checker rounding it once more, to see how much the result depends on
    that rounding).

    The code is printed from the proved steps with the parameter values
    substituted first (:func:`_derived_code`).

    >>> import numpy as np
    >>> rows = derived_rows("cross_entropy", np.zeros((1, 2)), np.array([[1.0, 0.0]]))
    >>> rows.loss["cross_entropy"].round(6), rows.grad["cross_entropy"]
    (array([0.693147]), array([[-0.5,  0.5]]))
    """
    loss = get_loss(loss_name)
    values = {p.name: p.default for p in loss.params} | dict(params or {})
    code = _derived_code(loss_name, tuple(sorted(values.items())))
    u3 = np.asarray(x, dtype=dtype)[:, :, None]
    r = u3.shape[0]
    mask = np.ones((r, 1, 1), dtype) if valid is None else np.asarray(valid, dtype).reshape(r, 1, 1)
    target3 = np.asarray(target, dtype=dtype)[:, :, None]
    if loss.targets.name == "teacher":
        found = {"kind": "teacher", "t": target3, "valid": mask}
    else:
        found = {"kind": "classes", "c": target3, "valid": mask}
    with np.errstate(all="ignore"):
        rows, grads, teacher, env = _evaluate(loss, code, u3, found, values, perturb)
        factor = 1.0 if env is None else eval(code["factor"], env)  # noqa: S307
        return Rows(loss={t: v[:, 0, 0] for t, v in rows.items()},
                    grad={t: (mask * g * factor)[:, :, 0] for t, g in grads.items()},
                    grad_teacher={t: (mask * g)[:, :, 0] for t, g in teacher.items()})


@dataclass
class TargetRows:
    """What the target model makes of one call's target and options, on rows.

    ``target``: the coefficients ``c`` ``[R, C]`` (class targets) or the
    teacher's raw logits; ``valid``: ``[R]`` row mask; ``denominators``: each
    term reduction (``"target"``, ``"rows"``) → what ``reduction`` divides its
    sum by (``None``: it does not divide; per-row reductions: ``None``).
    """

    kind: str
    target: np.ndarray
    valid: np.ndarray
    denominators: dict[str, float | None]


def target_rows(loss_name: str, inputs: Inputs) -> TargetRows:
    """The target model of ``loss_name`` applied to ``inputs``, one row per sample and position.

    Rows are in the order of ``input.movedim(1, -1).reshape(-1, C)``.
    """
    loss = get_loss(loss_name)
    reduction = inputs.options.get("reduction", loss.targets.default_reduction)
    u3 = _layout(np.asarray(inputs.input, dtype=np.float64))
    n_classes = u3.shape[1]
    found = _targets(loss, u3, inputs)

    def rows(a3: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.broadcast_to(a3, (a3.shape[0], a3.shape[1], u3.shape[2])),
                           1, -1).reshape(-1, a3.shape[1])

    target = rows(found["t"] if found["kind"] == "teacher" else found["c"])
    denominators: dict[str, float | None] = {}
    for term in loss.terms:
        if reduction not in loss.targets.per_row_reductions:
            denominators[term.reduction] = _denominator(loss, term, found["kind"], found,
                                                        reduction, n_classes)
        else:
            denominators[term.reduction] = None
    return TargetRows(found["kind"], target, rows(found["valid"])[:, 0], denominators)


def definition(loss_name: str, inputs: Inputs) -> Outcome:
    """The loss from the declared formula; gradients by torch autograd (float64)."""
    import torch

    loss = get_loss(loss_name)
    o = inputs.options
    reduction = o.get("reduction", loss.targets.default_reduction)
    u = torch.tensor(np.asarray(inputs.input, dtype=np.float64), requires_grad=True)
    u3 = u.reshape(_layout(np.asarray(inputs.input)).shape)
    n, n_classes, s = u3.shape
    params = {p.name: o.get(p.name, p.default) for p in loss.params}
    transform = _transform_torch(loss, o)
    x = transform(u3) if transform else u3
    found = _targets(loss, x.detach().numpy(), inputs)
    env = {"torch": torch, "x": x, "n_classes": n_classes, "_class_dot": _torch_class_dot,
           **{k: torch.tensor(0.0 if v is None else float(v), dtype=torch.float64)
              for k, v in params.items()}}
    env["ell"] = torch.logsumexp(x, dim=1, keepdim=True)
    env["q"] = torch.softmax(x, dim=1)
    env["logq"] = torch.log_softmax(x, dim=1)
    teacher = None
    if found["kind"] == "teacher":
        teacher = torch.tensor(np.asarray(inputs.target, dtype=np.float64), requires_grad=True)
        t3 = teacher.reshape(u3.shape)
        tx = transform(t3) if transform and loss.transform.teacher else t3
        env["ell_t"] = torch.logsumexp(tx, dim=1, keepdim=True)
        env["c"] = torch.softmax(tx, dim=1)
        env["logc"] = torch.log_softmax(tx, dim=1)
    else:
        env["c"] = torch.tensor(np.ascontiguousarray(found["c"]))
    valid = torch.tensor(found["valid"])
    rows = {}
    for term, formula in _definition_code(loss_name):
        rows[term] = torch.broadcast_to(eval(formula, env), (n, 1, s)) * valid  # noqa: S307
    terms = {}
    for term in loss.terms:
        r = rows[term.name]
        if reduction in loss.targets.per_row_reductions:
            shape = () if inputs.input.ndim == 1 else (n,) + tuple(inputs.input.shape[2:])
            terms[term.name] = r.reshape(shape)
            continue
        d = _denominator(loss, term, found["kind"], found, reduction, n_classes)
        if d == 0:  # nothing counts: a NaN loss with a zero gradient (PyTorch's convention)
            terms[term.name] = r.sum() * 0.0 + float("nan")
        else:
            terms[term.name] = r.sum() if d is None else r.sum() / d
    total = sum(terms.values())
    up = torch.as_tensor(np.broadcast_to(np.asarray(inputs.grad_output, dtype=np.float64),
                                         total.shape).copy())
    wrt = [u] + ([teacher] if teacher is not None else [])
    grads = torch.autograd.grad(total, wrt, grad_outputs=up, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]
    return Outcome(loss=total.detach().numpy(),
                   terms={k: v.detach().numpy() for k, v in terms.items()},
                   grad=grads[0].numpy(),
                   grad_teacher=grads[1].numpy() if teacher is not None else None)


# -- helpers -----------------------------------------------------------------------------
@functools.cache
def _transform_function(loss: Loss):
    u = sp.Symbol("u", real=True)
    return sp.lambdify([u, *(p.symbol for p in loss.params)], loss.transform.apply(u), "numpy")


def _transform_numpy(loss: Loss, options):
    tr = loss.transform
    if tr is None or (tr.gate is not None and options.get(tr.gate) is None):
        return None
    fn = _transform_function(loss)
    values = [options.get(p.name, p.default) for p in loss.params]
    return lambda a: fn(a, *[0.0 if v is None else v for v in values])


def _transform_torch(loss: Loss, options):
    import torch

    tr = loss.transform
    if tr is None or (tr.gate is not None and options.get(tr.gate) is None):
        return None
    u = sp.Symbol("u", real=True)
    symbols = [p.symbol for p in loss.params]
    fn = sp.lambdify([u, *symbols], tr.apply(u), modules=[{"tanh": torch.tanh}, "math"])
    values = [options.get(p.name, p.default) for p in loss.params]
    return lambda a: fn(a, *[0.0 if v is None else v for v in values])


def _class_dot(*arrays):
    out = arrays[0]
    for a in arrays[1:]:
        out = out * a
    return np.sum(out, axis=1, keepdims=True)


def _torch_class_dot(*arrays):
    out = arrays[0]
    for a in arrays[1:]:
        out = out * a
    return out.sum(dim=1, keepdim=True)


__all__ = ["Inputs", "Outcome", "Rows", "TargetRows", "definition", "derived",
           "derived_rows", "target_rows"]
