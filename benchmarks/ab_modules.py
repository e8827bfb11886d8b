"""Interleaved A/B timing of versions of the generated cross-entropy modules (CPU, float32).

Each version is a folder holding cross_entropy_numpy.py and cross_entropy_torch.py,
or a git revision (its generated/ is used).  Every round calls each version once,
in an order that rotates from round to round; medians are reported with the
ratio to the first version (a shared, noisy machine drifts; the ratios come from
the same rounds).

    python benchmarks/ab_modules.py 9051191 HEAD            # two revisions
    python benchmarks/ab_modules.py --rounds 21 old/ new/   # two folders
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("cross_entropy_numpy", "cross_entropy_torch")
SHAPES = ((2048, 32000), (8192, 1000))


def _folder(version: str, scratch: Path) -> Path:
    if Path(version).is_dir():
        return Path(version)
    folder = scratch / version.replace("/", "_")
    folder.mkdir()
    for name in MODULES:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{version}:generated/{name}.py"],
                              capture_output=True, text=True, check=True).stdout
        (folder / f"{name}.py").write_text(text)
    return folder


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _calls(numpy_module, torch_module, x, y):
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        leaf = xt.detach().requires_grad_()
        torch_module.cross_entropy(leaf, yt).backward()

    return {"numpy": lambda: numpy_module.cross_entropy_with_grad(x, y), "torch": torch_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="folders or git revisions")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folders = [_folder(v, Path(scratch)) for v in args.versions]
        versions = {}
        for i, (label, folder) in enumerate(zip(args.versions, folders, strict=True)):
            pair = tuple(_load(folder / f"{name}.py", f"ab{i}_{name}") for name in MODULES)
            assert all(m.compiled_library() is not None for m in pair), label
            versions[label] = pair
        rng = np.random.default_rng(0)
        for n, c in SHAPES:
            x = rng.standard_normal((n, c), dtype=np.float32) * 3
            y = rng.integers(0, c, n)
            calls = {label: _calls(*pair, x, y) for label, pair in versions.items()}
            for api in ("numpy", "torch"):
                times = {label: [] for label in calls}
                for call in calls.values():  # warm-up: page faults, OpenMP teams
                    call[api]()
                    call[api]()
                labels = list(calls)
                for r in range(args.rounds):
                    for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                        start = time.perf_counter()
                        calls[label][api]()
                        times[label].append(time.perf_counter() - start)
                medians = {label: statistics.median(t) * 1e3 for label, t in times.items()}
                first = medians[labels[0]]
                row = "  ".join(f"{label} {ms:8.2f} ms ({ms / first:.2f}x)"
                                for label, ms in medians.items())
                print(f"{n}x{c} {api:5}  {row}", flush=True)


if __name__ == "__main__":
    main()
