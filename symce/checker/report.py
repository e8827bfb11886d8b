"""The text of a report: a header, one line per case, then the counterexample and diagnosis.

The three parts are separate so that ``symce check`` can print the header and
each case's line as soon as it is known (:func:`header_lines`,
:func:`case_lines`) and the rest at the end (:func:`format_tail`);
``str(report)`` is the three together.
"""

from __future__ import annotations

import numpy as np

from symce.checker.battery import Result
from symce.checker.check import Report
from symce.checker.diagnosis import scope
from symce.checker.reference import CROSS_ENTROPY

_INDENT = "    "


def format_report(report: Report) -> str:
    lines = header_lines(report)
    for r in report.results:
        lines += case_lines(report, r)
    return "\n".join([*lines, format_tail(report)])


def header_lines(report: Report) -> list[str]:
    target = report.target + (f" ({report.target_note})" if report.target_note else "")
    lines = [f"symce check {report.label}"]
    spec = report.loss
    if spec != CROSS_ENTROPY:  # plain cross-entropy: as before losses were data
        params = spec.describe_params()
        lines += [f"  loss {spec.name}" + (f": {params}" if params else ""),
                  f"  {scope(spec)}"]
    lines.append(f"  backend {report.backend}, target {target}, reduction {report.reduction}")
    if report.options or report.shapes != ("2d",):
        shapes = ", ".join(_SHAPE_NAMES[s] for s in report.shapes)
        called = report.options.describe(spec.target_argument)
        lines.append(f"  called as {called}; inputs {shapes}")
    return lines


_SHAPE_NAMES = {"2d": "(N, C)", "kdim": "(N, C, d1, ...)", "unbatched": "(C,)"}


def case_lines(report: Report, r: Result) -> list[str]:
    status = "PASS" if r.passed else "FAIL"
    width = report.name_width or len(r.case.spec.name)
    return [
        f"  {status}  {r.case.spec.name:<{width}}  {r.case.describe()}",
        *[f"{_INDENT}      {p}" for p in r.problems],
    ]


def format_tail(report: Report) -> str:
    """Everything after the case lines: notes, counterexample, diagnosis, verdict."""
    lines = []
    if any(r.outcome.grad is None and r.passed for r in report.results):
        lines.append("  note: no gradient returned, so only the loss was checked")
    uncompared = [r for r in report.results if r.uncompared]
    if uncompared:
        lines.append(
            f"  note: in {len(uncompared)} case(s) the derived gradient is not finite at some "
            "entries (a derivative that is unbounded where the softmax rounds to 1, such as "
            "focal loss's with gamma < 1); those entries were not compared"
        )
    failed = [r for r in report.results if not r.passed]
    if report.counterexample is not None:
        lines += ["", *_counterexample(failed[0], report.counterexample)]
    if report.diagnosis:
        lines += ["", "diagnosis:", *[f"  - {d}" for d in report.diagnosis]]
    elif failed:
        lines += ["", "diagnosis: none recognised; compare the values above"]
    total = report.planned
    if report.stopped:
        run = len(report.results)
        when = f"after {run} of {total} cases" if run else f"before the first of {total} cases"
        verdict = f"FAIL: {report.stopped}; the battery was stopped {when}"
    elif not failed:
        verdict = f"PASS: all {total} cases agree with the derived reference"
    else:
        verdict = f"FAIL: {len(failed)} of {total} cases disagree with the derived reference"
    lines += ["", verdict]
    return "\n".join(lines)


def _counterexample(first: Result, r: Result) -> list[str]:
    s, f = r.case.spec, first.case.spec
    shrunk = "" if s == f else f", shrunk from {f.shape_text()}"
    lines = [
        f"first failure: case '{f.name}'{shrunk}; counterexample {s.shape_text()}:",
        f"  logits ({s.dtype}):",
        *_array(r.case.logits),
        f"  {s.lossspec.target_argument}:",
        *_array(r.case.target),
    ]
    if r.case.weight is not None:
        lines += ["  weight:", *_array(r.case.weight)]
    if r.case.mask is not None:
        lines += ["  mask:", *_array(r.case.mask)]
    options = {k: v for k, v in r.case.options.items() if k not in ("weight", "mask")}
    if options:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in options.items()))
    out = r.outcome
    if out.error:
        return [*lines, f"  {out.error}"]
    lines += [
        "  loss:",
        f"{_INDENT}expected {_fmt(r.expected_loss)}",
        f"{_INDENT}got      {_fmt(out.loss)}",
    ]
    if out.grad is not None or r.grad_required:
        got = _fmt(out.grad) if out.grad is not None else f"none ({out.grad_note})"
        lines += [
            "  gradient (of loss.sum()):",
            f"{_INDENT}expected {_fmt(r.expected_grad)}",
            f"{_INDENT}got      {got}",
        ]
    lines += [f"  {p}" for p in r.problems]
    return lines


def _array(a: np.ndarray) -> list[str]:
    text = np.array2string(np.asarray(a), precision=6, max_line_width=96)
    return [_INDENT + line for line in text.splitlines()]


def _fmt(a: np.ndarray | None) -> str:
    if a is None:
        return "none"
    text = np.array2string(np.asarray(a), precision=8, max_line_width=80)
    return text.replace("\n", "\n" + _INDENT + " " * 9)
