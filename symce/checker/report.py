"""The text of a report: one line per case, then the counterexample and diagnosis."""

from __future__ import annotations

import numpy as np

from symce.checker.battery import Result
from symce.checker.check import Report

_INDENT = "    "


def format_report(report: Report) -> str:
    target = report.target + (f" ({report.target_note})" if report.target_note else "")
    lines = [
        f"symce check {report.label}",
        f"  backend {report.backend}, target {target}, reduction {report.reduction}",
    ]
    width = max(len(r.case.spec.name) for r in report.results)
    for r in report.results:
        status = "PASS" if r.passed else "FAIL"
        lines.append(f"  {status}  {r.case.spec.name:<{width}}  {r.case.spec.describe()}")
        lines += [f"{_INDENT}      {p}" for p in r.problems]
    if any(r.outcome.grad is None and r.passed for r in report.results):
        lines.append("  note: no gradient returned, so only the loss was checked")
    failed = [r for r in report.results if not r.passed]
    if report.counterexample is not None:
        lines += ["", *_counterexample(failed[0], report.counterexample)]
    if report.diagnosis:
        lines += ["", "diagnosis:", *[f"  - {d}" for d in report.diagnosis]]
    elif failed:
        lines += ["", "diagnosis: none recognised; compare the values above"]
    total = len(report.results)
    verdict = (
        f"PASS: all {total} cases agree with the derived reference"
        if not failed
        else f"FAIL: {len(failed)} of {total} cases disagree with the derived reference"
    )
    lines += ["", verdict]
    return "\n".join(lines)


def _counterexample(first: Result, r: Result) -> list[str]:
    s, f = r.case.spec, first.case.spec
    shrunk = "" if s == f else f", shrunk from N={f.rows} C={f.classes}"
    lines = [
        f"first failure: case '{f.name}'{shrunk}; counterexample N={s.rows} C={s.classes}:",
        f"  logits ({s.dtype}):",
        *_array(r.case.logits),
        "  target:",
        *_array(r.case.target),
    ]
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
