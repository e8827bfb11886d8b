"""The checker's float64 reference: the derivation's, for every registered loss.

:func:`reference` takes what a user's function takes (logits ``(C,)``,
``(N, C)`` or ``(N, C, d1, …)``, the target — class indices, probabilities or
a teacher's logits —, the target model's options, the reduction) and returns
``(loss, grad)``, ``grad`` being the gradient of ``loss.sum()`` with respect
to the logits, in their layout.  Nothing in it is written by hand:

1. :func:`to_rows`: one row per sample and position, the class axis last;
2. :func:`targets`: the loss's declared target model
   (:mod:`symce.losses.targets`, through
   :func:`symce.verify.reference.target_rows`) turns the target and options
   into one target row each (the coefficients ``c``, or the teacher's logits),
   the row mask and what each reduction divides by;
3. :func:`reduced`, the core: each term's per-row loss and gradient printed
   from the checked derivation as float64 NumPy
   (:func:`symce.verify.reference.derived_rows`: the log-sum-exp form, the
   proved gradient, the transform's proved derivative, with the parameter
   values substituted), then the reduction.  It accepts any ``c`` and any
   denominators, so the diagnoses can compute the reference the usual wrong
   ways (:mod:`symce.checker.diagnosis`);

then :func:`from_rows` puts the result back in the input's layout.  The tests
compare it with ``torch.nn.functional.cross_entropy`` (every option) and with
hand-written torch float64 autograd of focal loss and distillation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from symce.losses import get_loss
from symce.losses.spec import Loss

#: cross-entropy's reductions (every loss's own: :attr:`LossSpec.reductions`)
REDUCTIONS = ("mean", "sum", "none")
#: how class targets can be given: indices, probabilities, one-hot probabilities
TARGETS = ("index", "probs", "onehot")
#: the target of a teacher model: the teacher's logits, in the logits' layout
TEACHER = "teacher"


@dataclass(frozen=True)
class LossSpec:
    """The loss checked, and the parameter values the implementation is called with.

    ``params``: ``(name, value)`` pairs, only those given (they are passed as
    keyword arguments); the reference uses the declared defaults for the rest.
    """

    name: str = "cross_entropy"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def loss(self) -> Loss:
        return get_loss(self.name)

    @property
    def values(self) -> dict[str, Any]:
        """Every parameter's value: the given ones, the defaults for the rest."""
        return {p.name: p.default for p in self.loss.params} | dict(self.params)

    @property
    def teacher(self) -> bool:
        """The target is a teacher's logits (not class indices or probabilities)."""
        return self.loss.targets.name == "teacher"

    @property
    def target_argument(self) -> str:
        return self.loss.targets.argument

    @property
    def kinds(self) -> tuple[str, ...]:
        return (TEACHER,) if self.teacher else TARGETS

    @property
    def reductions(self) -> tuple[str, ...]:
        return self.loss.targets.reductions

    @property
    def default_reduction(self) -> str:
        return self.loss.targets.default_reduction

    @property
    def per_row(self) -> tuple[str, ...]:
        """The reductions that give one loss per row."""
        return self.loss.targets.per_row_reductions

    def describe_params(self) -> str:
        """``gamma=2 (the default)``, ``temperature=2``: every parameter's value in the check."""
        given = dict(self.params)
        words = []
        for p in self.loss.params:
            value = given.get(p.name, p.default)
            text = f"{p.name}={_number(value)}"
            words.append(text if p.name in given else f"{text} (the default)")
        return ", ".join(words)


CROSS_ENTROPY = LossSpec()


def _number(value: Any) -> str:
    return "None" if value is None else f"{value:g}"


def reference(
    spec: LossSpec,
    logits: np.ndarray,
    target: np.ndarray,
    reduction: str,
    options: dict[str, Any] | None = None,
    dtype: str = "float64",
    perturb=None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(loss, grad)`` in float64: the derivation's loss, reduced as ``reduction``.

    ``options`` are the target model's (``weight``, ``ignore_index``,
    ``label_smoothing``; ``mask``), only those the implementation is called
    with.  ``dtype``: evaluate the derived formulas in that precision instead
    (to see where they themselves fail in float32); ``perturb``: applied to
    the softmax once computed (see :func:`symce.verify.reference.derived_rows`).
    """
    found = targets(spec, logits, target, reduction, options)
    x, layout = _logit_rows(logits)
    loss, grad = reduced(spec, x, found.target, reduction, found.denominators, found.valid,
                         dtype, perturb)
    return from_rows(loss, grad, layout, reduction, spec.per_row)


def targets(spec: LossSpec, logits: np.ndarray, target: np.ndarray, reduction: str,
            options: dict[str, Any] | None = None):
    """The declared target model on rows: a :class:`symce.verify.reference.TargetRows`."""
    from symce.verify.reference import Inputs, target_rows

    given = {k: v for k, v in (options or {}).items() if v is not None}
    inputs = Inputs(np.asarray(logits, dtype=np.float64), np.asarray(target),
                    {**given, "reduction": reduction})
    return target_rows(spec.name, inputs)


def reduced(
    spec: LossSpec,
    x: np.ndarray,
    target: np.ndarray,
    reduction: str,
    denominators: dict[str, float | None] | None = None,
    valid: np.ndarray | None = None,
    dtype: str = "float64",
    perturb=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The core: the derivation's per-row loss and gradient for rows ``x``, reduced.

    ``x`` is ``[rows, C]`` raw logits; ``target`` ``[rows, C]``: the
    coefficients ``c`` (any, not only what the options give) or the teacher's
    logits; ``valid`` the row mask (default: every row counts);
    ``denominators`` maps each term reduction of the target model
    (``"target"``, ``"rows"``) to what its sum is divided by (missing or
    ``None``: not divided, as ``sum`` does).  Returns the loss (``[rows]``
    for a per-row reduction, a scalar otherwise) and the gradient of its sum,
    ``[rows, C]``.  Where a denominator is 0 (nothing counts) the loss is NaN
    and that term's gradient 0, as in PyTorch.
    """
    from symce.verify.reference import derived_rows

    rows = derived_rows(spec.name, x, target, params=spec.values, valid=valid, dtype=dtype,
                        perturb=perturb)
    if reduction in spec.per_row:
        return sum(rows.loss.values()), sum(rows.grad.values())
    loss, grad = np.asarray(0.0), np.zeros(np.shape(x))
    for term in spec.loss.terms:
        d = (denominators or {}).get(term.reduction)
        total = float(np.sum(rows.loss[term.name]))
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = loss + (total if d is None else np.float64(total) / d)
        grad = grad + rows.grad[term.name] * (1.0 if d is None else 0.0 if d == 0 else 1.0 / d)
    return np.asarray(loss), grad


# -- cross-entropy's reference in its former signatures (the tests' and diagnoses') --------
def cross_entropy(
    logits: np.ndarray,
    target: np.ndarray,
    kind: str = "index",
    weight: np.ndarray | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """``(loss, grad)`` in float64 with ``torch.nn.functional.cross_entropy``'s semantics.

    ``kind`` is ``"index"`` (``target`` holds class indices, shape of the
    logits without the class axis) or ``"probs"`` (``target`` has the logits'
    shape; one-hot targets are probabilities too).  ``ignore_index`` applies to
    class indices only, as in PyTorch.
    """
    target = np.asarray(target)
    target = target.astype(np.int64) if kind == "index" else target.astype(np.float64)
    options = {"weight": weight, "label_smoothing": label_smoothing,
               "ignore_index": ignore_index if kind == "index" else None}
    return reference(CROSS_ENTROPY, logits, target, reduction, options)


def from_coefficients(
    x: np.ndarray,
    c: np.ndarray,
    reduction: str,
    denominator: float | None = None,
    spec: LossSpec = CROSS_ENTROPY,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The core for class targets: per-row loss and gradient from ``x`` and ``c``, reduced.

    ``x`` and ``c`` are ``[rows, C]``; ``mean`` divides the terms that
    PyTorch's cross-entropy denominator applies to by ``denominator``
    (default: the number of rows) and the per-row terms (z-loss) by the
    number of rows that count.
    """
    rows = np.shape(x)[0]
    counted = rows if valid is None else float(np.sum(valid))
    denominators = None
    if reduction == "mean":
        denominators = {"target": float(rows) if denominator is None else denominator,
                        "rows": counted}
    return reduced(spec, x, c, reduction, denominators, valid)


def coefficients(
    target: np.ndarray,
    kind: str,
    classes: int,
    weight: np.ndarray | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> tuple[np.ndarray, float]:
    """``(c, denominator)``: one coefficient row per target row, and the mean's divisor.

    From the declared class-target model; ``target`` is ``[rows]`` of class
    indices or ``[rows, C]`` of probabilities.
    """
    target = np.asarray(target)
    rows = target.shape[0]
    if kind == "index":
        target = target.astype(np.int64)
    else:
        target = target.astype(np.float64)
    options = {"weight": weight, "label_smoothing": label_smoothing,
               "ignore_index": ignore_index if kind == "index" else None}
    found = targets(CROSS_ENTROPY, np.zeros((rows, classes)), target, "mean", options)
    return found.target, float(found.denominators["target"])


# -- layouts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where the rows came from: the logits' shape (``(C,)``, ``(N, C)`` or ``(N, C, d…)``)."""

    shape: tuple[int, ...]

    @property
    def batched(self) -> bool:
        return len(self.shape) > 1

    @property
    def classes(self) -> int:
        return self.shape[1] if self.batched else self.shape[0]

    @property
    def positions(self) -> tuple[int, ...]:
        """The shape of one loss per row: ``(N, d1, …)``, or ``()`` unbatched."""
        return (self.shape[0], *self.shape[2:]) if self.batched else ()

    def restore(self, rows: np.ndarray) -> np.ndarray:
        """``[rows, C]`` → this layout (the class axis back in its place)."""
        if not self.batched:
            return rows.reshape(self.shape)
        n, c, *dims = self.shape
        return np.moveaxis(rows.reshape(n, *dims, c), -1, 1)


def _logit_rows(logits: np.ndarray) -> tuple[np.ndarray, Layout]:
    x = np.asarray(logits, dtype=np.float64)
    layout = Layout(x.shape)
    if not layout.batched:
        x = x[None]
    return np.moveaxis(x, 1, -1).reshape(-1, layout.classes), layout


def to_rows(
    logits: np.ndarray, target: np.ndarray, kind: str
) -> tuple[np.ndarray, np.ndarray, Layout]:
    """``(x [rows, C], target rows, layout)``: the class axis moved last, the rest flattened.

    ``kind``: ``"index"`` (one class index per row) or anything else (a
    target in the logits' layout: probabilities, a teacher's logits).
    """
    x, layout = _logit_rows(logits)
    t = np.asarray(target)
    if not layout.batched:
        t = t[None]
    t = t.reshape(-1) if kind == "index" else np.moveaxis(t, 1, -1).reshape(-1, layout.classes)
    return x, t, layout


def from_rows(
    loss: np.ndarray, grad: np.ndarray, layout: Layout, reduction: str,
    per_row: tuple[str, ...] = ("none",),
) -> tuple[np.ndarray, np.ndarray]:
    """Undo :func:`to_rows` on a result: the loss per position (``none``) and the gradient."""
    if reduction in per_row:
        loss = loss.reshape(layout.positions)
    return loss, layout.restore(grad)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """A stable softmax (for the diagnoses' probes and the tests, not the reference)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


@functools.cache
def term_factors(spec: LossSpec) -> dict[str, float]:
    """Each term's constant factor (``T²`` of distillation, ``λ`` of the z-loss, ``−1`` of a
    ``−Σ …``), at the spec's parameter values: the scale of its rounding errors."""
    import sympy as sp

    from symce.verify.reference import _derivation

    ctx = _derivation(spec.name).context
    loss = spec.loss
    symbols = {p.symbol for p in loss.params}
    values = {p.symbol: (0.0 if spec.values[p.name] is None else float(spec.values[p.name]))
              for p in loss.params}
    out = {}
    for term in loss.terms:
        factors = [f for f in sp.Mul.make_args(term.formula(ctx)) if f.free_symbols <= symbols]
        out[term.name] = float(sp.Mul(*factors).xreplace(values))
    return out


def has_transform(spec: LossSpec, teacher: bool = False) -> bool:
    """The loss's transform is on (its gate parameter set) and, for ``teacher``, applies
    to the teacher's logits too."""
    tr = spec.loss.transform
    if tr is None or (teacher and not tr.teacher):
        return False
    return tr.gate is None or spec.values.get(tr.gate) is not None


def transformed(spec: LossSpec, u: np.ndarray, teacher: bool = False) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """``(φ(u), |φ'(u)|)``: the loss's transform of raw logits and its slope (1 if none).

    ``teacher``: for a teacher's logits (the transform applies to them only if
    the declaration says so).
    """
    u = np.asarray(u, dtype=np.float64)
    values = spec.values
    if not has_transform(spec, teacher):
        return u, np.ones_like(u)
    numbers = [0.0 if values[p.name] is None else float(values[p.name])
               for p in spec.loss.params]
    phi, slope = _transform_functions(spec.loss)
    return (np.broadcast_to(phi(u, *numbers), u.shape),
            np.abs(np.broadcast_to(slope(u, *numbers), u.shape)))


@functools.cache
def _transform_functions(loss: Loss):
    """``φ`` and ``φ'`` of a loss's transform as NumPy functions of ``(u, *parameters)``."""
    import sympy as sp

    v = sp.Symbol("u", real=True)
    params = [p.symbol for p in loss.params]
    return (sp.lambdify([v, *params], loss.transform.apply(v), "numpy"),
            sp.lambdify([v, *params], sp.diff(loss.transform.apply(v), v), "numpy"))
