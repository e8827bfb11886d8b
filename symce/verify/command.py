"""``symce verify``: the generated modules against torch, as a table.

Imports ``generated/cross_entropy_{numpy,torch}.py`` (from ``--dir``), runs
every case of :data:`symce.verify.parity.CASES` (and the half-precision cases
for torch) and prints one row per case and module: the worst loss and
gradient errors in units of the case's tolerance.  A module with compiled
kernels is checked twice: its array code on every case ("torch"), its C
kernels on the float32 cases ("torch+C").  Exit status 1 on any mismatch or
error.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

from symce.commands.errors import CommandFailure, UsageError
from symce.verify.parity import CASES, HALF_CASES, Result, check_module

#: backend → (module file, extra cases)
MODULES: dict[str, tuple[str, tuple]] = {
    "numpy": ("cross_entropy_numpy.py", ()),
    "torch": ("cross_entropy_torch.py", HALF_CASES),
}


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
    parser.add_argument("--backend", choices=(*MODULES, "all"), default="all",
                        help="which generated module to check (default: all)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print failures only")


def _row(backend: str, result: Result | None, case, error: str = "") -> str:
    if result is None:
        return f"{'ERROR':5}  {backend:9} {case.name:52} {error}"
    status = "ok" if result.ok else "FAIL"
    return (f"{status:5}  {backend:9} {case.name:52} {case.dtype:9} "
            f"{result.loss_error:9.3g} {result.grad_error:9.3g}")


def _paths(module: ModuleType, backend: str):
    """``(label, compiled)`` for each code path of ``module``.

    Modules that carry compiled kernels (float32) are checked on both paths:
    the C kernels and the array code.  Where the kernels cannot be built the
    C rows are not run, and a line says so (it is not counted as agreement).
    """
    if not hasattr(module, "use_compiled"):
        return [(backend, None)]
    paths = [(f"{backend}", False)]
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


def run(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        what = "is a file, not a folder" if args.dir.exists() else "no such folder"
        raise UsageError(f"--dir {args.dir}: {what}")
    backends = tuple(MODULES) if args.backend == "all" else (args.backend,)
    modules = {b: load_module(args.dir / MODULES[b][0]) for b in backends}  # before any output
    failures = total = 0
    print(f"{'':5}  {'module':9} {'case':52} {'dtype':9} {'loss/tol':>9} {'grad/tol':>9}")
    for backend, module in modules.items():
        extra = MODULES[backend][1]
        for label, compiled in _paths(module, backend):
            if compiled is not None:
                module.use_compiled(compiled)
            try:
                for case in CASES + extra:
                    if compiled and case.dtype != "float32":
                        continue  # the C kernels are float32 only: the same code ran above
                    total += 1
                    try:
                        result = check_module(module, case)
                    except Exception as exc:  # a crash is a mismatch, reported in its row
                        failures += 1
                        print(_row(label, None, case, f"{type(exc).__name__}: {exc}"))
                        continue
                    if not result.ok:
                        failures += 1
                    if not result.ok or not args.quiet:
                        print(_row(label, result, case))
            finally:
                if compiled is not None:
                    module.use_compiled(None)
    print(f"{total - failures}/{total} cases agree with torch.nn.functional.cross_entropy "
          "and autograd", file=sys.stderr if failures else sys.stdout)
    return 1 if failures else 0
