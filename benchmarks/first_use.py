"""Time to the first result of a generated module with an empty kernel cache.

Each measurement is a fresh interpreter with its own empty ``SYMCE_CACHE_DIR``:
it imports ``generated/<loss>_<backend>.py`` (numpy or torch), makes a small
float32 input and times the first plain call (loss and gradient), which
compiles whatever the module builds on first use; then a second call with
other options (``--then z_loss=0.1,softcap=5``) to show what a new kernel
costs.  Runs alternate between the given trees (``--tree``, default this one),
so their numbers are side by side.

    python benchmarks/first_use.py --repeats 3
    python benchmarks/first_use.py --tree /tmp/old --tree . --backend torch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
tree, loss, backend, then = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("m", f"{tree}/generated/{loss}_{backend}.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1000)).astype(np.float32)
y = rng.integers(0, 1000, 64)
options = dict(kv.split("=") for kv in then.split(",")) if then else {}
options = {k: float(v) for k, v in options.items()}
if backend == "torch":
    import torch
    def call(**kw):
        xt = torch.from_numpy(x).requires_grad_()
        getattr(m, loss)(xt, torch.from_numpy(y), **kw).backward()
else:
    def call(**kw):
        getattr(m, f"{loss}_with_grad")(x, y, **kw)
t1 = time.perf_counter()
assert m.compiled_library() is not None
call()
t2 = time.perf_counter()
if options:
    call(**options)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first": t2 - t1, "then": t3 - t2}))
"""


def once(tree: Path, loss: str, backend: str, then: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "SYMCE_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", _CHILD, str(tree), loss, backend, then],
                             env=env, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{tree}: {out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path)
    parser.add_argument("--loss", default="cross_entropy")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "torch"))
    parser.add_argument("--then", default="z_loss=0.1,softcap=5")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    results: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
    for _ in range(args.repeats):
        for tree in trees:
            results[tree].append(once(tree, args.loss, args.backend, args.then))
    for tree, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{tree}: {args.loss} {args.backend}, median of {len(runs)}: "
              f"first plain call {med['first']:.2f} s, then ({args.then}) {med['then']:.2f} s "
              f"(each: {', '.join(format(r['first'], '.2f') for r in runs)})")


if __name__ == "__main__":
    main()
