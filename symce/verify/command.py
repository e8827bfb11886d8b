"""``symce verify``: the generated modules against torch, as a table.

Imports ``generated/cross_entropy_{numpy,torch}.py`` (from ``--dir``), runs
every case of :data:`symce.verify.parity.CASES` (and the half-precision cases
for torch) and prints one row per case and module: the worst loss and
gradient errors in units of the case's tolerance.  Exit status 1 on any
mismatch or error.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from symce.verify.parity import CASES, HALF_CASES, Result, check_module

#: backend → (module file, extra cases)
MODULES: dict[str, tuple[str, tuple]] = {
    "numpy": ("cross_entropy_numpy.py", ()),
    "torch": ("cross_entropy_torch.py", HALF_CASES),
}


def load_module(path: Path) -> ModuleType:
    """Import a generated module from its file (it need not be on sys.path)."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist; run `symce build` first")
    spec = importlib.util.spec_from_file_location(f"symce_generated_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("generated"),
                        help="folder holding the generated modules (default: generated)")
    parser.add_argument("--backend", choices=(*MODULES, "all"), default="all")
    parser.add_argument("-q", "--quiet", action="store_true", help="print failures only")


def _row(backend: str, result: Result | None, case, error: str = "") -> str:
    if result is None:
        return f"{'ERROR':5}  {backend:6} {case.name:52} {error}"
    status = "ok" if result.ok else "FAIL"
    return (f"{status:5}  {backend:6} {case.name:52} {case.dtype:9} "
            f"{result.loss_error:9.3g} {result.grad_error:9.3g}")


def run(args: argparse.Namespace) -> int:
    backends = tuple(MODULES) if args.backend == "all" else (args.backend,)
    failures = total = 0
    print(f"{'':5}  {'module':6} {'case':52} {'dtype':9} {'loss/tol':>9} {'grad/tol':>9}")
    for backend in backends:
        file, extra = MODULES[backend]
        module = load_module(args.dir / file)
        for case in CASES + extra:
            total += 1
            try:
                result = check_module(module, case)
            except Exception as exc:  # a crash is a mismatch, reported in its row
                failures += 1
                print(_row(backend, None, case, f"{type(exc).__name__}: {exc}"))
                continue
            if not result.ok:
                failures += 1
            if not result.ok or not args.quiet:
                print(_row(backend, result, case))
    print(f"{total - failures}/{total} cases agree with torch.nn.functional.cross_entropy "
          "and autograd", file=sys.stderr if failures else sys.stdout)
    return 1 if failures else 0
