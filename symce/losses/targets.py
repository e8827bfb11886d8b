"""The shared target models: how a row's target becomes its coefficients ``c``.

A loss is written in terms of target coefficients ``c_j`` (one per class);
the target model says what the user passes and how it becomes ``c``, which
rows count (a row mask that removes *every* term of a masked row), and what
``mean`` divides by.  Two models are shared by all losses:

``CLASSES`` (``target``, with ``weight``, ``ignore_index``, ``label_smoothing``)
    class indices ``y`` (``ignore_index`` masks the row) or class
    probabilities ``p``, as ``torch.nn.functional.cross_entropy``::

        index:        c_j = (1 − ε) w_y δ_jy + (ε/n) w_j
        probability:  c_j = w_j ((1 − ε) p_j + ε/n)

    ``mean`` divides a ``"target"`` term by ``Σ mask·w_y`` over the rows
    (class indices) or by the number of rows (probabilities), a ``"rows"``
    term by the number of rows that count.

``TEACHER`` (``teacher`` logits, ``mask``)
    ``c = softmax(t)`` of the teacher's logits (after the loss's transform),
    a boolean ``mask`` per row.  Reductions as ``F.kl_div``: ``batchmean``
    (over rows that count), ``sum``, ``none``, ``mean`` (over rows × classes).

Each model's symbols below are the kernels' names for the target data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

# -- the target data, as the kernels name it ---------------------------------
#: class index of a row
Y = sp.Symbol("y", integer=True)
#: 1 for a row that counts, 0 for a masked one (``ignore_index``, ``mask``)
MASK = sp.Symbol("valid", nonnegative=True)
#: class weights
W = sp.IndexedBase("w", real=True)
#: probability targets (the data; the derivation's ``p`` is its normalised ``c``)
P = sp.IndexedBase("p", real=True)
#: label smoothing
EPS = sp.Symbol("label_smoothing", nonnegative=True)
#: the teacher's logits, after the loss's transform
TEACHER_LOGITS = sp.IndexedBase("t", real=True)
#: the number of classes
N_CLASSES = sp.Symbol("n", integer=True, positive=True)


@dataclass(frozen=True)
class Option:
    """A keyword argument of the target model (its checks live in the templates).

    ``per_call``: data that comes with each batch (a row mask), so an
    ``nn.Module`` takes it in ``forward`` rather than its constructor.
    """

    name: str
    default: object
    doc: str
    per_call: bool = False


@dataclass(frozen=True)
class TargetModel:
    """A shared target model; see the module docstring.

    ``coefficients(kind, weighted, smoothed)`` is ``j ↦ c_j`` in the symbols
    above (``weighted=False`` specialises ``w = 1``, ``smoothed=False``
    ``ε = 0``); ``None`` for the teacher, whose ``c`` is a softmax that the
    derivation itself defines.  ``denominator(reduction, term_reduction, kind,
    weighted)`` is the per-row weight whose sum over the rows is ``mean``'s
    denominator (``None``: the reduction does not divide).
    """

    name: str
    argument: str
    kinds: tuple[str, ...]
    options: tuple[Option, ...]
    reductions: tuple[str, ...]
    default_reduction: str
    per_row_reductions: tuple[str, ...]
    term_reductions: tuple[str, ...]
    coefficients: Callable[[str, bool, bool], Callable[[sp.Expr], sp.Expr] | None]
    denominator: Callable[[str, str, str, bool], sp.Expr | None]
    template: str
    #: the options before ``reduction`` in the signature, and after it
    before_reduction: tuple[str, ...] = ()

    def argument_names(self) -> tuple[str, ...]:
        return (self.argument, "reduction", *(o.name for o in self.options))

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    @property
    def after_reduction(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options if o.name not in self.before_reduction)


def _class_coefficients(kind: str, weighted: bool, smoothed: bool):
    eps = EPS if smoothed else sp.S.Zero

    def w(j):
        return W[j] if weighted else sp.S.One

    if kind == "index":
        return lambda j: (1 - eps) * w(Y) * sp.KroneckerDelta(j, Y) + eps / N_CLASSES * w(j)
    if kind == "probability":
        return lambda j: w(j) * ((1 - eps) * P[j] + eps / N_CLASSES)
    raise ValueError(f"unknown target kind {kind!r} for the class targets")


def _class_denominator(reduction: str, term: str, kind: str, weighted: bool):
    if reduction != "mean":
        return None
    if kind == "probability":
        return sp.S.One  # every row counts once: the number of rows
    if term == "target" and weighted:
        return MASK * W[Y]
    return MASK


CLASSES = TargetModel(
    name="classes",
    argument="target",
    kinds=("index", "probability"),
    options=(
        Option("weight", None, "class weights, one per class (or None)"),
        Option("ignore_index", -100, "class-index targets equal to it are masked out"),
        Option("label_smoothing", 0.0, "mixes the target with the uniform distribution"),
    ),
    reductions=("none", "mean", "sum"),
    default_reduction="mean",
    per_row_reductions=("none",),
    term_reductions=("target", "rows"),
    coefficients=_class_coefficients,
    denominator=_class_denominator,
    template="classes",
    before_reduction=("weight", "ignore_index"),
)


def _teacher_denominator(reduction: str, term: str, kind: str, weighted: bool):
    if reduction == "batchmean":
        return MASK
    if reduction == "mean":
        return MASK * N_CLASSES
    return None


TEACHER = TargetModel(
    name="teacher",
    argument="teacher",
    kinds=("teacher",),
    options=(Option("mask", None, "a boolean per row; False drops the row (padding)",
                    per_call=True),),
    reductions=("batchmean", "sum", "none", "mean"),
    default_reduction="batchmean",
    per_row_reductions=("none",),
    term_reductions=("rows",),
    coefficients=lambda kind, weighted, smoothed: None,
    denominator=_teacher_denominator,
    template="teacher",
)

MODELS = {m.name: m for m in (CLASSES, TEACHER)}
