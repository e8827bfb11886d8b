"""Parity of a generated module with ``torch.nn.functional.cross_entropy``.

One comparison helper, :func:`check_module`, and one table of cases,
:data:`CASES`.  The reference is always torch in float64 on the same inputs
(rounded to the case's dtype first): the loss from ``F.cross_entropy`` and the
gradient from ``torch.autograd.grad`` with a random upstream gradient.  The
module under test runs in the case's dtype.  Modules are recognised by their
API: a NumPy module has ``cross_entropy_with_grad``; a torch module (and a
Triton one, same API) takes tensors and is differentiated by autograd.

>>> case = Case("doc", (3, 5))
>>> case.tolerance
1e-09
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import ModuleType

import numpy as np

#: per-dtype tolerance (relative and absolute) on loss and gradient
TOLERANCES: dict[str, float] = {
    "float64": 1e-9,
    "float32": 2e-4,
    "float16": 1e-2,
    "bfloat16": 4e-2,
}


@dataclass(frozen=True)
class Case:
    """One row of the parity table.

    ``target``: ``"index"`` or ``"probability"``; ``ignore``: how many targets
    are set to ``ignore_index`` (``"none"``, ``"some"``, ``"all"``);
    ``ignore_index``: its value (may be a valid class); ``normalised``: do
    probability rows sum to one; ``magnitude``: logits' scale.
    """

    name: str
    shape: tuple[int, ...]
    target: str = "index"
    weight: bool = False
    ignore: str = "none"
    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    normalised: bool = True
    dtype: str = "float64"
    magnitude: float = 3.0
    seed: int = 0
    options: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def tolerance(self) -> float:
        return TOLERANCES[self.dtype]

    def with_(self, **changes) -> Case:
        return replace(self, **changes)


@dataclass(frozen=True)
class Result:
    case: Case
    loss_error: float
    grad_error: float

    @property
    def ok(self) -> bool:
        return self.loss_error <= 1.0 and self.grad_error <= 1.0  # errors in units of tol


def _case_table() -> list[Case]:
    cases: list[Case] = []
    shapes = {"1d": (7,), "2d": (6, 5), "kdim": (3, 4, 2, 3)}
    for dtype in ("float64", "float32"):
        for sname, shape in shapes.items():
            for reduction in ("mean", "sum", "none"):
                base = Case(f"{sname}-{reduction}-{dtype}", shape, reduction=reduction,
                            dtype=dtype, seed=len(cases))
                cases += [
                    base.with_(name=base.name + "-index"),
                    base.with_(name=base.name + "-index-weight-ignore-smooth", weight=True,
                               ignore="some", label_smoothing=0.2),
                    base.with_(name=base.name + "-prob", target="probability"),
                    base.with_(name=base.name + "-prob-unnormalised-weight-smooth",
                               target="probability", normalised=False, weight=True,
                               label_smoothing=0.1),
                ]
    combos = [
        Case("ignore-valid-class", (8, 4), ignore="some", ignore_index=1),
        Case("ignore-valid-class-weight", (8, 4), ignore="some", ignore_index=0, weight=True),
        Case("ignore-all-mean", (5, 3), ignore="all"),
        Case("ignore-all-sum", (5, 3), ignore="all", reduction="sum"),
        Case("ignore-all-smooth", (5, 3), ignore="all", label_smoothing=0.3, weight=True),
        Case("ignore-negative", (6, 4), ignore="some", ignore_index=-1),
        Case("smooth-only", (6, 9), label_smoothing=0.25),
        Case("smooth-one", (6, 9), label_smoothing=1.0, weight=True),
        Case("weight-only", (6, 9), weight=True),
        Case("weight-ignore-none", (6, 9), weight=True, ignore="some", reduction="none"),
        Case("weight-ignore-sum", (6, 9), weight=True, ignore="some", reduction="sum"),
        Case("smooth-ignore-mean", (6, 9), ignore="some", label_smoothing=0.1),
        Case("prob-normalised-weight", (6, 9), target="probability", weight=True),
        Case("prob-smooth", (6, 9), target="probability", label_smoothing=0.4),
        Case("prob-unnormalised", (6, 9), target="probability", normalised=False),
        Case("prob-kdim-weight-smooth", (2, 5, 3, 2), target="probability", weight=True,
             label_smoothing=0.2, normalised=False),
        Case("kdim-weight-ignore-smooth", (2, 5, 3, 2), weight=True, ignore="some",
             label_smoothing=0.2),
        Case("kdim-k1", (3, 4, 5), weight=True, ignore="some"),
        Case("kdim-slab", (2, 5, 9, 8), weight=True, ignore="some", label_smoothing=0.1),
        Case("kdim-slab-prob-none", (2, 5, 72), target="probability", weight=True,
             reduction="none", label_smoothing=0.3, normalised=False),
        Case("single-class", (4, 1)),
        Case("empty-batch-sum", (0, 4), reduction="sum"),
        Case("empty-batch-none", (0, 4), reduction="none"),
        Case("wide", (3, 3000), weight=True, label_smoothing=0.1, ignore="some"),
        Case("wide-kdim", (2, 700, 40), label_smoothing=0.1),
    ]
    for magnitude in (1e4,):
        for dtype in ("float64", "float32"):
            for target in ("index", "probability"):
                combos.append(Case(f"extreme-{target}-{dtype}", (5, 11), target=target,
                                   dtype=dtype, magnitude=magnitude, weight=True,
                                   label_smoothing=0.1))
        combos.append(Case("extreme-index-none-float32", (5, 11), reduction="none",
                           dtype="float32", magnitude=magnitude))
    for i, c in enumerate(combos):
        cases.append(c.with_(seed=1000 + i))
    return cases


#: the parity table: every option and their combinations, for both modules
CASES: tuple[Case, ...] = tuple(_case_table())

#: extra cases only the torch backend supports (half precision inputs)
HALF_CASES: tuple[Case, ...] = tuple(
    Case(f"{dtype}-{kind}-{reduction}", (6, 33), target=kind, dtype=dtype,
         reduction=reduction, weight=True, label_smoothing=0.1,
         ignore="some" if kind == "index" else "none", seed=2000 + i)
    for i, (dtype, kind, reduction) in enumerate(
        (d, k, r) for d in ("float16", "bfloat16") for k in ("index", "probability")
        for r in ("mean", "none")
    )
)


def make_inputs(case: Case):
    """NumPy float64 arrays (logits, target, weight, upstream gradient) for ``case``."""
    rng = np.random.default_rng(case.seed)
    shape = case.shape
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    x = rng.standard_normal(shape) * case.magnitude
    batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
    if case.target == "index":
        target = rng.integers(0, n_classes, size=batch)
        if case.ignore == "all":
            target = np.full(batch, case.ignore_index)
        elif case.ignore == "some":
            mask = rng.random(batch) < 0.4
            target = np.where(mask, case.ignore_index, target)
    else:
        target = rng.random(shape)
        if case.normalised:
            target = target / target.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
        else:
            target = target * 2.0
    weight = rng.random(n_classes) + 0.2 if case.weight else None
    loss_shape = batch if case.reduction == "none" else ()
    grad_output = rng.standard_normal(loss_shape) if case.reduction == "none" else 1.7
    return x, target, weight, grad_output


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _rounded(case: Case, x, target, weight):
    """Inputs rounded to the case's dtype, back in float64 (the reference's inputs)."""
    import torch

    dt = _torch_dtype(case.dtype)
    xr = torch.tensor(x).to(dt).double()
    tr = torch.tensor(target)
    if case.target == "probability":
        tr = tr.to(dt).double()
    wr = None if weight is None else torch.tensor(weight).to(dt).double()
    return xr, tr, wr


def reference(case: Case, x, target, weight, grad_output):
    """torch float64: the loss and ``grad_output``-weighted gradient."""
    import torch
    import torch.nn.functional as F

    xr, tr, wr = _rounded(case, x, target, weight)
    xr.requires_grad_(True)
    loss = F.cross_entropy(xr, tr, weight=wr, ignore_index=case.ignore_index,
                           reduction=case.reduction, label_smoothing=case.label_smoothing)
    go = torch.as_tensor(grad_output, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, xr, grad_outputs=go)
    return loss.detach().numpy(), grad.numpy()


def _error(actual, expected, tol: float) -> float:
    """Worst ``|a − e| / (tol · (1 + |e|))``; NaN where torch has NaN is a match."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        return math.inf
    a, e = a[~nan_e], e[~nan_e]
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - e) / (tol * (1.0 + np.abs(e)))))


def run_module(module: ModuleType, case: Case, x, target, weight, grad_output):
    """The module's loss and ``grad_output``-weighted gradient, as float64 NumPy."""
    options = dict(ignore_index=case.ignore_index, reduction=case.reduction,
                   label_smoothing=case.label_smoothing)
    if hasattr(module, "cross_entropy_with_grad"):  # the NumPy API
        dt = np.dtype(case.dtype)
        xa = x.astype(dt)
        ta = target.astype(dt) if case.target == "probability" else target
        wa = None if weight is None else weight.astype(dt)
        loss = module.cross_entropy(xa, ta, weight=wa, **options)
        grad = module.cross_entropy_backward(xa, ta, grad_output=grad_output, weight=wa,
                                             **options)
        loss2, grad1 = module.cross_entropy_with_grad(xa, ta, weight=wa, **options)
        _same(loss, loss2, "cross_entropy and cross_entropy_with_grad disagree")
        if case.reduction != "none":  # grad1 is for an upstream gradient of one
            _same(grad1 * np.asarray(grad_output, dtype=dt), grad,
                  "cross_entropy_backward and cross_entropy_with_grad disagree",
                  max(case.tolerance, 1e-6))
        if np.asarray(loss).dtype != dt or grad.dtype != dt:
            raise AssertionError(f"dtype {loss.dtype}/{grad.dtype}, expected {dt}")
        return np.asarray(loss, dtype=np.float64), grad.astype(np.float64)
    import torch

    dt = _torch_dtype(case.dtype)
    xt = torch.tensor(x).to(dt).requires_grad_(True)
    tt = torch.tensor(target)
    if case.target == "probability":
        tt = tt.to(dt)
    wt = None if weight is None else torch.tensor(weight).to(dt)
    loss = module.cross_entropy(xt, tt, weight=wt, **options)
    go = torch.as_tensor(grad_output, dtype=dt)
    (grad,) = torch.autograd.grad(loss, xt, grad_outputs=go)
    if loss.dtype != dt or grad.dtype != dt:
        raise AssertionError(f"dtype {loss.dtype}/{grad.dtype}, expected {dt}")
    module_loss = module.CrossEntropyLoss(weight=wt, **options)(xt.detach(), tt)
    _same(loss.detach().double().numpy(), module_loss.double().numpy(),
          "CrossEntropyLoss and cross_entropy disagree", max(case.tolerance, 1e-6))
    return loss.detach().double().numpy(), grad.double().numpy()


def _same(a, b, message: str, tol: float = 1e-6) -> None:
    if not np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol,
                       atol=tol, equal_nan=True):
        raise AssertionError(f"{message}: {a} vs {b}")


def check_module(module: ModuleType, case: Case) -> Result:
    """Compare ``module`` with torch float64 on ``case``; errors in units of tolerance."""
    x, target, weight, grad_output = make_inputs(case)
    want_loss, want_grad = reference(case, x, target, weight, grad_output)
    loss, grad = run_module(module, case, x, target, weight, grad_output)
    return Result(case, _error(loss, want_loss, case.tolerance),
                  _error(grad, want_grad, case.tolerance))


def assert_parity(module: ModuleType, case: Case) -> None:
    """:func:`check_module`, raising ``AssertionError`` with the numbers on a mismatch."""
    result = check_module(module, case)
    if not result.ok:
        raise AssertionError(
            f"{case.name}: loss error {result.loss_error:.3g}, grad error "
            f"{result.grad_error:.3g} (in units of tolerance {case.tolerance:g})"
        )
