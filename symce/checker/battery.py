"""The battery of cases and the comparison of one call with the reference.

A case is built from a small spec (shape, dtype, logit pattern and magnitude,
target style, the options the implementation is called with, seed), so a
failing case can be rebuilt at smaller shapes to find a minimal
counterexample.  Logits (and class weights) are drawn on a grid of one decimal
(times the magnitude) so that a counterexample prints short.

Values are drawn one row per sample and position, the class axis last, and
then put in the layout of the input: ``(N, C)`` (the ``2d`` shapes),
``(N, C, d1, …)`` (``kdim``) or ``(C,)`` (``unbatched``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from symce.checker.adapter import Outcome
from symce.checker.reference import (
    TEACHER,
    Layout,
    LossSpec,
    from_rows,
    has_transform,
    reference,
    targets,
    term_factors,
    to_rows,
    transformed,
)

if TYPE_CHECKING:
    from symce.checker.runner import Runner

#: How many units of the dtype's epsilon an error may be, per unit of scale.
ULPS = 64

#: The input layouts a battery can cover (``--shapes``).
SHAPES = ("2d", "kdim", "unbatched")


@dataclass(frozen=True)
class Options:
    """What the implementation is called with besides the logits and the target.

    ``params``: the loss's parameters given, ``(name, value)`` pairs, passed
    as keyword arguments (the reference uses the declared defaults for the
    rest).  The class-target options of ``nn.CrossEntropyLoss``:
    ``weight``: each case draws positive class weights ``w`` (``[C]``) and
    passes ``weight=w``.  ``ignore_index``: passed as ``ignore_index=``, and
    every third row (from the second) of a class-index target is set to it (the
    first row never is, where there is another class).
    ``label_smoothing``: passed as ``label_smoothing=``.  The teacher target's:
    ``mask``: the battery adds cases that pass ``mask=m``, a boolean per row,
    False for every third row from the second (the cases without a mask pass
    none).  Unset options are not passed at all.
    """

    weight: bool = False
    ignore_index: int | None = None
    label_smoothing: float | None = None
    params: tuple[tuple[str, Any], ...] = ()
    mask: bool = False

    def __bool__(self) -> bool:
        return (self.weight or self.ignore_index is not None
                or self.label_smoothing is not None or bool(self.params) or self.mask)

    def describe(self, target: str = "target") -> str:
        """How the implementation is called: ``f(logits, target, weight=w, …)``."""
        words = ["logits", target]
        words += [f"{name}={_value(value)}" for name, value in self.params]
        if self.weight:
            words.append("weight=w")
        if self.ignore_index is not None:
            words.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing is not None:
            words.append(f"label_smoothing={self.label_smoothing:g}")
        if self.mask:
            words.append("mask=m (some cases)")
        return f"f({', '.join(words)})"


def _value(value: Any) -> str:
    return "None" if value is None else f"{value:g}"


@dataclass(frozen=True)
class Spec:
    """How to build one case."""

    name: str
    rows: int
    classes: int
    dtype: str = "float64"
    scale: float = 3.0
    pattern: str = "random"  # random | peaked | flat
    targets: str = "index"  # index | onehot | normalised | unnormalised | teacher
    seed: int = 0
    dims: tuple[int, ...] = ()  # d1, …: K-dimensional inputs (N, C, d1, …)
    batched: bool = True  # False: one sample of shape (C,)
    options: Options = Options()
    loss: str = "cross_entropy"
    masked: bool = False  # teacher targets: this case passes a row mask

    @property
    def lossspec(self) -> LossSpec:
        """The loss and the parameter values the case is checked with."""
        return LossSpec(self.loss, self.options.params)

    @property
    def shape(self) -> tuple[int, ...]:
        """The logits' shape."""
        return (self.rows, self.classes, *self.dims) if self.batched else (self.classes,)

    @property
    def row_count(self) -> int:
        """How many rows (samples times positions) the reference sees."""
        return int(np.prod(Layout(self.shape).positions, dtype=np.int64))

    @property
    def ignores(self) -> bool:
        """Some rows of the target are set to ``ignore_index``."""
        return self.options.ignore_index is not None and self.targets == "index"

    @property
    def masks(self) -> bool:
        """The case passes a row mask (teacher targets)."""
        return self.masked and self.targets == TEACHER

    def shape_text(self) -> str:
        """``N=4 C=5``, ``N=2 C=4 d=3x2`` or ``C=5 unbatched``."""
        if not self.batched:
            return f"C={self.classes} unbatched"
        dims = f" d={'x'.join(map(str, self.dims))}" if self.dims else ""
        return f"N={self.rows} C={self.classes}{dims}"

    def describe(self, ignored: int = 0) -> str:
        """The case in a few words; ``ignored``: how many of its rows are ignored."""
        logits = {
            "random": f"|x|<={self.scale:g}",
            "peaked": f"one logit +{self.scale:g}",
            "flat": "equal logits",
        }[self.pattern]
        text = f"{self.shape_text()} {self.dtype} {logits}, {self.targets} targets"
        what = "masked" if self.targets == TEACHER else "ignored"
        return text + (f", {ignored} {what}" if ignored else "")


@dataclass(frozen=True)
class Case:
    spec: Spec
    logits: np.ndarray  # float64 values exactly representable in spec.dtype, input layout
    target: np.ndarray  # what the implementation receives
    weight: np.ndarray | None = None  # class weights, when the options ask for them
    mask: np.ndarray | None = None  # a row mask (teacher targets), when the case passes one

    @property
    def kind(self) -> str:
        """How the reference reads the target: one-hot targets are probabilities too."""
        if self.spec.targets == TEACHER:
            return TEACHER
        return "index" if self.target.dtype.kind in "iu" else "probs"

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments of the call."""
        o = self.spec.options
        kwargs: dict[str, Any] = dict(o.params)
        if self.weight is not None:
            kwargs["weight"] = self.weight
        if o.ignore_index is not None:
            kwargs["ignore_index"] = o.ignore_index
        if o.label_smoothing is not None:
            kwargs["label_smoothing"] = o.label_smoothing
        if self.mask is not None:
            kwargs["mask"] = self.mask
        return kwargs

    @property
    def target_options(self) -> dict[str, Any]:
        """The options of the target model, as the reference takes them."""
        if self.kind == TEACHER:
            return {"mask": self.mask}
        return {"weight": self.weight, "ignore_index": self.ignore_index,
                "label_smoothing": self.smoothing}

    @property
    def ignore_index(self) -> int | None:
        """``ignore_index`` where it applies (class indices only, as in PyTorch)."""
        return self.spec.options.ignore_index if self.kind == "index" else None

    @property
    def smoothing(self) -> float:
        return self.spec.options.label_smoothing or 0.0

    @property
    def ignored(self) -> int:
        """How many rows are ignored (class indices) or masked out (a teacher's mask)."""
        if self.mask is not None:
            return int(np.count_nonzero(~self.mask))
        if self.ignore_index is None:
            return 0
        return int(np.count_nonzero(self.target == self.ignore_index))

    def describe(self) -> str:
        return self.spec.describe(self.ignored)

    def expected(self, reduction: str) -> tuple[np.ndarray, np.ndarray]:
        """The reference ``(loss, grad)``: the derivation's, for the case's loss."""
        return reference(self.spec.lossspec, self.logits, self.target, reduction,
                         self.target_options)

    def found(self, reduction: str):
        """The declared target model on this case's rows (:func:`reference.targets`)."""
        return targets(self.spec.lossspec, self.logits, self.target, reduction,
                       self.target_options)

    def rows(self) -> tuple[np.ndarray, np.ndarray, Layout]:
        """The logits and target one row per sample and position (class axis last)."""
        return to_rows(self.logits, self.target, self.kind)

    def coefficients(self) -> tuple[np.ndarray, float]:
        """``(target rows, N)``: the coefficients ``c`` (a teacher's logits) and the divisor
        of the loss's default reduction (``Σ w_y`` over the rows not ignored, the rows that
        count)."""
        spec = self.spec.lossspec
        found = self.found(spec.default_reduction)
        return found.target, float(found.denominators[spec.loss.main.reduction])

    @property
    def coeff(self) -> np.ndarray:
        return self.coefficients()[0]


@dataclass
class Result:
    """One case compared with the reference."""

    case: Case
    reduction: str
    outcome: Outcome
    expected_loss: np.ndarray
    expected_grad: np.ndarray
    grad_required: bool
    problems: list[str] = dataclasses.field(default_factory=list)
    loss_ok: bool = False
    grad_ok: bool = False
    #: gradient entries not compared: the derived gradient is not finite there
    uncompared: int = 0

    @property
    def passed(self) -> bool:
        return not self.problems


# -- building cases ---------------------------------------------------------
def _logits(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    shape = (spec.row_count, spec.classes)
    grid = np.round(rng.uniform(-1.0, 1.0, shape) * 10) / 10
    if spec.pattern == "flat":
        x = np.full(shape, 0.5 * spec.scale)
    elif spec.pattern == "peaked":  # one class per row far above the rest
        x = grid.copy()
        x[np.arange(shape[0]), rng.integers(0, spec.classes, shape[0])] += spec.scale
    else:
        x = grid * spec.scale
        if spec.scale >= 100:  # reach the stated magnitude: that is what the case is for
            x[0, 0] = spec.scale
    return x.astype(spec.dtype).astype(np.float64)


def _targets(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    n, c = spec.row_count, spec.classes
    if spec.targets == TEACHER:  # a teacher's logits, on the same grid and scale
        t = np.round(rng.uniform(-1.0, 1.0, (n, c)) * 10) / 10 * spec.scale
        return t.astype(spec.dtype).astype(np.float64)
    if spec.targets in ("index", "onehot"):
        index = rng.integers(0, c, n)
        if spec.ignores:
            ignore = spec.options.ignore_index
            index[1::3] = ignore
            if index[0] == ignore and c > 1:  # keep one row counted: the mean of none is nan
                index[0] = (ignore + 1) % c
        return index if spec.targets == "index" else np.eye(c)[index]
    probs = rng.dirichlet(np.ones(c), n)
    if spec.targets == "unnormalised":  # rows summing to anything in (0.2, 3)
        probs = probs * np.round(rng.uniform(0.2, 3.0, (n, 1)), 1)
    return probs.astype(spec.dtype).astype(np.float64)


def _weights(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    w = np.round(rng.uniform(0.1, 3.0, spec.classes), 1)
    return w.astype(spec.dtype).astype(np.float64)


def build(spec: Spec) -> Case:
    rng = np.random.default_rng(spec.seed)
    x_rows = _logits(spec, rng)
    t_rows = _targets(spec, rng)
    weight = _weights(spec, rng) if spec.options.weight else None
    layout = Layout(spec.shape)
    target = t_rows.reshape(layout.positions) if t_rows.ndim == 1 else layout.restore(t_rows)
    mask = None
    if spec.masks:
        mask = np.ones(spec.row_count, dtype=bool)
        mask[1::3] = False  # the first row always counts: a mean of none is nan
        mask = mask.reshape(layout.positions)
    return Case(spec, layout.restore(x_rows), target, weight, mask)


def _family_2d() -> list[Spec]:
    return [
        Spec("basic", 4, 5),
        Spec("single row", 1, 4),
        Spec("single class", 3, 1),
        Spec("square", 4, 4),
        Spec("wide", 2, 11),
        Spec("float32", 5, 7, "float32"),
        Spec("peaked", 6, 5, pattern="peaked", scale=40.0),
        Spec("flat", 3, 6, pattern="flat"),
        Spec("large 1e2", 4, 3, scale=1e2),
        Spec("large 1e2 float32", 4, 3, "float32", scale=1e2),
        Spec("large 1e3", 3, 4, scale=1e3),
        Spec("large 1e4", 5, 3, scale=1e4),
        Spec("large 1e4 float32", 3, 5, "float32", scale=1e4),
    ]


def _family_kdim() -> list[Spec]:
    return [
        Spec("kdim", 2, 4, dims=(3,)),
        Spec("kdim 2 dims", 2, 3, dims=(2, 3)),
        Spec("kdim d=1", 3, 4, dims=(1,)),
        Spec("kdim single row", 1, 5, dims=(4,)),
        Spec("kdim single class", 2, 1, dims=(3,)),
        Spec("kdim float32", 2, 5, "float32", dims=(3,)),
        Spec("kdim large 1e3", 2, 3, scale=1e3, dims=(2,)),
        Spec("kdim large 1e4 float32", 2, 4, "float32", scale=1e4, dims=(3,)),
    ]


def _family_unbatched() -> list[Spec]:
    return [
        Spec("unbatched", 1, 5, batched=False),
        Spec("unbatched single class", 1, 1, batched=False),
        Spec("unbatched float32", 1, 7, "float32", batched=False),
        Spec("unbatched large 1e3", 1, 4, scale=1e3, batched=False),
    ]


def battery(
    target: str,
    seed: int = 0,
    options: Options = Options(),
    shapes: tuple[str, ...] = ("2d",),
    loss: str = "cross_entropy",
) -> list[Spec]:
    """The cases for a target kind (``index``, ``probs``, ``onehot``; ``teacher``) and shapes.

    Fixed shapes cover the corners (N = 1, C = 1, N = C); for ``2d`` two more
    shapes are drawn at random; ``seed`` changes those draws and every case's
    values.  Probability targets add rows that do not sum to one; a teacher's
    logits add cases with a row mask where ``options.mask``.
    """
    style = {"index": "index", "onehot": "onehot", "probs": "normalised",
             TEACHER: TEACHER}[target]
    masked = target == TEACHER and options.mask
    specs: list[Spec] = []
    if "2d" in shapes:
        rng = np.random.default_rng(seed)
        (n1, n2), (c1, c2) = rng.integers(1, 9, 2), rng.integers(2, 13, 2)
        base = [
            *_family_2d(),
            Spec("random shape", int(n1), int(c1)),
            Spec("random shape float32", int(n2), int(c2), "float32", scale=10.0),
        ]
        specs += _seeded(base, seed, 0, targets=style)
        if target == "probs":
            specs += _seeded(
                [
                    Spec("unnormalised", 4, 5),
                    Spec("unnormalised float32", 3, 6, "float32"),
                    Spec("unnormalised large", 4, 3, scale=1e3),
                ],
                seed,
                101,
                targets="unnormalised",
            )
        if masked:
            specs += _seeded(
                [
                    Spec("masked", 5, 4),
                    Spec("masked float32", 6, 5, "float32"),
                    Spec("masked peaked", 4, 6, pattern="peaked", scale=40.0),
                    Spec("masked large 1e3", 5, 3, scale=1e3),
                ],
                seed,
                150,
                targets=style,
                masked=True,
            )
    if "kdim" in shapes:
        specs += _seeded(_family_kdim(), seed, 200, targets=style)
        if target == "probs":
            unnormalised = [Spec("kdim unnormalised", 2, 4, dims=(3,))]
            specs += _seeded(unnormalised, seed, 250, targets="unnormalised")
        if masked:
            specs += _seeded([Spec("kdim masked", 2, 4, dims=(3,))], seed, 260, targets=style,
                             masked=True)
    if "unbatched" in shapes:
        specs += _seeded(_family_unbatched(), seed, 300, targets=style)
        if target == "probs":
            unnormalised = [Spec("unbatched unnormalised", 1, 5, batched=False)]
            specs += _seeded(unnormalised, seed, 350, targets="unnormalised")
    return [dataclasses.replace(s, options=options, loss=loss) for s in specs]


def _seeded(specs: list[Spec], seed: int, offset: int, **changes: Any) -> list[Spec]:
    return [
        dataclasses.replace(s, seed=1000 * seed + offset + i, **changes)
        for i, s in enumerate(specs)
    ]


def detection_spec(
    targets: str, options: Options, shapes: tuple[str, ...], loss: str = "cross_entropy"
) -> Spec:
    """A first case in the first of ``shapes``, to tell the target kind from."""
    first = {
        "2d": Spec("detect", 3, 5),
        "kdim": Spec("detect", 2, 5, dims=(3,)),
        "unbatched": Spec("detect", 1, 5, batched=False),
    }[shapes[0]]
    return dataclasses.replace(first, targets=targets, options=options, loss=loss)


def shrink(spec: Spec, fails: Callable[[Spec], bool], tries: int = 10) -> Spec:
    """The smallest shape (rows × classes; positions kept) at which ``spec`` still fails."""
    rows = range(1, spec.rows + 1) if spec.batched else (spec.rows,)
    shapes = sorted(
        {(n, c) for n in rows for c in range(1, spec.classes + 1)},
        key=lambda s: (s[0] * s[1], s[1]),
    )
    for n, c in shapes[:tries]:
        smaller = dataclasses.replace(spec, rows=n, classes=c)
        if (n, c) != (spec.rows, spec.classes) and fails(smaller):
            return smaller
    return spec


# -- comparing --------------------------------------------------------------
def tolerances(case: Case, reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """Allowed absolute error for the loss (as reduced) and for each gradient entry.

    The larger of :func:`rounding_tolerances` and :data:`SENSITIVITY` times the
    change of the reference when the inputs are rounded once more in the
    case's dtype (:func:`sensitivity`): where a loss is ill-conditioned
    (focal loss with gamma < 1 near q = 1, ``(1 − q)^(γ−1)`` large) that is
    what any implementation in that dtype can be off by; elsewhere the first
    is the larger.  Memoised on the case.
    """
    memo = case.__dict__.setdefault("_tolerances", {})
    if reduction not in memo:
        loss_tol, grad_tol = rounding_tolerances(case, reduction)
        for factor, (loss_change, grad_change) in zip(SENSITIVITY, sensitivity(case, reduction),
                                                      strict=True):
            loss_tol = np.maximum(loss_tol, factor * loss_change)
            grad_tol = np.maximum(grad_tol, factor * grad_change)
        memo[reduction] = (loss_tol, grad_tol)
    return memo[reduction]


#: how many times the reference's change under one more rounding (of the inputs, of the
#: softmax) an implementation may be off by: as the rounding tolerance's 8·ε·|x|
SENSITIVITY = (8, 8)


def sensitivity(case: Case, reduction: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """How much the reference moves under one more rounding in the case's dtype.

    The change (loss, gradient) under two probes: the inputs rounded again
    (``x ⊙ (1 + u·r)``, a teacher's logits too) and the softmax rounded as
    every implementation's is, ``log q = x − LSE`` off by about ``u·|x|``
    (``q ⊙ (1 + u·(1 + max|x|)·r)``: near ``q = 1`` that is what is left of
    ``1 − q``), ``u`` the dtype's unit roundoff, ``r = ±1`` at random (for the
    softmax also all +1 and all −1, the worst of the three).  NaN counts as no
    change.
    """
    rng = np.random.default_rng(case.spec.seed + 12345)
    unit = np.finfo(case.spec.dtype).eps

    def perturbed(a: np.ndarray, size: np.ndarray | float = 0.0, sign: float = 0.0):
        r = rng.choice([-1.0, 1.0], np.shape(a)) if not sign else sign
        return a * (1.0 + unit * (1.0 + size) * r)

    spec, options = case.spec.lossspec, case.target_options
    x = case.rows()[0]
    size = np.abs(transformed(spec, x)[0]).max(axis=1).reshape(-1, 1, 1)
    target = perturbed(case.target) if case.kind == TEACHER else case.target
    here = case.expected(reduction)

    def change(probe):
        with np.errstate(invalid="ignore"):
            return [np.nan_to_num(np.abs(a - b), nan=0.0, posinf=0.0)
                    for a, b in zip(probe, here, strict=True)]

    inputs = change(reference(spec, perturbed(case.logits), target, reduction, options))
    softmax = [change(reference(spec, case.logits, case.target, reduction, options,
                                perturb=lambda q, s=sign: perturbed(q, size, s)))
               for sign in (0.0, 1.0, -1.0)]  # at random, all up, all down: the worst
    worst = [np.maximum.reduce([probe[i] for probe in softmax]) for i in range(2)]
    return [tuple(inputs), tuple(worst)]


def rounding_tolerances(case: Case, reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """The rounding error of a sound implementation, per loss term.

    Per row, for the loss's main term (cross-entropy's ``−Σ c log q``, focal
    loss, ``T²·KL``): ``ULPS·ε·(Σ|c| + 1)·(1 + max|x|)`` for the loss, ``x``
    the logits the softmax sees, and ``ULPS·ε·(Σ|c| + 1) + 8·ε·(Σ|c| + 1)·max|x|``
    for the gradient (``q = exp(x − LSE)`` inherits LSE's absolute error, about
    ``ε·|x|``), both scaled by the term's constant factor (``T²``) and the
    gradient by the transform's slope (``1/T``).  Other terms (the z-loss
    ``λ·LSE²``) add their own size in units of ``ε`` on top.  Each term is
    then reduced as the loss is.
    """
    x, t, layout = case.rows()
    spec = case.spec.lossspec
    eps = np.finfo(case.spec.dtype).eps * ULPS
    unit = np.finfo(case.spec.dtype).eps
    found = case.found(reduction)
    phi, slope = transformed(spec, x)
    transform = has_transform(spec)
    size = np.abs(phi).max(axis=1)
    if case.kind == TEACHER:
        mass = np.full(len(x), 4.0)  # two softmaxes, two log-sum-exps
        size = np.maximum(size, np.abs(transformed(spec, t, teacher=True)[0]).max(axis=1))
    else:
        mass = np.abs(found.target).sum(axis=1) + 1.0
    slope = slope.max(axis=1)
    factors = term_factors(spec)
    others = None
    loss_tol, grad_tol = np.asarray(0.0), np.zeros(x.shape)
    for term in spec.loss.terms:
        factor = abs(factors[term.name])
        if factor == 0.0:  # off (a z-loss of 0): nothing to round
            continue
        row_loss = eps * mass * (1.0 + size) * factor
        row_grad = (eps * mass + 8 * unit * mass * size) * factor * slope
        if transform:  # its derivative (1 - tanh**2) is rounded absolutely, not relatively
            row_grad = row_grad + 8 * unit * mass * factor
        if others is None:
            from symce.verify.reference import derived_rows

            others = derived_rows(spec.name, x, found.target, params=spec.values,
                                  valid=found.valid)
        with np.errstate(invalid="ignore"):  # an unbounded derivative (focal, gamma < 1)
            own_loss = eps * np.nan_to_num(np.abs(others.loss[term.name]), nan=0.0, posinf=0.0)
            own_grad = (eps + 8 * unit * size) * np.nan_to_num(
                np.abs(others.grad[term.name]), nan=0.0, posinf=0.0).max(1)
        if term is not spec.loss.main:
            row_loss, row_grad = row_loss + own_loss, row_grad + own_grad
        else:
            # the main term's model above is cross-entropy's (|loss| ~ Σ|c|·|x|); a
            # formula's term may grow faster (Σx²/n: ~|x|², where a sound float64
            # implementation is off by ε·|loss| and was failed at 1e4 logits)
            row_loss, row_grad = np.maximum(row_loss, own_loss), np.maximum(row_grad, own_grad)
        row_grad = np.repeat(row_grad[:, None], x.shape[1], axis=1)
        if reduction in spec.per_row:
            loss_tol, grad_tol = loss_tol + row_loss, grad_tol + row_grad
            continue
        d = found.denominators.get(term.reduction)
        scale = 1.0 if d is None else max(d, 1e-300)  # nothing counted: keep it finite
        loss_tol = loss_tol + row_loss.sum() / scale
        grad_tol = grad_tol + row_grad / scale
    if reduction in spec.per_row:
        loss_tol = loss_tol * np.ones(len(x))
    loss, grad = from_rows(np.asarray(loss_tol), grad_tol, layout, reduction, spec.per_row)
    return loss, grad


def evaluate(runner: Runner, case: Case, reduction: str) -> Result:
    """Call the implementation on one case and compare with the reference."""
    outcome = runner.call(case.logits, case.target, case.spec.dtype, case.options)
    exp_loss, exp_grad = case.expected(reduction)
    result = Result(case, reduction, outcome, exp_loss, exp_grad, runner.backend == "torch")
    if outcome.error:
        result.problems.append(outcome.error)
        return result
    loss_tol, grad_tol = tolerances(case, reduction)
    result.loss_ok = _compare(
        "loss", outcome.loss, exp_loss, loss_tol, result.problems, scalar=reduction != "none"
    )
    if outcome.grad is None:
        result.grad_ok = not result.grad_required
        if result.grad_required:
            result.problems.append(f"no gradient: {outcome.grad_note}")
    else:
        defined = np.isfinite(exp_grad)
        if case.spec.dtype != "float64" and outcome.grad.shape == exp_grad.shape:
            _, in_dtype = reference(case.spec.lossspec, case.logits, case.target, reduction,
                                    case.target_options, case.spec.dtype)
            defined &= np.isfinite(in_dtype)
        if outcome.grad.shape == exp_grad.shape and not defined.all():
            # an unbounded derivative (focal loss with gamma < 1 where q rounds to 1, in
            # float64 or in the case's dtype): the reference says nothing there, so
            # neither a number nor nan is wrong
            result.uncompared = int(np.count_nonzero(~defined))
            got = np.where(defined, outcome.grad, 0.0)
            result.grad_ok = _compare("gradient", got, np.where(defined, exp_grad, 0.0),
                                      grad_tol, result.problems)
        else:
            result.grad_ok = _compare("gradient", outcome.grad, exp_grad, grad_tol,
                                      result.problems)
    return result


def _compare(
    what: str,
    got: np.ndarray,
    expected: np.ndarray,
    tol: np.ndarray,
    problems: list[str],
    scalar: bool = False,
) -> bool:
    if scalar and got.size == 1:
        got = got.reshape(())
    if got.shape != expected.shape:
        problems.append(f"{what} has shape {list(got.shape)}, expected {list(expected.shape)}")
        return False
    same_nan = np.isnan(got) & np.isnan(expected)  # a mean over no rows at all, as in torch
    if not np.all(np.isfinite(got) | same_nan):
        problems.append(f"{what} is not finite ({_nonfinite(got)})")
        return False
    err = np.where(same_nan, 0.0, np.abs(got - expected))
    if np.all(err <= tol):
        return True
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.ndim else ()
    problems.append(
        f"{what} differs: max abs error {err.max():.3g} "
        f"(allowed {np.broadcast_to(tol, err.shape)[worst]:.3g})"
    )
    return False


def _nonfinite(a: np.ndarray) -> str:
    kinds = [name for name, hit in (("nan", np.isnan(a).any()), ("inf", np.isinf(a).any())) if hit]
    return " and ".join(kinds)
