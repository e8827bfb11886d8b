"""Run a user's implementation through the battery and put the report together."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from symce.checker.adapter import BACKENDS, call
from symce.checker.battery import Result, Spec, battery, build, evaluate, shrink
from symce.checker.diagnosis import Evidence, diagnose
from symce.checker.reference import REDUCTIONS, TARGETS


@dataclass(repr=False)
class Report:
    """Everything ``symce check`` prints; ``str(report)`` is that text."""

    label: str
    backend: str
    target: str
    reduction: str
    target_note: str | None
    results: list[Result]
    counterexample: Result | None = None
    diagnosis: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __repr__(self) -> str:
        passed = sum(r.passed for r in self.results)
        verdict = "PASS" if self.passed else "FAIL"
        return f"<Report {self.label}: {verdict}, {passed}/{len(self.results)} cases pass>"

    def __str__(self) -> str:
        from symce.checker.report import format_report

        return format_report(self)


def detect_target(fn: Callable[..., Any], backend: str, reduction: str) -> tuple[str, str]:
    """Tell the target kind from first calls; say what was assumed and why."""
    index = build(Spec("detect", 3, 5, targets="index"))
    first = call(fn, backend, index.logits, index.target, "float64")
    if first.error is None:
        return "index", "assumed: the first call with class-index targets [N] succeeded"
    soft = evaluate(fn, backend, build(Spec("detect", 3, 5, targets="normalised")), reduction)
    if soft.outcome.error is not None:
        return "index", (
            "assumed, but it raised with class-index and with probability "
            "targets alike; pass --target"
        )
    if soft.loss_ok:
        return "probs", (
            "assumed: class-index targets were refused, probability targets [N, C] accepted"
        )
    onehot = evaluate(fn, backend, build(Spec("detect", 3, 5, targets="onehot")), reduction)
    if onehot.loss_ok:
        return "onehot", (
            "assumed: [N, C] targets accepted, but only one-hot ones match "
            "the reference; pass --target probs to check soft targets"
        )
    return "probs", "assumed: class-index targets were refused, [N, C] targets accepted"


def check_implementation(
    fn: Callable[..., Any],
    target: str | None = None,
    reduction: str = "mean",
    backend: str = "torch",
    label: str | None = None,
    seed: int = 0,
) -> Report:
    """Compare ``fn(logits, target)`` with the derived reference over the battery.

    ``seed`` draws different random shapes and values (0 is what CI and the
    examples use, so reports are reproducible).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if target is not None and target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    with _one_thread():
        return _check(fn, target, reduction, backend, label, seed)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The battery's tensors are tiny: thread start-up and contention would dominate."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check(
    fn: Callable[..., Any],
    target: str | None,
    reduction: str,
    backend: str,
    label: str | None,
    seed: int,
) -> Report:
    note = None
    if target is None:
        target, note = detect_target(fn, backend, reduction)
    results = [evaluate(fn, backend, build(spec), reduction) for spec in battery(target, seed)]
    report = Report(
        label or getattr(fn, "__name__", type(fn).__name__),
        backend,
        target,
        reduction,
        note,
        results,
    )
    failed = [r for r in results if not r.passed]
    if failed:

        def fails(spec: Spec) -> bool:
            return not evaluate(fn, backend, build(spec), reduction).passed

        smallest = shrink(failed[0].case.spec, fails)
        report.counterexample = evaluate(fn, backend, build(smallest), reduction)
        report.diagnosis = diagnose(Evidence(fn, backend, reduction, target, results))
    return report
