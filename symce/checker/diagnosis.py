"""Recognising the usual mistakes from the failures and from a few probes.

Each rule looks at the evidence (every case's result, plus the ability to run
the implementation on new inputs) and returns a sentence or ``None``; the
rules are a list, tried in order, and every sentence found is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from symce.checker.battery import Case, Result, Spec, build, evaluate, tolerances
from symce.checker.reference import reduce, softmax


@dataclass
class Evidence:
    fn: Callable[..., Any]
    backend: str
    reduction: str
    target: str  # index | probs | onehot
    results: list[Result]

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.passed]

    @property
    def returned(self) -> list[Result]:
        """Failures where the implementation returned something comparable."""
        return [r for r in self.failed if r.outcome.error is None]

    def run(self, logits: np.ndarray, target: np.ndarray, dtype: str = "float64") -> Result:
        kind = "index" if target.dtype.kind in "iu" else "probs"
        coeff = np.eye(logits.shape[1])[target] if kind == "index" else target
        spec = Spec("probe", *logits.shape, dtype=dtype)
        return evaluate(self.fn, self.backend, Case(spec, logits, target, coeff), self.reduction)

    def one_hot_target(self, index: np.ndarray, classes: int) -> np.ndarray:
        return index if self.target == "index" else np.eye(classes)[index]


Rule = Callable[[Evidence], "str | None"]


# -- which cases fail -------------------------------------------------------
def _raised_shape_error(ev: Evidence) -> str | None:
    words = ("size", "shape", "dimension", "broadcast")
    for r in ev.failed:
        err = r.outcome.error or ""
        if err.startswith("raised") and any(w in err.lower() for w in words):
            s = r.case.spec
            return (
                f"it raised a shape error at N={s.rows}, C={s.classes}: a [N] tensor "
                "combined with a [N, C] one (a missing keepdim=True?) or a hard-coded shape"
            )
    return None


def _always_raises(ev: Evidence) -> str | None:
    errors = [r.outcome.error for r in ev.results]
    if all(errors) and all(e.startswith("raised") for e in errors):
        same = " (the same error each time)" if len(set(errors)) == 1 else ""
        return f"it raised on every case{same}: it cannot be compared until it runs"
    return None


def _wrong_shape(ev: Evidence) -> str | None:
    for r in ev.returned:
        got, want = r.outcome.loss, r.expected_loss
        if got is None or got.size == want.size:
            continue
        n, c = r.case.logits.shape
        if got.shape == (n,) and want.shape == ():
            return (
                f"it returns one loss per row: no {ev.reduction} reduction (pass "
                "--reduction none if per-row losses are what it means to compute)"
            )
        if want.shape == (n,) and got.size == 1:
            return "it returns a reduced loss, where --reduction none expects one per row"
        if got.shape == (n, c):
            return "it returns [N, C]: the per-class terms were not summed over the class axis"
        if got.shape == (n, n):
            return (
                "it returns [N, N]: a [N, 1] tensor broadcast against a [N] one (keep "
                "one of them [N] with squeeze(1), or both [N, 1])"
            )
        return None
    return None


def _only_degenerate(ev: Evidence) -> str | None:
    def degenerate(r: Result) -> bool:
        return 1 in r.case.logits.shape

    if (
        ev.failed
        and all(degenerate(r) for r in ev.failed)
        and not all(degenerate(r) for r in ev.results)
    ):
        return (
            "it fails only when N = 1 or C = 1: an axis dropped by squeeze() or "
            "indexing, so the batch or class axis is lost at that size"
        )
    return None


def _only_large(ev: Evidence) -> str | None:
    def large(r: Result) -> bool:
        return r.case.spec.scale >= 100

    def nonfinite(r: Result) -> bool:
        return any("not finite" in p for p in r.problems)

    fix = (
        "exp overflows without a max shift; compute m = max(x) per row and use "
        "m + log(sum(exp(x - m)))"
    )
    if ev.failed and all(large(r) for r in ev.failed):
        smallest = min(r.case.spec.scale for r in ev.failed)
        said = "; the result is nan/inf" if any(nonfinite(r) for r in ev.failed) else ""
        return (
            f"the error appears only at large logits (it fails from |x| ~ {smallest:g}, "
            f"passes below{said}): {fix}"
        )
    overflowing = [r for r in ev.failed if large(r) and nonfinite(r)]
    if overflowing and not any(nonfinite(r) for r in ev.failed if not large(r)):
        smallest = min(r.case.spec.scale for r in overflowing)
        return f"at large logits (from |x| ~ {smallest:g}) the result is nan/inf: {fix}"
    return None


def _only_float32(ev: Evidence) -> str | None:
    if ev.failed and all(r.case.spec.dtype == "float32" for r in ev.failed):
        return "it fails only for float32 inputs: a loss of precision specific to float32"
    return None


def _float32_accurate(ev: Evidence) -> str | None:
    """float64 failures whose errors are within float32 rounding."""
    wide = [r for r in ev.returned if r.case.spec.dtype == "float64"]
    if not wide or len(wide) != len(ev.failed):
        return None
    scale = np.finfo(np.float32).eps / np.finfo(np.float64).eps
    for r in wide:
        loss_tol, grad_tol = tolerances(r.case, ev.reduction)
        pairs = [(r.outcome.loss, r.expected_loss, loss_tol)]
        if r.outcome.grad is not None:
            pairs.append((r.outcome.grad, r.expected_grad, grad_tol))
        for got, expected, tol in pairs:
            if got.size != expected.size:
                return None
            if not np.all(np.abs(got.reshape(expected.shape) - expected) <= tol * scale):
                return None
    return (
        "its float64 results are only as accurate as float32: it computes in float32 "
        "somewhere (a .float() cast, a float32 constant or buffer)"
    )


def _dtype_changed(ev: Evidence) -> str | None:
    for r in ev.results:
        got, want = r.outcome.dtype, r.case.spec.dtype
        if got in _FLOAT_BITS and _FLOAT_BITS[got] < _FLOAT_BITS[want]:
            return (
                f"for {want} inputs it returns {got}: a hard-coded dtype or a cast loses precision"
            )
    return None


_FLOAT_BITS = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


def _unnormalised_only(ev: Evidence) -> str | None:
    def unnormalised(r: Result) -> bool:
        return r.case.spec.targets == "unnormalised"

    if not ev.failed or not all(unnormalised(r) for r in ev.failed):
        return None
    text = (
        "it passes for targets that sum to one and fails for targets that do not: it "
        "assumes sum(p) = 1"
    )
    details = []
    for r in ev.returned:
        x, c = r.case.logits, r.case.coeff
        q = softmax(x)
        lse = x.max(1) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1))
        loss_n, grad_n = reduce(lse - (c * x).sum(1), q - c, ev.reduction)
        if r.outcome.grad is not None and _close(r.outcome.grad, grad_n):
            details.append(
                "the gradient is q - p, but the derived gradient is "
                "q*sum(p) - p, which equals q - p only when sum(p) = 1"
            )
        if _close(r.outcome.loss, loss_n):
            details.append(
                "the loss is LSE(x) - sum(p*x), but the derived loss is sum(p)*LSE(x) - sum(p*x)"
            )
        break
    return "; ".join([text, *details])


def _only_single_rows(ev: Evidence) -> str | None:
    """Every single-row case passes; ordinary cases with several rows fail."""
    single = [r for r in ev.results if r.case.logits.shape[0] == 1]
    if not single or not all(r.passed for r in single) or not ev.failed:
        return None
    ordinary = [
        r for r in ev.failed if r.case.spec.scale < 100 and r.case.spec.targets != "unnormalised"
    ]
    if not ordinary or _wrong_shape(ev) or _loss_factor(ev) or _grad_factor(ev):
        return None  # explained by another rule, said more precisely there
    return (
        "it passes for N = 1 and fails for N > 1: the rows interact; each row must be "
        "paired with its own target (logp[arange(N), target], not logp[:, target])"
    )


# -- how the failures differ ------------------------------------------------
_FACTORS: list[tuple[str, Callable[[int, int], float], str]] = [
    (
        "N",
        lambda n, c: n,
        "a sum where the mean was meant, or a [N, 1] tensor broadcast "
        "against a [N] one (an N x N intermediate)",
    ),
    ("1/N", lambda n, c: 1 / n, "a mean where a sum was meant, or a division by N once too often"),
    (
        "C",
        lambda n, c: c,
        "a sum over classes where none was meant, or a [N, C] term "
        "broadcast where a [N, 1] one was meant",
    ),
    (
        "1/C",
        lambda n, c: 1 / c,
        "a mean over the class axis (e.g. .mean() over all N x C "
        "entries) where the sum over classes was meant",
    ),
    ("N*C", lambda n, c: n * c, "a sum over all N x C entries of a broadcast term"),
    ("1/(N*C)", lambda n, c: 1 / (n * c), "a mean over all N x C entries"),
    (
        "-1",
        lambda n, c: -1.0,
        "the sign is flipped (p - q instead of q - p, or a missing "
        "minus in front of the log-likelihood)",
    ),
]


def _ratio(got: np.ndarray | None, expected: np.ndarray, tol: np.ndarray) -> float | None:
    """``r`` if ``got = r·expected`` within the case's tolerance (scaled by ``r``)."""
    if got is None or got.size != expected.size or not np.all(np.isfinite(got)):
        return None
    g, e = got.reshape(-1), expected.reshape(-1)
    if not np.any(e != 0):
        return None
    r = float(g @ e / (e @ e))  # least squares
    allowed = np.broadcast_to(tol, expected.shape).reshape(-1) * max(1.0, abs(r))
    return r if np.all(np.abs(g - r * e) <= allowed) else None


def _factor_labels(ratio: float, n: int, c: int) -> set[str]:
    values = {label: f(n, c) for label, f, _ in _FACTORS}
    hits = {label for label, v in values.items() if np.isclose(ratio, v, rtol=1e-5)}
    # a label is informative only if no other candidate has the same value here
    return {h for h in hits if sum(np.isclose(values[h], v) for v in values.values()) == 1}


def _constant_factor(ev: Evidence, what: str) -> str | None:
    ratios: list[float] = []
    common: set[str] | None = None
    for r in ev.returned:
        if r.loss_ok if what == "loss" else r.grad_ok:
            continue
        got = r.outcome.loss if what == "loss" else r.outcome.grad
        if got is not None and not np.all(np.isfinite(got)):
            continue  # overflow: another rule's business
        loss_tol, grad_tol = tolerances(r.case, ev.reduction)
        if what == "loss":
            ratio = _ratio(got, r.expected_loss, loss_tol)
        else:
            ratio = _ratio(got, r.expected_grad, grad_tol)
        if ratio is None:
            return None  # not a constant multiple in this case
        ratios.append(ratio)
        n, c = r.case.logits.shape
        if n > 1 and c > 1 and n != c:  # only there can N and C be told apart
            labels = _factor_labels(ratio, n, c)
            common = labels if common is None else common & labels
    if common:
        label, _, why = next(f for f in _FACTORS if f[0] in common)
        return f"the {what} is {label} times the reference: {why}"
    if (
        len(ratios) > 1
        and np.allclose(ratios, ratios[0], rtol=1e-5)
        and not np.isclose(ratios[0], 1.0, rtol=1e-3)
    ):
        return f"the {what} is a constant multiple ({ratios[0]:.6g}) of the reference"
    return None


def _loss_factor(ev: Evidence) -> str | None:
    loss, grad = _constant_factor(ev, "loss"), _constant_factor(ev, "gradient")
    if loss and grad and loss.removeprefix("the loss") == grad.removeprefix("the gradient"):
        return "the loss and the gradient are" + loss.removeprefix("the loss is")
    return loss


def _grad_factor(ev: Evidence) -> str | None:
    loss, grad = _constant_factor(ev, "loss"), _constant_factor(ev, "gradient")
    if loss and grad and loss.removeprefix("the loss") == grad.removeprefix("the gradient"):
        return None  # said together with the loss
    return grad


def _loss_or_grad_only(ev: Evidence) -> str | None:
    returned = ev.returned
    if not returned:
        return None
    if all(r.loss_ok and not r.grad_ok for r in returned):
        if all(r.outcome.grad is None for r in returned):
            return None
        return (
            "the loss is correct but the gradient is not: the hand-written backward "
            "(or the returned gradient) does not match the derived q*sum(p) - p"
        )
    if all(r.grad_ok and not r.loss_ok and r.outcome.grad is not None for r in returned):
        return "the gradient is correct but the loss is not: " + _offset(ev, returned[0])
    return None


def _offset(ev: Evidence, r: Result) -> str:
    """Describe a loss error that the gradient does not see."""
    got = r.outcome.loss.reshape(r.expected_loss.shape)
    diff = got - r.expected_loss
    moved = ev.run(r.case.logits + 0.5, r.case.target, r.case.spec.dtype)
    if moved.outcome.error is None and moved.outcome.loss is not None:
        diff2 = moved.outcome.loss.reshape(diff.shape) - moved.expected_loss
        if not np.allclose(diff, diff2, rtol=1e-6, atol=1e-9):
            return (
                "the loss is wrong by a term that changes with a uniform shift of the "
                "logits (softmax is shift invariant, the loss must be too)"
            )
    c = r.case.coeff
    with np.errstate(all="ignore"):
        entropy_rows = -np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0).sum(1)
    entropy, _ = reduce(entropy_rows, c, ev.reduction)
    if np.any(np.abs(entropy) > 1e-9) and np.allclose(diff, -entropy, rtol=1e-6, atol=1e-9):
        return (
            "it differs by exactly -H(p), the target entropy: this is KL(p||q), "
            "not the cross-entropy (same gradient, different value)"
        )
    return f"it differs by a term that does not depend on the logits (here {np.ravel(diff)[0]:.6g})"


# -- probes -----------------------------------------------------------------
def _eps_in_log(ev: Evidence) -> str | None:
    """A target class of tiny probability: the true loss is large, a clamp saturates."""
    values = []
    for gap in (60.0, 80.0):
        x = np.array([[0.0, 0.0, -gap]])
        r = ev.run(x, ev.one_hot_target(np.array([2]), 3))
        if r.outcome.error or r.outcome.loss is None or r.outcome.loss.size != 1:
            return None
        values.append(float(r.outcome.loss.reshape(())))
        expected = float(r.expected_loss.reshape(()))
    a, b = values
    if np.isfinite(a) and 1.0 < a < expected - 1.0 and abs(a - b) < 1e-3 * a:
        return (
            f"the loss saturates at {a:.4g} = -log({np.exp(-a):.1g}) when the target "
            f"class has a tiny probability (expected {expected:.4g}): an eps or a clamp "
            "inside the log (log(q + eps), q.clamp(min=eps)); use log_softmax or the "
            "log-sum-exp form"
        )
    return None


def _batch_axis_softmax(ev: Evidence) -> str | None:
    for r in ev.returned:
        x, c = r.case.logits, r.case.coeff
        if x.shape[0] < 2 or r.loss_ok:
            continue
        with np.errstate(all="ignore"):
            rows = -(c * np.log(softmax(x, axis=0))).sum(1)
        loss0, _ = reduce(rows, c, ev.reduction)
        if _close(r.outcome.loss, loss0):
            return (
                "the loss is what a softmax over the batch axis (dim=0) gives: the "
                "softmax must be taken over the class axis (dim=1 / dim=-1)"
            )
        return None
    return None


def _rows_mix(ev: Evidence) -> str | None:
    """Changing one row must not change the other rows' losses or gradients."""
    case = build(Spec("rows", 4, 5, targets="index" if ev.target == "index" else "onehot", seed=7))
    a = ev.run(case.logits, case.target)
    x = case.logits.copy()
    x[0] += np.array([2.0, -1.0, 0.5, 0.0, -3.0])
    b = ev.run(x, case.target)
    if a.outcome.error or b.outcome.error:
        return None
    if ev.reduction == "none":
        pa, pb = a.outcome.loss, b.outcome.loss
    else:
        pa, pb = a.outcome.grad, b.outcome.grad
    if pa is None or pb is None or pa.shape != pb.shape or pa.ndim == 0 or len(pa) != 4:
        return None
    if not np.allclose(pa[1:], pb[1:], rtol=1e-9, atol=1e-12):
        return (
            "changing the logits of one row changes the result of the other rows: the "
            "softmax (or a normalisation) runs over the batch axis instead of the class "
            "axis"
        )
    return None


def _row_order(ev: Evidence) -> str | None:
    """Permuting the rows (logits and targets together) must permute the result."""
    case = build(Spec("perm", 5, 3, targets="index" if ev.target == "index" else "onehot", seed=11))
    perm = np.array([3, 0, 4, 1, 2])
    a = ev.run(case.logits, case.target)
    b = ev.run(case.logits[perm], case.target[perm])
    if a.outcome.error or b.outcome.error or a.outcome.loss is None:
        return None
    la, lb = a.outcome.loss, b.outcome.loss
    if la.size != a.expected_loss.size or lb.size != la.size:
        return None  # a shape mistake, said by its own rule
    if ev.reduction == "none":
        la = la.reshape(5)[perm]
    if not np.allclose(la, lb, rtol=1e-9, atol=1e-12):
        return (
            "the result changes when the rows are permuted: rows are paired with the "
            "wrong targets (e.g. logp[target] instead of logp[arange(N), target]) or "
            "the softmax runs over the wrong axis"
        )
    return None


def _close(got: np.ndarray | None, expected: np.ndarray) -> bool:
    if got is None or got.size != expected.size:
        return False
    g = got.reshape(expected.shape)
    return bool(np.all(np.isfinite(g))) and np.allclose(g, expected, rtol=1e-7, atol=1e-10)


#: Tried in order; every rule that recognises something contributes a sentence.
RULES: list[Rule] = [
    _always_raises,
    _raised_shape_error,
    _wrong_shape,
    _only_degenerate,
    _only_large,
    _only_float32,
    _dtype_changed,
    _float32_accurate,
    _only_single_rows,
    _unnormalised_only,
    _loss_or_grad_only,
    _loss_factor,
    _grad_factor,
    _eps_in_log,
    _batch_axis_softmax,
    _rows_mix,
    _row_order,
]


def diagnose(ev: Evidence) -> list[str]:
    """Every sentence the rules find for the failures in ``ev``."""
    found = []
    for rule in RULES:
        try:
            text = rule(ev)
        except Exception:  # a probe must never turn a report into a traceback
            text = None
        if text and text not in found:
            found.append(text)
    return found


__all__ = ["Evidence", "RULES", "diagnose"]
