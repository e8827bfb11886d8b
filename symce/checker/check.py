"""Run a user's implementation through the battery and put the report together."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from symce.checker.adapter import BACKENDS, CheckUsageError, Outcome
from symce.checker.battery import (
    SHAPES,
    Options,
    Result,
    Spec,
    battery,
    build,
    detection_spec,
    evaluate,
    shrink,
)
from symce.checker.diagnosis import Evidence, diagnose
from symce.checker.reference import CROSS_ENTROPY, TEACHER, LossSpec
from symce.checker.runner import DEFAULT_TIMEOUT, InProcess, Runner, ThreadRunner, make_runner

#: The values of ``weight=``: ``"random"`` draws class weights for each case.
WEIGHTS = ("random",)

_IGNORE_NEEDS_INDICES = (
    "ignore_index applies to class-index targets only (PyTorch refuses it with probabilities)"
)


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
    options: Options = Options()
    shapes: tuple[str, ...] = ("2d",)
    planned: int = 0  # cases in the battery
    name_width: int = 0  # of the case-name column
    stopped: str | None = None  # why the battery stopped early (a call that timed out)
    loss: LossSpec = CROSS_ENTROPY

    @property
    def passed(self) -> bool:
        return self.stopped is None and all(r.passed for r in self.results)

    def __repr__(self) -> str:
        passed = sum(r.passed for r in self.results)
        verdict = "PASS" if self.passed else "FAIL"
        return f"<Report {self.label}: {verdict}, {passed}/{self.planned} cases pass>"

    def __str__(self) -> str:
        from symce.checker.report import format_report

        return format_report(self)


def detect_target(
    fn: Callable[..., Any], backend: str, reduction: str, loss: str = "cross_entropy"
) -> tuple[str, str]:
    """Tell the class-target kind from first calls; say what was assumed and why."""
    target, note, _ = _detect(InProcess(fn, backend), reduction, Options(), ("2d",), loss)
    return target or "index", note


def _detect(
    runner: Runner,
    reduction: str,
    options: Options,
    shapes: tuple[str, ...],
    loss: str = "cross_entropy",
) -> tuple[str | None, str, Outcome | None]:
    """``(target, note, a call that timed out)``; ``target`` is None when one did."""
    first_shape = shapes[0]
    index = build(detection_spec("index", options, shapes, loss))
    first = runner.call(index.logits, index.target, "float64", index.options)
    if first.timed_out:
        return None, "not told: the first call did not return", first
    shown = _TARGET_SHAPES[first_shape]
    if first.failure is None:
        note = f"assumed: the first call with class-index targets {shown[0]} succeeded"
        return "index", note, None
    if first.failure != "raised":  # it ran: the target was accepted, the result is another matter
        what = first.error.split(",")[0] if first.failure == "returned" else "died"
        return "index", (
            f"assumed: class-index targets {shown[0]} were accepted; the first call {what}"
        ), None
    soft = evaluate(runner, build(detection_spec("normalised", options, shapes, loss)), reduction)
    if soft.outcome.timed_out:
        return None, "not told: the call with probability targets did not return", soft.outcome
    if soft.outcome.failure == "raised":
        return "index", (
            "assumed, but it raised with class-index and with probability "
            "targets alike; pass --target"
        ), None
    if soft.loss_ok:
        return "probs", (
            f"assumed: class-index targets were refused, probability targets {shown[1]} accepted"
        ), None
    if soft.outcome.error is None:
        onehot = evaluate(
            runner, build(detection_spec("onehot", options, shapes, loss)), reduction
        )
        if onehot.outcome.timed_out:
            return None, "not told: the call with one-hot targets did not return", onehot.outcome
        if onehot.loss_ok:
            return "onehot", (
                f"assumed: {shown[1]} targets accepted, but only one-hot ones match "
                "the reference; pass --target probs to check soft targets"
            ), None
    return "probs", f"assumed: class-index targets were refused, {shown[1]} targets accepted", None


#: first shape family → how class-index and probability targets look there
_TARGET_SHAPES = {
    "2d": ("[N]", "[N, C]"),
    "kdim": ("[N, d1, ...]", "[N, C, d1, ...]"),
    "unbatched": ("[] (a scalar)", "[C]"),
}


def check_implementation(
    fn: Callable[..., Any] | str,
    target: str | None = None,
    reduction: str | None = None,
    backend: str = "torch",
    label: str | None = None,
    seed: int = 0,
    *,
    loss: str = "cross_entropy",
    params: Mapping[str, Any] | None = None,
    weight: str | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | None = None,
    mask: bool | None = None,
    shapes: Sequence[str] | str = ("2d",),
    timeout: float | None = DEFAULT_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Compare ``fn(logits, target, **options)`` with the derived reference over the battery.

    ``fn`` is a callable or ``"PATH.py:NAME"`` (imported in the worker process).
    ``loss`` is any registered loss (``symce derive --list``); ``fn`` is called
    as the loss's generated functions are: ``fn(input, target, **kwargs)``,
    the target being class indices or probabilities (``target``: ``"index"``,
    ``"probs"``, ``"onehot"``; ``None``: told from a first call) or, for a
    teacher model (``kl_distillation``), the teacher's logits in the logits'
    layout.  ``reduction`` is what ``fn`` is meant to compute, one of the
    loss's (default: its default, ``mean`` or ``batchmean``); it is not passed.

    The keyword arguments are the loss's parameters given in ``params`` (the
    battery uses them, the declared defaults for the rest; each is checked
    against its declared range) and the target model's options, only those
    given: for class targets ``weight="random"`` (each case draws positive
    class weights ``w`` and passes ``weight=w``, a tensor or array like the
    logits), ``ignore_index=N`` (some rows of each class-index target are
    ``N``), ``label_smoothing=EPS``; for a teacher, ``mask`` (default True:
    some cases pass ``mask=m``, a boolean per row, and the others none).
    ``seed`` draws different random shapes and values (0 is what CI and the
    examples use, so reports are reproducible).  ``shapes`` picks the input
    layouts: ``"2d"`` ``(N, C)``, ``"kdim"`` ``(N, C, d1, …)``, ``"unbatched"``
    ``(C,)``, or ``"all"``.

    Each call has ``timeout`` seconds (``None``: no limit, called in this
    process).  Past it the case fails, naming the limit, and the battery stops
    there.  See :mod:`symce.checker.runner` for where the calls run.
    ``progress`` receives each line of the report as soon as it is known (the
    header, then one line per case as it finishes); the rest follows in
    :func:`symce.checker.report.format_tail`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    spec = loss_spec(loss, params)
    if reduction is None:
        reduction = spec.default_reduction
    if reduction not in spec.reductions:
        raise ValueError(
            f"reduction must be one of {', '.join(spec.reductions)} for {loss}, got {reduction!r}"
        )
    if target is not None and target not in spec.kinds:
        what = "a teacher's logits" if spec.teacher else "class indices or probabilities"
        raise ValueError(
            f"target must be one of {', '.join(spec.kinds)} for {loss} (its target is "
            f"{what}), got {target!r}"
        )
    options = _options(spec, weight, ignore_index, label_smoothing, mask)
    if target in ("probs", "onehot") and ignore_index is not None:
        raise CheckUsageError(_IGNORE_NEEDS_INDICES + f", and the target is {target}")
    families = parse_shapes(shapes)
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if label is None:
        label = fn if isinstance(fn, str) else getattr(fn, "__name__", type(fn).__name__)
    if spec.teacher:
        target = TEACHER
    # the reference's code is printed from the derivation (seconds, once per process) while
    # the worker starts (seconds too: it imports torch)
    ready = threading.Thread(target=_prepare, args=(spec,), name="symce-check-reference",
                             daemon=True)
    ready.start()
    with make_runner(fn, backend, timeout) as runner, _one_thread(runner):
        ready.join()  # before any call: a forked worker must not inherit a busy thread
        _prepare(spec)  # cached by now; raises here if the thread could not
        run = _Run(runner, label, target, reduction, seed, options, families, progress, spec)
        return run.report()


def _prepare(spec: LossSpec) -> None:
    """Derive the loss and print its reference once, on a tiny input of each target kind."""
    import numpy as np

    from symce.checker.reference import reference

    x = np.zeros((1, 2))
    targets = [x] if spec.teacher else [np.zeros(1, dtype=np.int64), np.full((1, 2), 0.5)]
    for target in targets:
        reference(spec, x, target, spec.default_reduction)


def loss_spec(loss: str, params: Mapping[str, Any] | None = None) -> LossSpec:
    """The registered ``loss`` with ``params`` checked against their declared ranges.

    ``ValueError`` (``UnknownLossError`` for the loss) naming what is wrong.
    """
    from symce.losses import check_value, get_loss

    declared = get_loss(loss)
    given = dict(params or {})
    names = [p.name for p in declared.params]
    unknown = [k for k in given if k not in names]
    if unknown:
        known = ", ".join(names) or "none"
        raise ValueError(f"{loss} has no parameter {unknown[0]!r} (its parameters: {known})")
    for p in declared.params:
        if p.name in given:
            check_value(p, given[p.name])
    return LossSpec(loss, tuple((p.name, given[p.name]) for p in declared.params
                                if p.name in given))


def _options(
    spec: LossSpec, weight: Any, ignore_index: Any, label_smoothing: Any, mask: Any
) -> Options:
    if spec.teacher:
        given = [name for name, value in (("weight", weight), ("ignore_index", ignore_index),
                                          ("label_smoothing", label_smoothing))
                 if value is not None]
        if given:
            raise ValueError(
                f"{given[0]} applies to class targets; the target of {spec.name} is a "
                "teacher's logits (its option is mask)"
            )
        if mask is not None and not isinstance(mask, bool):
            raise ValueError(f"mask must be True or False, got {mask!r}")
        return Options(params=spec.params, mask=True if mask is None else mask)
    if mask is not None:
        raise ValueError(
            f"mask applies to a teacher's logits; the target of {spec.name} is class "
            "indices or probabilities (its options are weight, ignore_index, label_smoothing)"
        )
    if weight is not None and weight not in WEIGHTS:
        raise ValueError(f"weight must be None or 'random', got {weight!r}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
    if label_smoothing is not None:
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
            raise ValueError(f"label_smoothing must be a number, got {label_smoothing!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        label_smoothing = float(label_smoothing)
    return Options(weight == "random", ignore_index, label_smoothing, spec.params)


def parse_shapes(shapes: Sequence[str] | str) -> tuple[str, ...]:
    """``"2d,kdim"``, ``["2d", "kdim"]`` or ``"all"`` → the families, in the battery's order."""
    names = shapes.split(",") if isinstance(shapes, str) else list(shapes)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return SHAPES
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        raise ValueError(
            f"shapes must be a comma-separated list of {', '.join(SHAPES)} or 'all', "
            f"got {shapes!r}"
        )
    return tuple(s for s in SHAPES if s in names)


@contextlib.contextmanager
def _one_thread(runner: Runner) -> Iterator[None]:
    """The battery's tensors are tiny: thread start-up and contention would dominate.

    For the calls made in this process; a worker process sets its own.
    """
    here = isinstance(runner, (InProcess, ThreadRunner))
    if not here or (runner.backend != "torch" and "torch" not in sys.modules):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Run:
    """One battery: detection, the cases (each line sent on when done), shrinking, diagnosis."""

    def __init__(
        self,
        runner: Runner,
        label: str,
        target: str | None,
        reduction: str,
        seed: int,
        options: Options,
        shapes: tuple[str, ...],
        progress: Callable[[str], None] | None,
        loss: LossSpec = CROSS_ENTROPY,
    ):
        self.runner, self.label, self.target = runner, label, target
        self.reduction, self.seed, self.options, self.shapes = reduction, seed, options, shapes
        self.progress, self.loss = progress, loss

    def _emit(self, lines: list[str]) -> None:
        if self.progress is not None:
            for line in lines:
                self.progress(line)

    def report(self) -> Report:
        from symce.checker.report import case_lines, header_lines

        target, note, timed_out = self.target, None, None
        if target is None:
            target, note, timed_out = _detect(
                self.runner, self.reduction, self.options, self.shapes, self.loss.name
            )
        if target is not None and target != "index" and self.options.ignore_index is not None:
            told = f" ({note})" if note else ""
            raise CheckUsageError(f"{_IGNORE_NEEDS_INDICES}, and the target is {target}{told}")
        specs = battery(target or "index", self.seed, self.options, self.shapes, self.loss.name)
        report = Report(
            self.label,
            self.runner.backend,
            target or "index",
            self.reduction,
            note,
            [],
            options=self.options,
            shapes=self.shapes,
            planned=len(specs),
            name_width=max(len(s.name) for s in specs),
            loss=self.loss,
        )
        self._emit(header_lines(report))
        if timed_out is not None:
            report.stopped = f"the first call (to tell the target kind) {timed_out.error}"
            report.diagnosis = [self._timeout_sentence()]
            return report
        for spec in specs:
            result = evaluate(self.runner, build(spec), self.reduction)
            report.results.append(result)
            self._emit(case_lines(report, result))
            if result.outcome.timed_out:
                report.stopped = f"case '{spec.name}' {result.outcome.error}"
                report.diagnosis = [self._timeout_sentence()]
                return report
        failed = [r for r in report.results if not r.passed]
        if failed:
            report.counterexample = self._shrunk(failed[0])
            report.diagnosis = diagnose(
                Evidence(
                    self.runner,
                    self.reduction,
                    target,
                    report.results,
                    self.options,
                    self.shapes,
                    self.loss,
                )
            )
            if self.runner.spent:
                report.diagnosis.append(
                    f"a call made while shrinking or probing did not return within "
                    f"{self.runner.timeout:g} s, so the counterexample may not be the "
                    "smallest and the diagnosis may be incomplete"
                )
        return report

    def _shrunk(self, first: Result) -> Result:
        seen: dict[Spec, Result] = {}

        def fails(spec: Spec) -> bool:
            result = evaluate(self.runner, build(spec), self.reduction)
            seen[spec] = result
            return not result.passed and not result.outcome.timed_out

        smallest = shrink(first.case.spec, fails)
        return seen.get(smallest, first)

    def _timeout_sentence(self) -> str:
        text = (
            f"a call that does not return within {self.runner.timeout:g} s on inputs this "
            "small is an endless loop, a wait that never ends (a lock, input(), a queue) or "
            "pathologically slow; nothing more was run (raise the limit, --timeout or "
            "timeout=, if it is only slow)"
        )
        if self.runner.abandoned:
            text += "; the call was left running in a background thread of this process"
        return text
