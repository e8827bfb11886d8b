"""Recognising the usual mistakes from the failures and from a few probes.

Each rule looks at the evidence (every case's result, plus the ability to run
the implementation on new inputs) and returns a sentence or ``None``; the
rules are a list, tried in order, and every sentence found is reported.
Each rule has a scope (:data:`SCOPES`): ``any`` loss (what it returns, NaN/inf,
shapes, constant factors such as sum-vs-mean and the sign, rows that
interact), the losses with ``classes`` targets (an eps in the log, targets
that do not sum to one), or ``cross_entropy`` alone (its formula in ``p``,
KL instead of cross-entropy, a softmax over the batch axis); a rule runs only
for the losses in its scope, and the report says which apply
(:func:`scope`).

Mistakes with the options are a table of their own (:func:`mistakes`): each
is the reference computed the mistaken way — altered coefficients, row mask,
denominators or parameter values fed to the derivation's core
(:func:`symce.checker.reference.reduced`) — and a mistake (or a pair) is
named when it explains every failure.  The class-target options'
(``nn.CrossEntropyLoss``'s) apply to every loss with class targets, the
teacher's mask to every loss with a teacher, and each parameter's (its value
not used) to every loss that has it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from symce.checker.battery import Case, Options, Result, Spec, build, evaluate, tolerances
from symce.checker.reference import (
    CROSS_ENTROPY,
    TEACHER,
    LossSpec,
    from_coefficients,
    from_rows,
    has_transform,
    reduced,
    softmax,
    to_rows,
)

if TYPE_CHECKING:
    from symce.checker.runner import Runner


@dataclass
class Evidence:
    runner: Runner
    reduction: str
    target: str  # index | probs | onehot
    results: list[Result]
    options: Options = Options()
    shapes: tuple[str, ...] = ("2d",)
    loss: LossSpec = CROSS_ENTROPY

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.passed]

    @property
    def returned(self) -> list[Result]:
        """Failures where the implementation returned something comparable."""
        return [r for r in self.failed if r.outcome.error is None]

    @property
    def probes_2d(self) -> bool:
        """Probes are [N, C]: only where the battery has such inputs."""
        return "2d" in self.shapes

    def rerun(
        self, case: Case, logits: np.ndarray | None = None, target: np.ndarray | None = None
    ) -> Result:
        """``case`` again, with other logits or targets of the same shape."""
        changed = dataclasses.replace(
            case,
            logits=case.logits if logits is None else logits,
            target=case.target if target is None else target,
        )
        return evaluate(self.runner, changed, self.reduction)

    def run(self, logits: np.ndarray, target: np.ndarray, dtype: str = "float64") -> Result:
        """A probe on ``[N, C]`` logits (unit class weights where weights are passed)."""
        spec = Spec("probe", *logits.shape, dtype=dtype, options=self.options,
                    loss=self.loss.name, targets=_probe_targets(self))
        weight = np.ones(logits.shape[1]) if self.options.weight else None
        return evaluate(self.runner, Case(spec, logits, target, weight), self.reduction)

    def one_hot_target(self, index: np.ndarray, classes: int) -> np.ndarray:
        return index if self.target == "index" else np.eye(classes)[index]


def _reduced(case: Case, rows: np.ndarray, grad: np.ndarray, reduction: str):
    """Per-row losses and gradients reduced as the case's reference is, in its layout."""
    _, denominator = case.coefficients()
    if reduction == "sum":
        rows = np.asarray(rows.sum())
    elif reduction == "mean":
        rows, grad = np.asarray(rows.sum() / denominator), grad / denominator
    return from_rows(rows, grad, case.rows()[2], reduction)


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


#: a type returned instead of a loss → (what it is, what usually made it)
_RETURN_TYPES = {
    "None": ("None", "a missing return statement (or a function that only prints)"),
    "str": ("a str, not a loss", "a formatted or printed value instead of the tensor"),
    "float": (
        "a Python float, not a tensor",
        ".item() or float() cuts the loss off from autograd; return the tensor itself",
    ),
    "int": ("a Python int, not a tensor", "return the loss tensor itself"),
    "list": (
        "a list",
        ".tolist() or a list of per-row losses; return one tensor (torch.stack the rows, "
        "then reduce)",
    ),
    "tuple": ("a tuple", "return the loss alone (the torch backend takes the gradient itself)"),
    "dict": ("a dict", "return the loss tensor itself, not a dict of outputs"),
    "ndarray": (
        "a NumPy array",
        "the result left torch (.numpy() or NumPy arithmetic), so autograd cannot follow "
        "it; compute with torch operations",
    ),
}


def _died(ev: Evidence) -> str | None:
    died = [r for r in ev.failed if r.outcome.failure == "died"]
    if not died:
        return None
    names = ", ".join(f"'{r.case.spec.name}'" for r in died[:3])
    names += ", ..." if len(died) > 3 else ""
    return (
        f"the process running it died on {len(died)} case(s) ({names}) instead of raising: a "
        "crash in native code (a segfault in a C or CUDA extension), os._exit() or a kill "
        "(out of memory?); a fresh process ran the cases after it"
    )


def _wrong_return_type(ev: Evidence) -> str | None:
    """It ran, but what it returned is no loss at all: say which type, not 'it raised'."""
    kinds = [r.outcome.returned for r in ev.failed if r.outcome.failure == "returned"]
    if not kinds:
        return None
    name = max(set(kinds), key=kinds.count)
    expected = "a torch.Tensor" if ev.runner.backend == "torch" else "an array or a number"
    what, why = _RETURN_TYPES.get(name, (f"a {name}", f"{expected} was expected"))
    where = "on every case" if len(kinds) == len(ev.results) else f"on {len(kinds)} cases"
    return f"it returns {what} {where}: {why}"


def _constant_result(ev: Evidence) -> str | None:
    """The same value whatever the input: a placeholder, not a computation."""
    values = [
        r.outcome.loss for r in ev.results if r.outcome.error is None and r.outcome.loss is not None
    ]
    expected = [r.expected_loss for r in ev.results if r.outcome.error is None]
    if len(values) < 3 or not ev.failed:
        return None
    flat = np.concatenate([np.ravel(v) for v in values])
    if not np.all(flat == flat[0]) or np.allclose(np.concatenate([np.ravel(e) for e in expected]),
                                                 flat[0]):
        return None
    dtypes = {r.outcome.dtype for r in ev.results if r.outcome.error is None}
    integer = [d for d in dtypes if d and d.startswith(("int", "uint", "bool"))]
    what = f"a constant {integer[0]} tensor" if integer else "a constant"
    return (
        f"it returns {what} ({flat[0]:g} in every case): the result depends on neither the "
        "logits nor the targets (a placeholder such as torch.tensor(3), or a value computed "
        "once and reused)"
    )


def _integer_result(ev: Evidence) -> str | None:
    for r in ev.results:
        dtype = r.outcome.dtype or ""
        if r.outcome.error is None and dtype.startswith(("int", "uint", "bool")):
            if _constant_result(ev):
                return None  # said there, with the value
            return (
                f"it returns an integer tensor ({dtype}): a loss is floating point, and "
                "an integer result has no gradient (a .long() / .int() cast, or integer "
                "arithmetic on the targets?)"
            )
    return None


def _wrong_shape(ev: Evidence) -> str | None:
    for r in ev.returned:
        got, want = r.outcome.loss, r.expected_loss
        if got is None or got.size == want.size or r.case.logits.ndim != 2:
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
        s = r.case.spec
        return (s.batched and s.rows == 1) or s.classes == 1 or 1 in s.dims

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
    for r in ev.returned if ev.loss.name == "cross_entropy" else ():
        x, c = r.case.rows()[0], r.case.coeff
        q = softmax(x)
        lse = x.max(1) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1))
        loss_n, grad_n = _reduced(r.case, lse - (c * x).sum(1), q - c, ev.reduction)
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
    single = [r for r in ev.results if r.case.spec.row_count == 1]
    if not single or not all(r.passed for r in single) or not ev.failed:
        return None
    ordinary = [
        r
        for r in ev.failed
        if r.case.spec.scale < 100
        and r.case.spec.targets != "unnormalised"
        and r.case.spec.classes > 1  # C = 1 is another rule's business
        and r.outcome.failure != "died"
    ]
    if (
        not ordinary
        or _wrong_shape(ev)
        or _loss_factor(ev)
        or _grad_factor(ev)
        or _option_mistakes(ev)
    ):
        return None  # explained by another rule, said more precisely there
    if ev.target == TEACHER:
        return (
            "it passes for N = 1 and fails for N > 1: the rows interact; each row must be "
            "paired with its own teacher row, and a reduction over the batch come last"
        )
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


def _param_factors(spec: LossSpec) -> list[tuple[str, Callable[[int, int], float], str]]:
    """A parameter's value as a factor (a ``T²`` missing or doubled), for each parameter."""
    out = []
    for name, value in spec.values.items():
        if value is None or value in (0, 1) or value < 0:
            continue
        for label, v in ((f"1/{name}**2", value**-2), (f"1/{name}", 1 / value),
                         (name, value), (f"{name}**2", value**2)):
            why = (f"a factor {label.removeprefix('1/')} is missing" if label.startswith("1/")
                   else f"a factor {label} too many")
            out.append((label, lambda n, c, v=v: v, f"{why} ({name} = {value:g})"))
    return out


def _factors(ev: Evidence) -> list[tuple[str, Callable[[int, int], float], str]]:
    return _FACTORS + _param_factors(ev.loss)


def _factor_labels(ratio: float, n: int, c: int, factors=None) -> set[str]:
    """The labels whose value is ``ratio`` here (several where they coincide: ``1/N`` and
    ``1/T**2`` at N = 4, T = 2); the cases together tell them apart."""
    values = {label: f(n, c) for label, f, _ in factors or _FACTORS}
    return {label for label, v in values.items() if np.isclose(ratio, v, rtol=1e-5)}


def _named(label: str, ev: Evidence) -> str:
    """``N`` is the mean's divisor: with weights or ignored rows, say which."""
    if "N" not in label or "**" in label or label.startswith(tuple(ev.loss.values)):
        return label
    if ev.target == TEACHER and ev.options.mask:
        return label.replace("N", "N (the rows that count)")
    if ev.target == "index" and ev.options.weight:
        return label.replace("N", "sum(w[y])")
    if ev.target == "index" and ev.options.ignore_index is not None:
        return label.replace("N", "N (the rows not ignored)")
    return label


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
        # N: what the mean divides by (sum(w[y]) over the rows not ignored, with options)
        n, c = r.case.coefficients()[1], r.case.spec.classes
        if n > 1 and c > 1 and not np.isclose(n, c):  # only there can N and C be told apart
            labels = _factor_labels(ratio, n, c, _factors(ev))
            common = labels if common is None else common & labels
    if common and len(common) == 1:  # several left: no case told them apart
        label, _, why = next(f for f in _factors(ev) if f[0] in common)
        return f"the {what} is {_named(label, ev)} times the reference: {why}"
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
        derived = "q*sum(p) - p" if ev.loss == CROSS_ENTROPY else "gradient"
        return (
            "the loss is correct but the gradient is not: the hand-written backward "
            f"(or the returned gradient) does not match the derived {derived}"
        )
    if all(r.grad_ok and not r.loss_ok and r.outcome.grad is not None for r in returned):
        return "the gradient is correct but the loss is not: " + _offset(ev, returned[0])
    return None


def _offset(ev: Evidence, r: Result) -> str:
    """Describe a loss error that the gradient does not see."""
    got = r.outcome.loss.reshape(r.expected_loss.shape)
    diff = got - r.expected_loss
    moved = ev.rerun(r.case, logits=r.case.logits + 0.5)
    if moved.outcome.error is None and moved.outcome.loss is not None:
        diff2 = moved.outcome.loss.reshape(diff.shape) - moved.expected_loss
        if not np.allclose(diff, diff2, rtol=1e-6, atol=1e-9):
            invariant = np.allclose(moved.expected_loss, r.expected_loss, rtol=1e-9, atol=1e-9)
            why = " (softmax is shift invariant, the loss must be too)" if invariant else ""
            return (
                "the loss is wrong by a term that changes with a uniform shift of the "
                f"logits{why}"
            )
    if ev.loss.name != "cross_entropy":
        return (
            "it differs by a term that does not depend on the logits "
            f"(here {np.ravel(diff)[0]:.6g})"
        )
    c = r.case.coeff
    with np.errstate(all="ignore"):
        entropy_rows = -np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0).sum(1)
    entropy, _ = _reduced(r.case, entropy_rows, c, ev.reduction)
    if np.any(np.abs(entropy) > 1e-9) and np.allclose(diff, -entropy, rtol=1e-6, atol=1e-9):
        return (
            "it differs by exactly -H(p), the target entropy: this is KL(p||q), "
            "not the cross-entropy (same gradient, different value)"
        )
    return f"it differs by a term that does not depend on the logits (here {np.ravel(diff)[0]:.6g})"


# -- probes -----------------------------------------------------------------
def _eps_in_log(ev: Evidence) -> str | None:
    """A target class of tiny probability: the true loss is large, a clamp saturates.

    Only where the loss is right at an ordinary probability: a constant is no clamp.
    """
    if not ev.probes_2d:
        return None
    fair = ev.run(np.array([[0.0, 0.0, -2.0]]), ev.one_hot_target(np.array([2]), 3))
    if not _close(fair.outcome.loss, fair.expected_loss, rtol=1e-6):
        return None
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
        if x.ndim != 2 or x.shape[0] < 2 or r.loss_ok:
            continue
        with np.errstate(all="ignore"):
            rows = -(c * np.log(softmax(x, axis=0))).sum(1)
        loss0, _ = _reduced(r.case, rows, c, ev.reduction)
        if _close(r.outcome.loss, loss0):
            return (
                "the loss is what a softmax over the batch axis (dim=0) gives: the "
                "softmax must be taken over the class axis (dim=1 / dim=-1)"
            )
        return None
    return None


def _rows_mix(ev: Evidence) -> str | None:
    """Changing one row must not change the other rows' losses or gradients."""
    if not ev.probes_2d:
        return None
    case = build(Spec("rows", 4, 5, targets=_probe_targets(ev), seed=7, options=ev.options,
                      loss=ev.loss.name))
    a = ev.rerun(case)
    x = case.logits.copy()
    x[0] += np.array([2.0, -1.0, 0.5, 0.0, -3.0])
    b = ev.rerun(case, logits=x)
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
            "axis, or a batch statistic (a mean over the rows) enters each row's loss"
        )
    return None


def _row_order(ev: Evidence) -> str | None:
    """Permuting the rows (logits and targets together) must permute the result."""
    if not ev.probes_2d:
        return None
    case = build(Spec("perm", 5, 3, targets=_probe_targets(ev), seed=11, options=ev.options,
                      loss=ev.loss.name))
    perm = np.array([3, 0, 4, 1, 2])
    a = ev.rerun(case)
    b = ev.rerun(case, logits=case.logits[perm], target=case.target[perm])
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


# -- the options of nn.CrossEntropyLoss, computed the mistaken way -----------
@dataclass(frozen=True)
class Mistake:
    """A usual way to get an option wrong: the reference computed that way.

    ``group``: mistakes of one group exclude each other (two different
    denominators), so they are never tried as a pair.  ``alone``: tried on
    its own too (a constant factor is not: the factor rules say that).
    """

    name: str
    group: str
    applies: Callable[[Evidence], bool]
    sentence: str
    alone: bool = True


def _index_mean(ev: Evidence) -> bool:
    return ev.target == "index" and ev.reduction == "mean"


MISTAKES: list[Mistake] = [
    Mistake(
        "smoothing unweighted",
        "smoothing",
        lambda ev: ev.options.weight and bool(ev.options.label_smoothing),
        "the label-smoothing term is not multiplied by the class weights; PyTorch weights "
        "it too: c = (1-eps)*w[y]*onehot(y) + (eps/C)*w for class indices, "
        "c = w*((1-eps)*p + eps/C) for probabilities",
    ),
    Mistake(
        "ignored rows smoothed",
        "ignored",
        lambda ev: ev.target == "index"
        and ev.options.ignore_index is not None
        and bool(ev.options.label_smoothing),
        "ignored rows still pay the label-smoothing term (eps/C)*sum(w*(-log q)): the "
        "ignore_index mask must cover the smoothing term too, not only the target's term",
    ),
    Mistake(
        "mean over rows",
        "denominator",
        lambda ev: _index_mean(ev) and ev.options.weight,
        "the weighted mean divides by the number of rows; PyTorch divides by sum(w[y]) over "
        "the rows that are not ignored (a reduction='none' result then .mean() does this: "
        "divide its sum by weight[target].sum() instead)",
    ),
    Mistake(
        "mean over all rows",
        "denominator",
        lambda ev: _index_mean(ev) and ev.options.ignore_index is not None,
        "the mean divides by all rows, ignored ones included; it must divide by the rows "
        "that are not ignored (by sum(w[y]) over them, with class weights)",
    ),
    Mistake(
        "no smoothing",
        "smoothing",
        lambda ev: bool(ev.options.label_smoothing),
        "label_smoothing has no effect: it matches the loss without smoothing",
    ),
    Mistake(
        "no weights",
        "weights",
        lambda ev: ev.options.weight,
        "the class weights have no effect: it matches the unweighted loss",
    ),
    Mistake(
        "kdim reshape",
        "layout",
        lambda ev: "kdim" in ev.shapes,
        "for K-dimensional inputs it matches logits.reshape(-1, C) without moving the class "
        "axis last, so a row mixes classes and positions: use "
        "logits.movedim(1, -1).reshape(-1, C) (and the target flattened in the same order)",
    ),
    Mistake(
        "kdim last axis",
        "layout",
        lambda ev: "kdim" in ev.shapes and ev.loss.name == "cross_entropy",
        "for K-dimensional inputs it matches a softmax over the last axis: the classes are "
        "axis 1 of (N, C, d1, ...); take log_softmax(logits, dim=1)",
    ),
    # a teacher's row mask
    Mistake(
        "mask ignored",
        "mask",
        lambda ev: ev.target == TEACHER and ev.options.mask,
        "the mask has no effect: masked rows still count, in the sum and in the mean's "
        "divisor; multiply each row's loss by the mask and divide by mask.sum()",
    ),
    Mistake(
        "masked rows counted",
        "denominator",
        lambda ev: ev.target == TEACHER and ev.options.mask
        and ev.reduction not in ("sum", "none"),
        "masked rows add nothing but are still counted by the mean: it divides by all rows "
        "(len(mask)); divide by the rows that count, mask.sum()",
    ),
    Mistake(
        "teacher untransformed",
        "teacher",
        lambda ev: ev.target == TEACHER and has_transform(ev.loss, teacher=True),
        "the teacher's logits are not transformed as the student's are: the teacher's "
        "softmax must see the same map (teacher / temperature)",
    ),
]


def _param_mistakes(ev: Evidence) -> list[Mistake]:
    """For each parameter, its value not used: the loss at another of its declared values."""
    out = []
    for p in ev.loss.loss.params:
        value = ev.loss.values[p.name]
        if value is None:
            continue
        others = []
        for other in (p.off, p.default, *p.examples):
            if (other is not None or p.optional) and other != value and other not in others:
                others.append(other)
        for other in others:
            shown = "None" if other is None else f"{other:g}"
            out.append(Mistake(
                f"param {p.name}={shown}",
                f"param {p.name}",
                lambda ev: True,
                f"it matches {ev.loss.name} with {p.name}={shown}, not {p.name}={value:g}: "
                f"the value of {p.name} is not used (ignored, hard-coded, or a default "
                "that shadows the argument)",
            ))
    return out


def _factor_mistakes(ev: Evidence) -> list[Mistake]:
    """A parameter's value as a stray factor (``T**2`` missing), to pair with another mistake."""
    return [Mistake(f"factor {label}", "factor", lambda ev: True, f"{why}: the loss is {label} "
                    "times what it would be", alone=False)
            for label, _, why in _param_factors(ev.loss)]


def mistakes(ev: Evidence) -> list[Mistake]:
    """The mistakes that can be made with ``ev``'s loss, target and options."""
    found = [*MISTAKES, *_param_mistakes(ev), *_factor_mistakes(ev)]
    return [m for m in found if m.applies(ev)]


def mistaken(
    case: Case, reduction: str, names: frozenset[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(loss, grad)`` of ``case`` with the mistakes ``names`` made (see :func:`mistakes`).

    ``grad`` is None where only the loss is worked out (a softmax over the wrong axis).
    """
    factor = _stray_factor(case.spec.lossspec, names)
    if factor != 1.0:
        loss, grad = mistaken(case, reduction, frozenset(n for n in names
                                                         if not n.startswith("factor ")))
        return loss * factor, None if grad is None else grad * factor
    x, t, layout = case.rows()
    restore = layout.restore
    classes = layout.classes
    spec = _with_params(case.spec.lossspec, names)
    if "kdim reshape" in names and len(layout.shape) > 2:
        x = case.logits.reshape(-1, classes)
        t = case.target.reshape(-1) if case.kind == "index" else case.target.reshape(-1, classes)

        def restore(rows: np.ndarray) -> np.ndarray:
            return rows.reshape(layout.shape)

    if case.kind == TEACHER:
        loss, grad = _mistaken_teacher(case, spec, x, t, reduction, names)
        if reduction in spec.per_row:
            loss = loss.reshape(layout.positions)
        return loss, restore(grad)
    eps = 0.0 if "no smoothing" in names else case.smoothing
    w = case.weight if case.weight is not None and "no weights" not in names else None
    w = np.ones(classes) if w is None else w
    smooth = (eps / classes) * (np.ones(classes) if "smoothing unweighted" in names else w)
    valid = None
    if case.kind == "index":
        kept = np.ones(t.shape, bool) if case.ignore_index is None else t != case.ignore_index
        y = np.where(kept, t, 0)
        c = (1.0 - eps) * w[y][:, None] * np.eye(classes)[y] + smooth
        c[~kept] = smooth if "ignored rows smoothed" in names else 0.0
        if "ignored rows smoothed" not in names:
            valid = kept.astype(np.float64)
        denominator = float(w[y][kept].sum())
        if "mean over rows" in names:
            denominator = float(kept.sum())
        if "mean over all rows" in names:
            denominator = float(len(t))
    else:
        c = w * (1.0 - eps) * t + smooth
        denominator = float(len(t))
    if "kdim last axis" in names and len(layout.shape) > 2:
        return _last_axis_loss(case, c, reduction, denominator), None
    loss, grad = from_coefficients(x, c, reduction, denominator, spec, valid)
    if reduction == "none":
        loss = loss.reshape(layout.positions)
    return loss, restore(grad)


def _stray_factor(spec: LossSpec, names: frozenset[str]) -> float:
    """The product of the ``factor LABEL`` mistakes' values (1 without any)."""
    values = {f"factor {label}": f(0, 0) for label, f, _ in _param_factors(spec)}
    out = 1.0
    for name in names:
        out *= values.get(name, 1.0)
    return out


def _with_params(spec: LossSpec, names: frozenset[str]) -> LossSpec:
    """``spec`` with the parameter values that ``param NAME=VALUE`` mistakes use."""
    values = dict(spec.params)
    for name in names:
        if name.startswith("param "):
            key, _, shown = name.removeprefix("param ").partition("=")
            values[key] = None if shown == "None" else float(shown)
    order = [p.name for p in spec.loss.params]
    return LossSpec(spec.name, tuple((k, values[k]) for k in order if k in values))


def _mistaken_teacher(case: Case, spec: LossSpec, x: np.ndarray, t: np.ndarray,
                      reduction: str, names: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
    """A teacher's loss with its mask or its transform gotten wrong (the core, fed so)."""
    found = case.found(reduction)
    valid = found.valid
    counted, rows = float(np.sum(valid)), float(len(valid))
    denominators = dict(found.denominators)
    if "mask ignored" in names:
        valid = np.ones_like(valid)
    if names & {"mask ignored", "masked rows counted"} and counted > 0:
        # the mean's divisor counts every row: the right one scaled by rows / counted
        denominators = {k: None if d is None else d * rows / counted
                        for k, d in denominators.items()}
    if "teacher untransformed" in names:
        t = _untransformed(spec, t)
    return reduced(spec, x, t, reduction, denominators, valid)


def _untransformed(spec: LossSpec, t: np.ndarray) -> np.ndarray:
    """``φ⁻¹(t)``: the teacher's logits that the transform maps back onto ``t``."""
    import sympy as sp

    v = sp.Symbol("v", real=True)
    params = [p.symbol for p in spec.loss.params]
    numbers = [0.0 if spec.values[p.name] is None else float(spec.values[p.name])
               for p in spec.loss.params]
    inverse = sp.lambdify([v, *params], spec.loss.transform.inverse(v), "numpy")
    return np.broadcast_to(inverse(t, *numbers), np.shape(t))


def _last_axis_loss(case: Case, c: np.ndarray, reduction: str, denominator: float) -> np.ndarray:
    """The loss when log_softmax runs over the last axis of ``(N, C, d1, ...)``."""
    x = case.logits
    m = x.max(axis=-1, keepdims=True)
    logp = x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))
    logp_rows, _, layout = to_rows(logp, case.target, case.kind)
    rows = -(c * logp_rows).sum(axis=1)
    if reduction == "none":
        return rows.reshape(layout.positions)
    return np.asarray(rows.sum() if reduction == "sum" else rows.sum() / denominator)


def _option_mistakes(ev: Evidence) -> list[str]:
    """The mistake, or pair of mistakes, that explains every failure that returned a loss."""
    candidates = mistakes(ev)
    if not candidates or not ev.returned:
        return []
    combos = [(m,) for m in candidates if m.alone] + [
        pair for pair in itertools.combinations(candidates, 2) if pair[0].group != pair[1].group
    ]
    for combo in combos:
        names = frozenset(m.name for m in combo)
        if all(_explained(r, mistaken(r.case, ev.reduction, names)) for r in ev.returned):
            return [m.sentence for m in combo]
    return []


def _explained(r: Result, expected: tuple[np.ndarray, np.ndarray | None]) -> bool:
    loss_tol, grad_tol = tolerances(r.case, r.reduction)
    pairs = [(r.outcome.loss, expected[0], loss_tol)]
    if r.outcome.grad is not None and expected[1] is not None:
        pairs.append((r.outcome.grad, expected[1], grad_tol))
    for got, want, tol in pairs:
        if got is None or got.size != want.size:
            return False
        if not np.all(np.abs(got.reshape(want.shape) - want) <= 4 * tol):
            return False
    return True


def _probe_targets(ev: Evidence) -> str:
    if ev.target == TEACHER:
        return TEACHER
    return "index" if ev.target == "index" else "onehot"


def _close(got: np.ndarray | None, expected: np.ndarray, rtol: float = 1e-7) -> bool:
    if got is None or got.size != expected.size:
        return False
    g = got.reshape(expected.shape)
    return bool(np.all(np.isfinite(g))) and np.allclose(g, expected, rtol=rtol, atol=1e-10)


#: Tried in order; every rule that recognises something contributes a sentence.
RULES: list[Rule] = [
    _always_raises,
    _died,
    _wrong_return_type,
    _constant_result,
    _integer_result,
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

#: rule → the losses it runs for: ``any``, ``classes`` (class targets) or ``cross_entropy``;
#: a rule not named here runs for any loss
SCOPES: dict[Rule, str] = {
    _unnormalised_only: "classes",
    _eps_in_log: "classes",
    _batch_axis_softmax: "cross_entropy",
}

#: what each scope's rules (and mistakes) look for, for the report
_SCOPE_WORDS = {
    "any": "the generic ones (what it returns, nan/inf, shapes, constant factors such as "
           "sum vs mean and the sign, rows that interact, a parameter's value not used)",
    "classes": "the class targets' (an eps in the log, targets that do not sum to one, "
               "weight, ignore_index and label_smoothing gotten wrong)",
    "teacher": "the teacher's (its mask, its temperature)",
    "cross_entropy": "cross-entropy's own (its formula in p, KL instead of cross-entropy, "
                     "a softmax over the batch axis)",
}


def _applies(scope_name: str, spec: LossSpec) -> bool:
    if scope_name == "classes":
        return not spec.teacher
    if scope_name == "teacher":
        return spec.teacher
    if scope_name == "cross_entropy":
        return spec.name == "cross_entropy"
    return True


def scope(spec: LossSpec, detail: bool = False) -> str:
    """Which diagnoses apply to ``spec``'s loss, in words (``detail``: what each looks for)."""

    def words(k: str) -> str:
        return _SCOPE_WORDS[k] if detail else _SCOPE_WORDS[k].split(" (")[0]

    used = [words(k) for k in _SCOPE_WORDS if _applies(k, spec)]
    unused = [k for k in ("classes", "cross_entropy") if not _applies(k, spec)]
    text = "diagnoses: " + ", ".join(used[:-1]) + (" and " if len(used) > 1 else "") + used[-1]
    if unused:
        text += "; " + " and ".join(_SCOPE_WORDS[k].split(" (")[0] for k in unused)
        text += " do not apply"
    return text


def diagnose(ev: Evidence) -> list[str]:
    """Every sentence the rules that apply to ``ev``'s loss find for its failures."""
    found = []
    try:
        found += _option_mistakes(ev)
    except Exception:  # as below: a diagnosis never turns into a traceback
        pass
    for rule in RULES:
        if not _applies(SCOPES.get(rule, "any"), ev.loss):
            continue
        try:
            text = rule(ev)
        except Exception:  # a probe must never turn a report into a traceback
            text = None
        if text and text not in found:
            found.append(text)
    return found


__all__ = ["MISTAKES", "RULES", "SCOPES", "Evidence", "Mistake", "diagnose", "mistaken",
           "mistakes", "scope"]
