"""The derived reference, evaluated in float64, for every option of ``nn.CrossEntropyLoss``.

:func:`cross_entropy` takes what a user's function takes (logits ``(C,)``,
``(N, C)`` or ``(N, C, d1, …)``, a class-index or probability target, class
weights, ``ignore_index``, ``label_smoothing``, the reduction) and returns
``(loss, grad)``, ``grad`` being the gradient of ``loss.sum()`` in the layout
of the logits.  It is three steps:

1. :func:`to_rows`: one row per sample and position, the class axis last;
2. :func:`coefficients`: one coefficient vector ``c`` per row, which covers
   every option (DESIGN.md): a class index ``y`` gives
   ``c = (1−ε)·w_y·e_y + (ε/C)·w``, probabilities ``p`` give
   ``c = w ⊙ ((1−ε)p + ε/C)``, an ignored row ``c = 0``; and the denominator
   of the mean, ``Σ w_y`` over the rows not ignored for class indices, the
   number of rows for probabilities (as PyTorch does);
3. :func:`from_coefficients`, the core: the log-sum-exp loss of the
   derivation ``L = (Σc)·LSE(x) − Σ c·x`` with ``LSE(x) = m + log Σ exp(x − m)``,
   ``m = max x`` (the stable form that the proved shift invariance justifies),
   its derived gradient ``q·Σc − c``, and the reduction.

then :func:`from_rows` puts the result back in the input's layout.  Nothing
here calls torch: the tests compare this module with
``torch.nn.functional.cross_entropy`` in float64, option by option.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REDUCTIONS = ("mean", "sum", "none")
TARGETS = ("index", "probs", "onehot")


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
    x, t, layout = to_rows(logits, target, kind)
    c, denominator = coefficients(t, kind, x.shape[1], weight, ignore_index, label_smoothing)
    loss, grad = from_coefficients(x, c, reduction, denominator)
    return from_rows(loss, grad, layout, reduction)


def from_coefficients(
    x: np.ndarray, c: np.ndarray, reduction: str, denominator: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The core: per-row loss and gradient from logits ``x`` and coefficients ``c``, reduced.

    ``x`` and ``c`` are ``[rows, C]``; ``mean`` divides by ``denominator``
    (default: the number of rows).  Returns the loss (``[rows]`` for
    ``none``, a scalar otherwise) and the gradient of its sum, ``[rows, C]``.
    """
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(s[:, 0])
    total = c.sum(axis=1)
    rows = total * lse - (c * x).sum(axis=1)
    grad = (e / s) * total[:, None] - c
    if reduction == "none":
        return rows, grad
    if reduction == "sum":
        return np.asarray(rows.sum()), grad
    scale = rows.shape[0] if denominator is None else denominator
    with np.errstate(divide="ignore", invalid="ignore"):  # nothing counted: a nan loss, like torch
        loss = np.asarray(rows.sum() / scale)
        return loss, np.divide(grad, scale, out=np.zeros_like(grad), where=grad != 0)


def coefficients(
    target: np.ndarray,
    kind: str,
    classes: int,
    weight: np.ndarray | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> tuple[np.ndarray, float]:
    """``(c, denominator)``: one coefficient row per target row, and the mean's divisor.

    ``target`` is ``[rows]`` of class indices or ``[rows, C]`` of probabilities.
    """
    eps = float(label_smoothing)
    w = np.ones(classes) if weight is None else np.asarray(weight, dtype=np.float64)
    if kind != "index":
        p = np.asarray(target, dtype=np.float64)
        return w * ((1.0 - eps) * p + eps / classes), float(p.shape[0])
    t = np.asarray(target, dtype=np.int64)
    kept = np.ones(t.shape, dtype=bool) if ignore_index is None else t != ignore_index
    y = np.where(kept, t, 0)
    c = (1.0 - eps) * w[y][:, None] * np.eye(classes)[y] + (eps / classes) * w
    c[~kept] = 0.0
    return c, float(w[y][kept].sum())


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


def to_rows(
    logits: np.ndarray, target: np.ndarray, kind: str
) -> tuple[np.ndarray, np.ndarray, Layout]:
    """``(x [rows, C], target rows, layout)``: the class axis moved last, the rest flattened."""
    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(target)
    layout = Layout(x.shape)
    if not layout.batched:
        x, t = x[None], t[None]
    x = np.moveaxis(x, 1, -1).reshape(-1, layout.classes)
    t = t.reshape(-1) if kind == "index" else np.moveaxis(t, 1, -1).reshape(-1, layout.classes)
    return x, t, layout


def from_rows(
    loss: np.ndarray, grad: np.ndarray, layout: Layout, reduction: str
) -> tuple[np.ndarray, np.ndarray]:
    """Undo :func:`to_rows` on a result: the loss per position (``none``) and the gradient."""
    if reduction == "none":
        loss = loss.reshape(layout.positions)
    return loss, layout.restore(grad)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)
