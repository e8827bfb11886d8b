"""Assertions for your own test suite: your loss against the derived reference.

>>> import torch.nn.functional as F
>>> from symce.testing import assert_cross_entropy, assert_gradient_formula, assert_loss
>>> assert_cross_entropy(F.cross_entropy, target="index", reduction="mean")
<Report cross_entropy: PASS, 15/15 cases pass>
>>> def distill(logits, teacher, temperature=1.0, mask=None):
...     T = temperature
...     rows = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(teacher / T, 1),
...                     reduction="none", log_target=True).sum(1)
...     keep = torch.ones_like(rows) if mask is None else mask.to(rows.dtype)
...     return T**2 * (rows * keep).sum() / keep.sum()
>>> import torch
>>> assert_loss(distill, "kl_distillation", temperature=2.0)
<Report distill: PASS, 19/19 cases pass>
>>> assert_gradient_formula("q - p", assume="normalised").status
'proved'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

from symce.checker.adapter import as_callable
from symce.checker.check import Report, check_implementation
from symce.checker.formula import FormulaVerdict, check_gradient_formula
from symce.checker.runner import DEFAULT_TIMEOUT
from symce.losses import get_loss

__all__ = ["assert_cross_entropy", "assert_gradient_formula", "assert_loss"]


def assert_cross_entropy(
    fn: Callable[..., Any] | str,
    target: str | None = "index",
    reduction: str = "mean",
    backend: str = "torch",
    seed: int = 0,
    *,
    weight: str | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | None = None,
    shapes: Sequence[str] | str = ("2d",),
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Report:
    """Run ``fn(logits, target, **options)`` through the ``symce check`` battery.

    ``fn`` is a function, an ``nn.Module`` class (built with no arguments) or
    instance, or ``"PATH.py:NAME"``; ``target`` is ``"index"``, ``"probs"``,
    ``"onehot"`` or ``None`` (told from a first call).  The options of
    ``nn.CrossEntropyLoss`` to check are passed to ``fn`` as keyword arguments,
    only those given (``weight="random"``: each case draws class weights and
    passes ``weight=w``; ``ignore_index=N``; ``label_smoothing=EPS``);
    ``shapes`` adds ``"kdim"`` ``(N, C, d1, …)`` and ``"unbatched"`` ``(C,)``
    inputs to ``"2d"`` ``(N, C)`` (or ``"all"``).

    Each call has ``timeout`` seconds.  A function object runs in a forked
    worker process on Linux (when CUDA is not initialised in this process),
    elsewhere in a thread that is abandoned, still running, if it overruns;
    ``"PATH.py:NAME"`` is imported in a fresh worker process; ``timeout=None``
    calls ``fn`` here, with no limit.  A call that overruns fails the check
    and stops the battery.

    Raises ``AssertionError`` carrying the same report as ``symce check``
    (cases, minimal counterexample, diagnosis) when any case fails; returns
    the report otherwise.
    """
    report = check_implementation(
        fn if isinstance(fn, str) else as_callable(fn),
        target=target,
        reduction=reduction,
        backend=backend,
        seed=seed,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        shapes=shapes,
        timeout=timeout,
    )
    if not report.passed:
        raise AssertionError("\n" + str(report))
    return report


def assert_loss(
    fn: Callable[..., Any] | str,
    loss: str,
    target: str | None = None,
    reduction: str | None = None,
    backend: str = "torch",
    seed: int = 0,
    *,
    shapes: Sequence[str] | str = ("2d",),
    timeout: float | None = DEFAULT_TIMEOUT,
    **params_and_options: Any,
) -> Report:
    """Run ``fn`` through the ``symce check`` battery of the registered ``loss``.

    ``fn`` is called as the loss's generated functions are:
    ``fn(input, target, **kwargs)`` (for a teacher model such as
    ``kl_distillation`` the target is the teacher's logits:
    ``fn(logits, teacher, temperature=T, mask=m)``).  The other keyword
    arguments are the loss's parameters (``gamma=0.5``, ``temperature=2.0``,
    ``z_loss=1e-4``; checked against their declared ranges, the defaults for
    the rest) and its target model's options (``weight="random"``,
    ``ignore_index=N``, ``label_smoothing=EPS``; ``mask=False`` leaves out a
    teacher's masked cases), passed to ``fn`` only where given.  ``target``,
    ``reduction`` (default: the loss's), ``backend``, ``seed``, ``shapes`` and
    ``timeout`` are as in :func:`assert_cross_entropy`.

    Raises ``AssertionError`` with the report (cases, minimal counterexample,
    the diagnoses that apply to the loss) when any case fails; returns the
    report otherwise.
    """
    names = {p.name for p in get_loss(loss).params}
    params = {k: v for k, v in params_and_options.items() if k in names}
    options = {k: v for k, v in params_and_options.items() if k not in names}
    unknown = sorted(set(options) - {"weight", "ignore_index", "label_smoothing", "mask"})
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise TypeError(
            f"assert_loss got an unexpected keyword argument {unknown[0]!r} (the parameters "
            f"of {loss}: {known}; options: weight, ignore_index, label_smoothing, mask)"
        )
    report = check_implementation(
        fn if isinstance(fn, str) else as_callable(fn),
        target=target,
        reduction=reduction,
        backend=backend,
        seed=seed,
        loss=loss,
        params=params,
        shapes=shapes,
        timeout=timeout,
        **options,
    )
    if not report.passed:
        raise AssertionError("\n" + str(report))
    return report


def assert_gradient_formula(
    expr: str | sp.Basic,
    loss: str = "cross_entropy",
    n: int | None = None,
    assume: Sequence[str] | str = (),
) -> FormulaVerdict:
    """Prove a claimed gradient equal to the derived one, or fail with a counterexample.

    ``expr`` is a SymPy expression or a string in the documented symbols
    (``q`` softmax, ``p`` targets, ``x`` logits, ``n`` or ``C`` classes,
    ``sum(...)`` over classes), e.g. ``"q - p"`` or ``"q*sum(p) - p"``.
    ``assume`` names the assumptions the claim may use (``"normalised"``:
    ``sum(p) = 1``).  ``n=None`` proves it for every number of classes.

    Passes only when SymPy proves the equality; raises ``AssertionError`` with
    a concrete point where the two differ, or saying that it could be neither
    proved nor refuted.
    """
    verdict = check_gradient_formula(expr, loss=loss, n=n, assume=assume)
    if verdict.status != "proved":
        raise AssertionError("\n" + str(verdict))
    return verdict
