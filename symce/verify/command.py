"""``symce verify``: every loss's generated modules against torch autograd of its definition.

For each registered loss (or ``--loss``), imports ``<dir>/<loss>_<backend>.py``
and runs its case table (:func:`symce.verify.losses.loss_cases`; half
precision too for torch and Triton), printing one row per case and module:
the worst loss, gradient and teacher-gradient errors in units of the case's
tolerance, against torch float64 autograd through the loss's declared
formula.  The ``derivation`` rows compare the derivation's own reference
(NumPy printed from the proved gradients) with the same autograd.  A module
with compiled kernels is checked twice: its array code on every case, its C
kernels ("+C") on the float32 cases.  The Triton modules run where CUDA is
available or with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter).  Exit
status 1 on any mismatch or error, 2 for a missing module.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

from symce.commands.errors import CommandFailure, UsageError
from symce.losses import get_loss, list_losses
from symce.verify.losses import (
    LossCase,
    LossResult,
    check_derivation,
    check_module,
    half_cases,
    loss_cases,
)

BACKENDS = ("numpy", "torch", "triton")


def load_module(path: Path) -> ModuleType:
    """Import a generated module from its file (it need not be on sys.path).

    A missing file is a ``UsageError`` (a wrong ``--dir``); one that does not
    import is a ``CommandFailure`` naming the error.
    """
    if not path.is_file():
        raise UsageError(f"{path} does not exist; run `symce build` first (or pass --dir)")
    spec = importlib.util.spec_from_file_location(f"symce_generated_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CommandFailure(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("generated"),
                        help="folder holding the generated modules (default: generated)")
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all",
                        help="which generated modules to check (default: all)")
    parser.add_argument("--loss", action="append", default=None, metavar="NAME",
                        help="a registered loss (repeatable; default: every registered loss)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print failures only")


def _triton_runs() -> tuple[bool, str]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return True, ""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.cuda.is_available():
        return True, ""
    return False, "no CUDA device; set TRITON_INTERPRET=1 to run it in Triton's interpreter"


def _row(label: str, loss: str, case: LossCase, result: LossResult | None, error: str = "") -> str:
    if result is None:
        return f"{'ERROR':5}  {label:11} {loss:16} {case.name:58} {error}"
    status = "ok" if result.ok else "FAIL"
    return (f"{status:5}  {label:11} {loss:16} {case.name:58} {case.dtype:9} "
            f"{result.loss_error:9.3g} {result.grad_error:9.3g} {result.teacher_error:9.3g}")


def _paths(module: ModuleType, backend: str) -> list[tuple[str, bool | None]]:
    """``(label, compiled)`` for each code path of ``module`` (C rows where it builds)."""
    if not hasattr(module, "use_compiled"):
        return [(backend, None)]
    paths = [(backend, False)]
    module.use_compiled(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            available = module.compiled_library() is not None
    finally:
        module.use_compiled(None)
    if available:
        paths.append((f"{backend}+C", True))
    else:
        reason = "; ".join(str(w.message) for w in caught) or "turned off"
        print(f"note   {backend}: compiled kernels not checked ({reason})")
    return paths


class _Tally:
    def __init__(self, quiet: bool):
        self.quiet, self.total, self.failures = quiet, 0, 0

    def run(self, label: str, loss: str, case: LossCase, check) -> None:
        self.total += 1
        try:
            result = check(case)
        except Exception as exc:  # a crash is a mismatch, reported in its row
            self.failures += 1
            print(_row(label, loss, case, None, f"{type(exc).__name__}: {exc}"))
            return
        if not result.ok:
            self.failures += 1
        if not result.ok or not self.quiet:
            print(_row(label, loss, case, result))


def run(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        what = "is a file, not a folder" if args.dir.exists() else "no such folder"
        raise UsageError(f"--dir {args.dir}: {what}")
    losses = args.loss or list(list_losses())
    for name in losses:
        get_loss(name)  # an unknown loss is a usage error before any output
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    triton_ok, why_not = _triton_runs()
    plan = []
    for name in losses:
        for backend in backends:
            if backend == "triton" and not triton_ok:
                continue
            # every module imported before any output: a bad --dir is one line
            plan.append((name, backend, load_module(args.dir / f"{name}_{backend}.py")))
    if "triton" in backends and not triton_ok:
        print(f"note   triton: not checked ({why_not})")
    tally = _Tally(args.quiet)
    print(f"{'':5}  {'module':11} {'loss':16} {'case':58} {'dtype':9} {'loss/tol':>9} "
          f"{'grad/tol':>9} {'teach/tol':>9}")
    for name in losses:
        for case in loss_cases(name):
            if case.dtype == "float64":
                tally.run("derivation", name, case, check_derivation)
        for loss_name, backend, module in plan:
            if loss_name != name:
                continue
            cases = loss_cases(name) + (half_cases(name) if backend != "numpy" else ())
            for label, compiled in _paths(module, backend):
                if compiled is not None:
                    module.use_compiled(compiled)
                try:
                    for case in cases:
                        if compiled and case.dtype != "float32":
                            continue  # the C kernels are float32 only: the same code ran above
                        tally.run(label, name, case, lambda c, m=module: check_module(m, c))
                finally:
                    if compiled is not None:
                        module.use_compiled(None)
    print(f"{tally.total - tally.failures}/{tally.total} cases agree with torch autograd of "
          "each loss's definition", file=sys.stderr if tally.failures else sys.stdout)
    return 1 if tally.failures else 0
