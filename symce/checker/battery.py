"""The battery of cases and the comparison of one call with the reference.

A case is built from a small spec (shape, dtype, logit pattern and magnitude,
target style, seed), so a failing case can be rebuilt at smaller shapes to find
a minimal counterexample.  Logits are drawn on a grid of one decimal (times the
magnitude) so that a counterexample prints short.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from symce.checker.adapter import Outcome, call
from symce.checker.reference import coefficients, reference

#: How many units of the dtype's epsilon an error may be, per unit of scale.
ULPS = 64


@dataclass(frozen=True)
class Spec:
    """How to build one case."""

    name: str
    rows: int
    classes: int
    dtype: str = "float64"
    scale: float = 3.0
    pattern: str = "random"  # random | peaked | flat
    targets: str = "index"  # index | onehot | normalised | unnormalised
    seed: int = 0

    def describe(self) -> str:
        logits = {
            "random": f"|x|<={self.scale:g}",
            "peaked": f"one logit +{self.scale:g}",
            "flat": "equal logits",
        }[self.pattern]
        return f"N={self.rows} C={self.classes} {self.dtype} {logits}, {self.targets} targets"


@dataclass(frozen=True)
class Case:
    spec: Spec
    logits: np.ndarray  # float64 values exactly representable in spec.dtype
    target: np.ndarray  # what the implementation receives
    coeff: np.ndarray  # target coefficients c, float64 [N, C]


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

    @property
    def passed(self) -> bool:
        return not self.problems


# -- building cases ---------------------------------------------------------
def _logits(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    shape = (spec.rows, spec.classes)
    grid = np.round(rng.uniform(-1.0, 1.0, shape) * 10) / 10
    if spec.pattern == "flat":
        x = np.full(shape, 0.5 * spec.scale)
    elif spec.pattern == "peaked":  # one class per row far above the rest
        x = grid.copy()
        x[np.arange(spec.rows), rng.integers(0, spec.classes, spec.rows)] += spec.scale
    else:
        x = grid * spec.scale
        if spec.scale >= 100:  # reach the stated magnitude: that is what the case is for
            x[0, 0] = spec.scale
    return x.astype(spec.dtype).astype(np.float64)


def _targets(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    n, c = spec.rows, spec.classes
    if spec.targets in ("index", "onehot"):
        index = rng.integers(0, c, n)
        return index if spec.targets == "index" else np.eye(c)[index]
    probs = rng.dirichlet(np.ones(c), n)
    if spec.targets == "unnormalised":  # rows summing to anything in (0.2, 3)
        probs = probs * np.round(rng.uniform(0.2, 3.0, (n, 1)), 1)
    return probs.astype(spec.dtype).astype(np.float64)


def build(spec: Spec) -> Case:
    rng = np.random.default_rng(spec.seed)
    logits = _logits(spec, rng)
    target = _targets(spec, rng)
    kind = "index" if spec.targets == "index" else "probs"
    return Case(spec, logits, target, coefficients(target, kind, spec.classes))


def battery(target: str, seed: int = 0) -> list[Spec]:
    """The cases for a target kind (``index``, ``probs`` or ``onehot``).

    Fixed shapes cover the corners (N = 1, C = 1, N = C); two more shapes are
    drawn at random; ``seed`` changes those draws and every case's values.
    """
    rng = np.random.default_rng(seed)
    (n1, n2), (c1, c2) = rng.integers(1, 9, 2), rng.integers(2, 13, 2)
    style = {"index": "index", "onehot": "onehot", "probs": "normalised"}[target]
    base = [
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
        Spec("random shape", int(n1), int(c1)),
        Spec("random shape float32", int(n2), int(c2), "float32", scale=10.0),
    ]
    specs = [
        dataclasses.replace(s, targets=style, seed=1000 * seed + i) for i, s in enumerate(base)
    ]
    if target == "probs":
        specs += [
            Spec("unnormalised", 4, 5, targets="unnormalised"),
            Spec("unnormalised float32", 3, 6, "float32", targets="unnormalised"),
            Spec("unnormalised large", 4, 3, scale=1e3, targets="unnormalised"),
        ]
        specs[-3:] = [
            dataclasses.replace(s, seed=1000 * seed + 101 + i) for i, s in enumerate(specs[-3:])
        ]
    return specs


def shrink(spec: Spec, fails: Callable[[Spec], bool], tries: int = 10) -> Spec:
    """The smallest shape (rows × classes) at which ``spec`` still fails."""
    shapes = sorted(
        {(n, c) for n in range(1, spec.rows + 1) for c in range(1, spec.classes + 1)},
        key=lambda s: (s[0] * s[1], s[1]),
    )
    for n, c in shapes[:tries]:
        smaller = dataclasses.replace(spec, rows=n, classes=c)
        if (n, c) != (spec.rows, spec.classes) and fails(smaller):
            return smaller
    return spec


# -- comparing --------------------------------------------------------------
def tolerances(case: Case, reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """Allowed absolute error for the loss (as reduced) and for each gradient entry."""
    eps = np.finfo(case.spec.dtype).eps * ULPS
    mass = np.abs(case.coeff).sum(axis=1) + 1.0
    row_loss = eps * mass * (1.0 + np.abs(case.logits).max(axis=1))
    # q = exp(x - LSE) inherits LSE's absolute rounding error, about unit*|x|
    unit = np.finfo(case.spec.dtype).eps
    row_grad = eps * mass + 8 * unit * mass * np.abs(case.logits).max(axis=1)
    row_grad = np.repeat(row_grad[:, None], case.logits.shape[1], axis=1)
    n = case.logits.shape[0]
    if reduction == "none":
        return row_loss, row_grad
    if reduction == "sum":
        return np.asarray(row_loss.sum()), row_grad
    return np.asarray(row_loss.sum() / n), row_grad / n


def evaluate(fn: Callable[..., Any], backend: str, case: Case, reduction: str) -> Result:
    """Call the implementation on one case and compare with the reference."""
    outcome = call(fn, backend, case.logits, case.target, case.spec.dtype)
    exp_loss, exp_grad = reference(case.logits, case.coeff, reduction)
    result = Result(case, reduction, outcome, exp_loss, exp_grad, backend == "torch")
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
        result.grad_ok = _compare("gradient", outcome.grad, exp_grad, grad_tol, result.problems)
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
    if not np.all(np.isfinite(got)):
        problems.append(f"{what} is not finite ({_nonfinite(got)})")
        return False
    err = np.abs(got - expected)
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
