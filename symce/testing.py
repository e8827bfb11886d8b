"""Assertions for your own test suite: your loss against the derived reference.

>>> import torch.nn.functional as F
>>> from symce.testing import assert_cross_entropy, assert_gradient_formula
>>> assert_cross_entropy(F.cross_entropy, target="index", reduction="mean")
<Report cross_entropy: PASS, 15/15 cases pass>
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

__all__ = ["assert_cross_entropy", "assert_gradient_formula"]


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
