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
def _derived_code(loss_name: str) -> dict[str, Any]:
    """The derivation's expressions printed as NumPy over ``(N, C, S)`` arrays."""
    d = _derivation(loss_name)
    ctx = d.context
    vocab = _Vocabulary(d)
    printer = _NumpyVocabulary(vocab.bases, vocab.names)
    by_name = {s.name: s for s in d.steps}

    def stable(expr):
        """``log q = x − ℓ`` (and the teacher's ``log p = φ(t) − ℓ_t``): no log of an
        underflowed probability; the definitions, as in the proved ``loss_lse`` step."""
        expr = ctx.log_softmax_form(expr)
        if ctx.teacher:
            expr = expr.replace(
                lambda t: isinstance(t, sp.log) and isinstance(t.args[0], sp.Indexed)
                and t.args[0].base == ctx._c,
                lambda t: ctx.teacher_logit(t.args[0].indices[0]) - ctx.ell_t)
        return printer.doprint(expr)

    code = {"terms": [], "teacher": []}
    for info in d.terms:
        pre = "" if info.symbol == ctx.L else f"{info.term}_"
        code["terms"].append((info.term, stable(by_name[f"{pre}loss"].rhs),
                              stable(by_name[info.gradient].rhs)))
        if info.teacher_gradient is not None:
            code["teacher"].append((info.term, stable(by_name[info.teacher_gradient].rhs)))
    if "transform_derivative" in by_name:
        code["factor"] = printer.doprint(by_name["transform_derivative"].rhs)
    return code


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
    expr = loss.targets.denominator(reduction, term.reduction, kind, found["weighted"])
    if expr is None:
        return None
    w_y = found["w_y"] if found["w_y"] is not None else 1.0
    value = sp.lambdify((MASK, sp.Symbol("w_y"), N_CLASSES),
                        expr.xreplace({W[Y]: sp.Symbol("w_y")}), "numpy")
    return float(np.sum(np.broadcast_to(value(found["valid"], w_y, n_classes),
                                        found["valid"].shape)))


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


def derived(loss_name: str, inputs: Inputs) -> Outcome:
    """The loss and gradients printed from the derivation, in float64 NumPy."""
    loss = get_loss(loss_name)
    code = _derived_code(loss_name)
    o = inputs.options
    reduction = o.get("reduction", loss.targets.default_reduction)
    u3 = _layout(np.asarray(inputs.input, dtype=np.float64))
    n, n_classes, s = u3.shape
    transform = _transform_numpy(loss, o)
    x = transform(u3) if transform else u3
    found = _targets(loss, x, inputs)
    env = {"np": np, "x": x, "n_classes": n_classes, "_class_dot": _class_dot,
           **{p.name: (0.0 if o.get(p.name, p.default) is None else float(o.get(p.name, p.default)))
              for p in loss.params}}
    m = x.max(axis=1, keepdims=True)
    env["ell"] = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    env["q"] = np.exp(x - env["ell"])
    if found["kind"] == "teacher":
        tx = transform(found["t"]) if transform and loss.transform.teacher else found["t"]
        mt = tx.max(axis=1, keepdims=True)
        env["ell_t"] = mt + np.log(np.exp(tx - mt).sum(axis=1, keepdims=True))
        env["c"] = np.exp(tx - env["ell_t"])
        env["t"] = found["t"]
    else:
        env["c"] = found["c"]
    rows, grads = {}, {}
    for term, loss_code, grad_code in code["terms"]:
        rows[term] = np.broadcast_to(eval(loss_code, env), (n, 1, s)) * found["valid"]  # noqa: S307
        grads[term] = np.broadcast_to(eval(grad_code, env), x.shape)  # noqa: S307
    terms, factors = _reduce(loss, found, reduction, rows, n_classes, inputs.input.shape)
    up = _upstream(inputs, loss, reduction, n, s)
    grad = sum(up * factors[t] * found["valid"] * grads[t] for t in grads)
    if transform is not None:
        grad = grad * eval(code["factor"], env)  # noqa: S307
    grad_t = None
    if code["teacher"]:
        grad_t = sum(up * factors[t] * found["valid"] * np.broadcast_to(eval(c, env), x.shape)  # noqa: S307
                     for t, c in code["teacher"])
        grad_t = grad_t.reshape(inputs.input.shape)
    return Outcome(loss=sum(terms.values()), terms=terms, grad=grad.reshape(inputs.input.shape),
                   grad_teacher=grad_t)


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
def _transform_numpy(loss: Loss, options):
    tr = loss.transform
    if tr is None or (tr.gate is not None and options.get(tr.gate) is None):
        return None
    u = sp.Symbol("u", real=True)
    symbols = [p.symbol for p in loss.params]
    fn = sp.lambdify([u, *symbols], tr.apply(u), "numpy")
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


__all__ = ["Inputs", "Outcome", "definition", "derived"]
