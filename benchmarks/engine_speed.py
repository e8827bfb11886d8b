"""How long ``symce.derive("cross_entropy", n)`` takes, against naive ``simplify``.

Run by hand from the repository root::

    python benchmarks/engine_speed.py                 # n = 3, 8, 32, 64, 128, symbolic
    python benchmarks/engine_speed.py --repeats 5 --baseline 8 32

Every timing runs in a fresh interpreter, so SymPy's caches start cold and one
run cannot warm the next; the table shows the median over ``--repeats`` runs
(wall clock, and CPU time of the process, which shared machines disturb less).

* ``derive``: what a user calls: build every step (SymPy derives the right-hand
  sides) and check every step, every entry, once.
* ``check, cold``: ``Derivation.check()`` alone, in a fresh context that has not
  seen the derivation (no cached normal forms): the cost of re-proving it.
* ``naive simplify``: the explicit softmax ``exp(x_i)/Σ_j exp(x_j)``, its
  ``n × n`` Jacobian and the gradient of ``−Σ c_i log q_i`` by ``diff``, each
  passed to ``sympy.simplify`` (the baseline of issue #2); runs longer than
  ``--baseline-timeout`` seconds are stopped and shown as ``> T``.

Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# run from a checkout without installing: the repository root holds symce/
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = ["3", "8", "32", "64", "128", "symbolic"]


def _derive_once(size: str) -> dict[str, float]:
    import symce

    n = None if size == "symbolic" else int(size)
    wall, cpu = time.perf_counter(), time.process_time()
    d = symce.derive("cross_entropy", n=n)
    out = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    ctx = d.context
    fresh = type(ctx)() if n is None else type(ctx)(n)
    fresh.loss_definition(ctx._loss_body)
    cold = dataclasses.replace(d, context=fresh)
    wall, cpu = time.perf_counter(), time.process_time()
    cold.check()
    out.update(check_wall=time.perf_counter() - wall, check_cpu=time.process_time() - cpu)
    return out


def _naive_once(size: str) -> dict[str, float]:
    import sympy as sp

    n = int(size)
    x = sp.symbols(f"x_1:{n + 1}", real=True)
    c = sp.symbols(f"c_1:{n + 1}", real=True)
    z = sp.Add(*[sp.exp(v) for v in x])
    q = [sp.exp(v) / z for v in x]
    wall, cpu = time.perf_counter(), time.process_time()
    sp.simplify(sp.Matrix(n, n, lambda i, k: sp.diff(q[i], x[k])))
    loss = -sp.Add(*[ci * sp.log(qi) for ci, qi in zip(c, q, strict=True)])
    sp.simplify(sp.Matrix([sp.diff(loss, v) for v in x]))
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def _run(kind: str, size: str, timeout: float | None) -> dict[str, float] | None:
    """One measurement in a fresh interpreter; ``None`` if it ran past ``timeout``."""
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", kind, size],
            capture_output=True, text=True, timeout=timeout, check=True,
        )
    except subprocess.TimeoutExpired:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, float]], key: str) -> str:
    return f"{statistics.median(r[key] for r in runs):.2f}"


def _machine() -> str:
    import sympy

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (
        f"{platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SymPy {sympy.__version__}, "
        f"load average at start {' '.join(f'{v:.2f}' for v in load)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="*", default=SIZES)
    parser.add_argument("--baseline", nargs="*", default=["8", "32"])
    parser.add_argument("--baseline-timeout", type=float, default=600.0)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, size = args.worker
        print(json.dumps((_derive_once if kind == "derive" else _naive_once)(size)))
        return

    print(f"Machine: {_machine()}")
    print(f"Median of {args.repeats} runs, each in a fresh interpreter.\n")
    print("| n | derive (build + check), wall s | derive, CPU s "
          "| check alone, cold, wall s | check alone, cold, CPU s |")
    print("|---|---:|---:|---:|---:|")
    for size in args.sizes:
        runs = [_run("derive", size, None) for _ in range(args.repeats)]
        print(f"| {size} | {_median(runs, 'wall')} | {_median(runs, 'cpu')} "
              f"| {_median(runs, 'check_wall')} | {_median(runs, 'check_cpu')} |", flush=True)
    if args.baseline:
        print("\n| n | naive `simplify` of Jacobian + gradient, wall s | CPU s |")
        print("|---|---:|---:|")
    for size in args.baseline:
        run = _run("naive", size, args.baseline_timeout)
        if run is None:
            print(f"| {size} | > {args.baseline_timeout:.0f} (stopped) | – |", flush=True)
        else:
            print(f"| {size} | {run['wall']:.2f} | {run['cpu']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
