"""The fixed cost of one forward+backward of the generated torch module (issue #8): the
time beyond the compiled kernel, interleaved A/B of git revisions (CPU, float32).

Each round calls every version once per case (class-index targets, mean reduction:
default options, and weight + label_smoothing + ignore_index among the targets);
the kernel's own time (``_c_call``) is taken off each call; medians reported.
``F.cross_entropy``'s forward+backward of a (4, 10, 3) input, timed after the rounds
(not between them: its parallel operations would slow the calls that follow),
shows PyTorch's own fixed cost.  Set MALLOC_MMAP_THRESHOLD_
and MALLOC_TRIM_THRESHOLD_ so that page faults do not move the numbers.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python benchmarks/percall_overhead.py 9922bff HEAD --rounds 60
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"kdim-64x1000x32": (64, 1000, 32), "256x4000": (256, 4000), "tiny": (4, 10, 3)}


def _load(version: str, scratch: Path, index: int):
    """The generated torch module of a git revision, or of the working tree (``.``)."""
    path = ROOT / "generated" / "cross_entropy_torch.py"
    if version != ".":
        path = scratch / f"v{index}.py"
        path.write_text(subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{version}:generated/cross_entropy_torch.py"],
            capture_output=True, text=True, check=True).stdout)
    spec = importlib.util.spec_from_file_location(f"percall_v{index}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernel = {}
    call = module._c_call

    def timed(*args):
        start = time.perf_counter()
        call(*args)
        kernel["s"] = time.perf_counter() - start

    module._c_call = timed
    return module, kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", help="git revisions, or . for the working tree")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="kdim-64x1000x32")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    shape = SHAPES[args.shape]
    x = torch.randn(*shape, generator=gen).requires_grad_()
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    cases = {"plain": {}, "options": {"weight": torch.rand(shape[1], generator=gen) + 0.5,
                                      "label_smoothing": 0.1, "ignore_index": 3}}
    with tempfile.TemporaryDirectory() as scratch:
        modules = [_load(v, Path(scratch), i) for i, v in enumerate(args.versions)]
        beyond = {(v, c): [] for v in args.versions for c in cases}
        for r in range(args.rounds + 3):
            for case, options in cases.items():
                for version, (module, kernel) in zip(args.versions, modules, strict=True):
                    x.grad = None
                    start = time.perf_counter()
                    module.cross_entropy(x, y, **options).backward()
                    spent = time.perf_counter() - start
                    if r >= 3:  # the first rounds build and load the kernels
                        beyond[version, case].append(spent - kernel["s"])
    small = torch.randn(4, 10, 3, generator=gen).requires_grad_()
    small_y = torch.randint(0, 10, (4, 3), generator=gen)
    small_options = {"plain": {}, "options": {**cases["options"], "weight": torch.rand(10) + 0.5}}
    torch_total = {c: [] for c in cases}
    for r in range(args.rounds + 3):
        for case, options in small_options.items():
            small.grad = None
            start = time.perf_counter()
            F.cross_entropy(small, small_y, **options).backward()
            if r >= 3:
                torch_total[case].append(time.perf_counter() - start)
    print(f"{args.shape}, {args.rounds} rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads: medians in us")
    for case in cases:
        first = statistics.median(beyond[args.versions[0], case])
        for version in args.versions:
            median = statistics.median(beyond[version, case])
            print(f"  {case:8s} {version:12s} beyond the kernel {median * 1e6:8.1f}"
                  f"   ({median / first:.2f}x the first)")
        print(f"  {case:8s} {'F.cross_entropy':12s} fwd+bwd of (4, 10, 3) "
              f"{statistics.median(torch_total[case]) * 1e6:8.1f}")


if __name__ == "__main__":
    main()
