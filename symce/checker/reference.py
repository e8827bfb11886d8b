"""The derived reference, evaluated in float64.

The loss is the log-sum-exp form of the derivation, ``L = (Σc)·LSE(x) − Σ c·x``
with ``LSE(x) = m + log Σ exp(x − m)``, ``m = max x`` (the stable form that the
proved shift invariance justifies); the gradient is the derived ``q·Σc − c``.
Both are then scaled by the reduction, as in ``torch.nn.functional.cross_entropy``
without class weights (``mean`` divides by the number of rows).
"""

from __future__ import annotations

import numpy as np

REDUCTIONS = ("mean", "sum", "none")
TARGETS = ("index", "probs", "onehot")


def coefficients(target: np.ndarray, kind: str, classes: int) -> np.ndarray:
    """The target coefficients ``c`` (one row per sample) for a target of ``kind``."""
    if kind == "index":
        return np.eye(classes)[np.asarray(target, dtype=np.int64)]
    return np.asarray(target, dtype=np.float64)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def reference(
    logits: np.ndarray, coeff: np.ndarray, reduction: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(loss, grad)`` in float64; ``grad`` is the gradient of ``loss.sum()``."""
    x = np.asarray(logits, dtype=np.float64)
    c = np.asarray(coeff, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    total = c.sum(axis=1)
    rows = total * lse - (c * x).sum(axis=1)
    grad = softmax(x) * total[:, None] - c
    return reduce(rows, grad, reduction)


def reduce(rows: np.ndarray, grad: np.ndarray, reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``reduction`` to per-row losses and their per-row gradients."""
    if reduction == "none":
        return rows, grad
    if reduction == "sum":
        return np.asarray(rows.sum()), grad
    return np.asarray(rows.mean()), grad / rows.shape[0]
