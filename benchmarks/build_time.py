"""Wall and CPU time of ``symce build`` for source trees, alternating, each in a fresh process.

    git worktree add /tmp/base 9051191      # the tree before issue 11 (cross_entropy only)
    python benchmarks/build_time.py --tree /tmp/base --tree . --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def once(tree: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "symce", "build", "--out", out],
                       env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, check=True,
                       capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree]
    runs: dict[Path, list[tuple[float, float]]] = {t: [] for t in trees}
    for _ in range(args.repeats):
        for tree in trees:
            runs[tree].append(once(tree))
    base = None
    for tree, times in runs.items():
        wall = statistics.median(w for w, _ in times)
        cpu = statistics.median(c for _, c in times)
        base = base or (wall, cpu)
        print(f"{tree}: wall {wall:.1f} s (each {', '.join(f'{w:.1f}' for w, _ in times)}), "
              f"CPU {cpu:.1f} s; {wall / base[0]:.2f}x / {cpu / base[1]:.2f}x the first tree")


if __name__ == "__main__":
    main()
