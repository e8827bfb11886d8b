"""A worked example with numbers: 3 classes, the derivation's gradient against torch's.

The logits, the target and the loss's default parameters go into the proved
steps of the 3-class derivation (the loss, each term's gradient, the
transform's chain rule), evaluated to 30 digits; torch autograd of the
declared formula (:func:`symce.verify.reference.definition`, float64) must
agree to ``TOLERANCE`` or the document is not written: a document never shows
a number nobody checked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from symce.errors import ProofError
from symce.losses import get_loss
from symce.progress import report
from symce.render import cache

N = 3
#: the raw logits of the example, and a teacher's for a teacher-target loss
LOGITS = (2.0, 1.0, 0.1)
TEACHER_LOGITS = (0.5, 1.5, -0.5)
#: the target class (0-based, as PyTorch counts) for class-index targets
TARGET_CLASS = 0
TOLERANCE = 1e-10
_DIGITS = 30


@dataclass(frozen=True)
class WorkedExample:
    """Every number of the example, per class where it has one."""

    loss: str
    params: tuple[tuple[str, float | None], ...]
    transform: bool
    teacher: bool
    u: tuple[float, ...]
    t: tuple[float, ...] | None
    x: tuple[float, ...]
    q: tuple[float, ...]
    p: tuple[float, ...]
    grad: tuple[float, ...]
    grad_torch: tuple[float, ...]
    value: float
    value_torch: float

    @property
    def difference(self) -> float:
        """The largest difference between the derivation's numbers and torch's."""
        return max([abs(a - b) for a, b in zip(self.grad, self.grad_torch, strict=True)]
                   + [abs(self.value - self.value_torch)])

    def context(self, fmt: str) -> dict[str, Any]:
        return _context(self, fmt)


def _values(loss, ctx, params: dict[str, float | None], transform_on: bool):
    """The example's numbers as SymPy floats: ``u``, ``x``, ``q``, ``ℓ``, ``c``."""
    def f(v):
        return sp.Float(v, _DIGITS)

    symbols = {p.symbol: f(0.0 if params[p.name] is None else params[p.name])
               for p in loss.params}
    u = [f(v) for v in LOGITS]
    x = [loss.transform.apply(v).xreplace(symbols).evalf(_DIGITS) if transform_on else v
         for v in u]
    z = sum(sp.exp(v) for v in x)
    q = [sp.exp(v) / z for v in x]
    values = {**symbols, ctx.ell: sp.log(z).evalf(_DIGITS)}
    t = None
    if ctx.teacher:
        t = [f(v) for v in TEACHER_LOGITS]
        tx = [loss.transform.apply(v).xreplace(symbols).evalf(_DIGITS)
              if loss.transform is not None and loss.transform.teacher else v for v in t]
        zt = sum(sp.exp(v) for v in tx)
        c = [sp.exp(v) / zt for v in tx]
        values[ctx.ell_t] = sp.log(zt).evalf(_DIGITS)
    else:
        model = loss.targets.coefficients("index", False, False)
        from symce.losses.targets import N_CLASSES, Y

        c = [sp.sympify(model(sp.Integer(a))).xreplace({Y: TARGET_CLASS, N_CLASSES: N})
             for a in range(N)]
    for a in range(N):
        values[ctx.x(a)] = x[a]
        values[ctx.q(a)] = q[a].evalf(_DIGITS)
        values[ctx.c(a)] = sp.Float(c[a], _DIGITS) if c[a].is_number else c[a]
        values[ctx.u(a)] = u[a]
    return values, u, t, x, q, c


def _number(expr, values) -> float:
    return float(sp.N(expr.xreplace(values), _DIGITS))


def worked_example(loss_name: str) -> WorkedExample:
    """The example for ``loss_name``, checked against torch (raises ``ProofError``)."""
    return _worked_example(loss_name, id(get_loss(loss_name)))


@functools.lru_cache(maxsize=32)
def _worked_example(loss_name: str, declaration: int) -> WorkedExample:
    report(f"computing the worked example of {loss_name} and checking it with torch")
    loss = get_loss(loss_name)
    d = cache.derivation(loss_name, N)
    ctx = d.context
    params = {p.name: p.default for p in loss.params}
    transform_on = loss.transform is not None and (
        loss.transform.gate is None or params.get(loss.transform.gate) is not None)
    values, u, t, x, q, c = _values(loss, ctx, params, transform_on)
    grad = [sp.S.Zero] * N
    value = sp.S.Zero
    for info in d.terms:
        pre = "" if info.symbol == ctx.L else f"{info.term}_"
        value += d.step(f"{pre}loss").rhs
        step = info.transform_chain if transform_on else info.gradient
        rhs = d.step(step).rhs
        grad = [g + rhs[a, 0] for a, g in enumerate(grad)]
    grad_numbers = tuple(_number(g, values) for g in grad)
    value_number = _number(value, values)
    torch_value, torch_grad, torch_q = _torch(loss_name, params, transform_on, x, ctx.teacher)
    example = WorkedExample(
        loss=loss_name, params=tuple(params.items()), transform=transform_on,
        teacher=ctx.teacher, u=tuple(float(v) for v in u),
        t=None if t is None else tuple(float(v) for v in t),
        x=tuple(float(v) for v in x), q=tuple(float(v) for v in q),
        p=tuple(float(v) for v in c), grad=grad_numbers, grad_torch=torch_grad,
        value=value_number, value_torch=torch_value)
    worst = max(example.difference, max(abs(a - b) for a, b in zip(example.q, torch_q,
                                                                   strict=True)))
    if not worst <= TOLERANCE:
        raise ProofError(f"the worked example of {loss_name} disagrees with torch by {worst:.3g}"
                         f": derivation {grad_numbers}, torch {torch_grad}")
    return example


def _torch(loss_name: str, params, transform_on: bool, x, teacher: bool):
    """Torch autograd of the declared formula (float64) on the same inputs."""
    import torch

    from symce.verify.reference import Inputs, definition

    target = np.array([TEACHER_LOGITS]) if teacher else np.array([TARGET_CLASS])
    options = {"reduction": "sum", **{k: v for k, v in params.items() if v is not None}}
    outcome = definition(loss_name, Inputs(np.array([LOGITS]), target, options))
    q = torch.softmax(torch.tensor([float(v) for v in x], dtype=torch.float64), dim=0)
    return (float(outcome.loss), tuple(float(g) for g in outcome.grad[0]),
            tuple(float(v) for v in q))


# -- the example as a document shows it ------------------------------------------------
def table_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    """A text table: columns right-aligned, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def _fmt(v: float, fmt: str) -> str:
    s = f"{v:.6f}"
    if fmt == "tex":
        return f"${s}$"
    return s.replace("-", "−") if fmt == "txt" else s


def _columns(ex: WorkedExample) -> list[tuple[str, str, str, list[float]]]:
    """(LaTeX header, text header, what it is, values) per column."""
    raw = "u" if ex.transform else "x"
    cols = [(f"{raw}_j", f"{raw}ⱼ", "logit", list(ex.u))]
    if ex.teacher:
        cols.append(("t_j", "tⱼ", "teacher logit", list(ex.t)))
    if ex.transform and any(abs(a - b) > 0 for a, b in zip(ex.u, ex.x, strict=True)):
        cols.append(("x_j", "xⱼ", "transformed logit", list(ex.x)))
    cols += [("q_j", "qⱼ", "softmax", list(ex.q)),
             ("p_j", "pⱼ", "target", list(ex.p)),
             ("q_j - p_j", "qⱼ − pⱼ", "", [a - b for a, b in zip(ex.q, ex.p, strict=True)]),
             (rf"\partial L / \partial {raw}_j", f"∂L/∂{raw}ⱼ", "derivation", list(ex.grad)),
             ("torch", "torch", "autograd", list(ex.grad_torch))]
    return cols


def _param(loss: str, name: str, value: float | None, fmt: str) -> str:
    """``γ = 2`` in the document's notation; a parameter left at ``None`` is off."""
    from symce.render.tex import latex
    from symce.render.text import text

    symbol = get_loss(loss).param(name).symbol
    if value is None:
        escaped = name.replace("_", r"\_")
        return {"tex": rf"\texttt{{{escaped}}} off", "md": f"`{name}` off",
                "txt": f"{name} off"}[fmt]
    if fmt == "txt":
        return f"{text(symbol)} = {value:g}"
    tex = f"{latex(symbol)} = {value:g}"
    return f"${tex}$" if fmt == "tex" else f"$`{tex}`$"


def _context(ex: WorkedExample, fmt: str) -> dict[str, Any]:
    cols = _columns(ex)
    if fmt == "tex":
        header = [f"${c[0]}$" if c[0] != "torch" else r"torch autograd" for c in cols]
    elif fmt == "md":
        header = [f"$`{c[0]}`$" if c[0] != "torch" else "torch autograd" for c in cols]
    else:
        header = [c[1] if c[1] != "torch" else "torch autograd" for c in cols]
    rows = [[str(j + 1)] + [_fmt(c[3][j], fmt) for c in cols] for j in range(N)]
    header = ["$j$" if fmt == "tex" else "$`j`$" if fmt == "md" else "j", *header]
    params = [_param(ex.loss, name, value, fmt) for name, value in ex.params]
    return {
        "n": N,
        "header": header,
        "rows": rows,
        "lines": table_lines(header, rows),
        "value": _fmt(ex.value, fmt),
        "value_torch": _fmt(ex.value_torch, fmt),
        "difference": f"{ex.difference:.1e}",
        "tolerance": f"{TOLERANCE:.0e}",
        "teacher": ex.teacher,
        "target_class": TARGET_CLASS + 1,
        "transform": ex.transform,
        "params": ", ".join(params) or "none",
    }
