"""Parity of every loss's generated modules with the torch autograd of its definition.

One case table per loss (:func:`loss_cases`), built from its declaration:
the target model's kinds and options, every reduction, each parameter's
default and its declared ``examples``, shapes ``(C)``, ``(N, C)`` and
``(N, C, d…)``, float64 and float32 (half precision for torch), extreme
logits.  The reference of every comparison is
:func:`symce.verify.reference.definition` (torch float64 autograd of the
declared formula) on the inputs rounded to the case's dtype;
:func:`check_derivation` compares the derivation's own printed reference
with it too.

>>> cases = loss_cases("focal_loss")
>>> len(cases) > 50, cases[0].loss
(True, 'focal_loss')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

from symce.losses import get_loss
from symce.verify.reference import Inputs, Outcome, definition, derived

#: per-dtype tolerance (relative and absolute, in units of 1 + |reference|)
TOLERANCES: dict[str, float] = {
    "float64": 1e-9,
    "float32": 2e-4,
    "float16": 1e-2,
    "bfloat16": 4e-2,
}


@dataclass(frozen=True)
class LossCase:
    """One row of a loss's parity table.

    ``target``: ``index``, ``probability`` or ``teacher``; ``ignore``: how many
    rows are masked out (``none``, ``some``, ``all``); ``params``: values of the
    loss's parameters (the rest at their defaults); ``weight``: class weights
    drawn; ``normalised``: probability rows sum to one.
    """

    loss: str
    name: str
    shape: tuple[int, ...]
    target: str
    reduction: str
    dtype: str = "float64"
    weight: bool = False
    label_smoothing: float = 0.0
    ignore: str = "none"
    params: tuple[tuple[str, Any], ...] = ()
    normalised: bool = True
    magnitude: float = 3.0
    seed: int = 0

    @property
    def tolerance(self) -> float:
        return TOLERANCES[self.dtype]


@dataclass(frozen=True)
class LossResult:
    case: LossCase
    loss_error: float
    grad_error: float
    teacher_error: float = 0.0

    @property
    def ok(self) -> bool:
        return max(self.loss_error, self.grad_error, self.teacher_error) <= 1.0


def _param_settings(loss) -> list[tuple[tuple[str, Any], ...]]:
    """The defaults, then each parameter's examples one at a time, then all together."""
    settings: list[tuple[tuple[str, Any], ...]] = [()]
    for p in loss.params:
        settings += [((p.name, v),) for v in p.examples]
    together = tuple((p.name, p.examples[-1]) for p in loss.params if p.examples)
    if len(together) > 1:
        settings.append(together)
    return settings


def loss_cases(loss_name: str,
               dtypes: tuple[str, ...] = ("float64", "float32")) -> tuple[LossCase, ...]:
    """The parity table of ``loss_name`` (every option of its target model, every
    reduction, its parameters' examples)."""
    loss = get_loss(loss_name)
    model = loss.targets
    shapes = {"1d": (7,), "2d": (6, 5), "kdim": (3, 4, 2, 3)}
    cases: list[LossCase] = []
    for dtype in dtypes:
        for sname, shape in shapes.items():
            for reduction in model.reductions:
                for params in _param_settings(loss):
                    tag = ",".join(f"{k}={v}" for k, v in params) or "defaults"
                    base = LossCase(loss_name, f"{sname}-{reduction}-{tag}", shape, "",
                                    reduction, dtype=dtype, params=params, seed=len(cases))
                    if model.name == "teacher":
                        cases.append(replace(base, name=base.name + "-teacher",
                                             target="teacher"))
                        cases.append(replace(base, name=base.name + "-teacher-mask",
                                             target="teacher", ignore="some"))
                        continue
                    cases += [
                        replace(base, name=base.name + "-index", target="index"),
                        replace(base, name=base.name + "-index-weight-ignore-smooth",
                                target="index", weight=True, ignore="some",
                                label_smoothing=0.2),
                        replace(base, name=base.name + "-prob", target="probability"),
                        replace(base, name=base.name + "-prob-unnormalised-weight-smooth",
                                target="probability", weight=True, label_smoothing=0.1,
                                normalised=False),
                    ]
    extreme = tuple((p.name, p.examples[-1]) for p in loss.params if p.examples)
    for dtype in dtypes:
        for target in model.kinds:
            cases.append(LossCase(loss_name, f"extreme-{target}-{dtype}", (5, 11), target,
                                  model.default_reduction, dtype=dtype, magnitude=1e4,
                                  weight=model.name == "classes", params=extreme,
                                  label_smoothing=0.1 if model.name == "classes" else 0.0,
                                  seed=5000 + len(cases)))
    if model.name == "classes":
        cases.append(LossCase(loss_name, "ignore-all-mean", (5, 3), "index", "mean",
                              ignore="all", seed=7001))
        cases.append(LossCase(loss_name, "wide-kdim", (2, 70, 40), "index", "mean",
                              weight=True, ignore="some", label_smoothing=0.1, seed=7002))
        cases.append(LossCase(loss_name, "empty-batch-sum", (0, 4), "index", "sum", seed=7003))
    else:
        cases.append(LossCase(loss_name, "mask-all", (5, 3), "teacher", "batchmean",
                              ignore="all", seed=7001))
    return tuple(cases)


def half_cases(loss_name: str) -> tuple[LossCase, ...]:
    """Half-precision rows for the torch and Triton modules."""
    loss = get_loss(loss_name)
    out = []
    for dtype in ("float16", "bfloat16"):
        for kind in loss.targets.kinds:
            for reduction in (loss.targets.default_reduction, "none"):
                out.append(LossCase(loss_name, f"{dtype}-{kind}-{reduction}", (6, 33), kind,
                                    reduction, dtype=dtype,
                                    weight=loss.targets.name == "classes",
                                    label_smoothing=0.1 if loss.targets.name == "classes"
                                    else 0.0,
                                    ignore="some" if kind != "probability" else "none",
                                    seed=9000 + len(out)))
    return tuple(out)


def make_inputs(case: LossCase) -> Inputs:
    """Float64 NumPy inputs for ``case`` (values exactly representable in its dtype)."""
    rng = np.random.default_rng(case.seed)
    shape = case.shape
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    x = _rounded(rng.standard_normal(shape) * case.magnitude, case.dtype)
    batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
    mask = rng.random(batch) < 0.4
    if case.ignore == "all":
        mask = np.ones(batch, dtype=bool)
    elif case.ignore == "none":
        mask = np.zeros(batch, dtype=bool)
    options: dict[str, Any] = {"reduction": case.reduction, **dict(case.params)}
    if case.target == "teacher":
        target = _rounded(rng.standard_normal(shape) * case.magnitude / 2, case.dtype)
        options["mask"] = None if case.ignore == "none" else ~mask
    elif case.target == "index":
        target = rng.integers(0, n_classes, size=batch)
        target = np.where(mask, -100, target)
        options["ignore_index"] = -100
    else:
        target = rng.random(shape)
        if case.normalised:
            target = target / target.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
        else:
            target = target * 2.0
        target = _rounded(target, case.dtype)
    if get_loss(case.loss).targets.name == "classes":
        options["weight"] = (_rounded(rng.random(n_classes) + 0.2, case.dtype)
                             if case.weight else None)
        options["label_smoothing"] = case.label_smoothing
    loss_shape = batch if case.reduction in get_loss(case.loss).targets.per_row_reductions else ()
    grad_output = rng.standard_normal(loss_shape) if loss_shape else 1.7
    return Inputs(x, target, options, grad_output)


def _rounded(a: np.ndarray, dtype: str) -> np.ndarray:
    import torch

    return torch.tensor(np.asarray(a, dtype=np.float64)).to(getattr(torch, dtype)).double().numpy()


def error(actual, expected, tol: float) -> float:
    """Worst ``|a − e| / (tol · (1 + |e|))``; NaN where the reference has NaN is a match."""
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


def _compare(case: LossCase, got: Outcome, want: Outcome) -> LossResult:
    tol = case.tolerance
    teacher = 0.0 if got.grad_teacher is None else error(got.grad_teacher, want.grad_teacher, tol)
    return LossResult(case, error(got.loss, want.loss, tol), error(got.grad, want.grad, tol),
                      teacher)


def check_derivation(case: LossCase) -> LossResult:
    """The derivation's printed reference against the definition's autograd, float64."""
    inputs = make_inputs(case)
    exact = replace(case, dtype="float64")
    return _compare(exact, derived(case.loss, inputs), definition(case.loss, inputs))


def run_module(module: ModuleType, case: LossCase, inputs: Inputs) -> Outcome:
    """The module's loss and gradients on ``inputs`` in the case's dtype, as float64."""
    loss = get_loss(case.loss)
    name = loss.name
    options = dict(inputs.options)
    if hasattr(module, f"{name}_with_grad"):  # the NumPy API
        dt = np.dtype(case.dtype)
        x = inputs.input.astype(dt)
        target = inputs.target.astype(dt) if inputs.target.dtype.kind == "f" else inputs.target
        if options.get("weight") is not None:
            options["weight"] = options["weight"].astype(dt)
        value = getattr(module, name)(x, target, **options)
        grad = getattr(module, f"{name}_backward")(x, target, grad_output=inputs.grad_output,
                                                  **options)
        return Outcome(np.asarray(value, dtype=np.float64), {}, np.asarray(grad, np.float64))
    import torch

    dt = getattr(torch, case.dtype)
    device = getattr(module, "_TEST_DEVICE", "cpu")
    x = torch.tensor(inputs.input).to(device=device, dtype=dt).requires_grad_(True)
    teacher_model = loss.targets.name == "teacher"
    if inputs.target.dtype.kind == "f":
        target = torch.tensor(inputs.target).to(device=device, dtype=dt)
        if teacher_model:
            target.requires_grad_(True)
    else:
        target = torch.tensor(inputs.target, device=device)
    if options.get("weight") is not None:
        options["weight"] = torch.tensor(options["weight"]).to(device=device, dtype=dt)
    if options.get("mask") is not None:
        options["mask"] = torch.tensor(options["mask"], device=device)
    value = getattr(module, name)(x, target, **options)
    go = torch.as_tensor(np.asarray(inputs.grad_output), dtype=torch.float64).to(device=device,
                                                                                dtype=value.dtype)
    wrt = [x, target] if teacher_model else [x]
    grads = torch.autograd.grad(value, wrt, grad_outputs=go)
    return Outcome(value.detach().double().cpu().numpy(), {},
                   grads[0].double().cpu().numpy(),
                   grads[1].double().cpu().numpy() if teacher_model else None)


def check_module(module: ModuleType, case: LossCase) -> LossResult:
    """``module`` against torch float64 autograd of the loss's definition."""
    inputs = make_inputs(case)
    return _compare(case, run_module(module, case, inputs), definition(case.loss, inputs))


__all__ = ["LossCase", "LossResult", "TOLERANCES", "check_derivation", "check_module",
           "half_cases", "loss_cases", "make_inputs", "run_module"]
