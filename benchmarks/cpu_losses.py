"""CPU timings of every loss's compiled kernels (float32, loss and gradient together).

Two parts, each interleaved (every round calls each variant once, in an order
that rotates from round to round; medians; ratios within one run):

``ab``: the generated cross-entropy NumPy module against an earlier one (a git
revision's generated/cross_entropy_numpy.py, or a file), at 2048×32000,
8192×1000 and K-dim (64, 1000, 32), plain targets and all options (weight +
label smoothing + ignore_index), both modules on the same threads.

``goals``: at 2048×32000 (issue 11): cross_entropy with z_loss and softcap
against plain cross_entropy (softcap=30: the logits, 3·N(0, 1), lie within
0.625·softcap, where tanh is its polynomial alone; softcap=5 as well: every row
takes the general tanh); focal_loss and kl_distillation (NumPy
``_with_grad``, the compiled path) against eager torch autograd through each
loss's definition (forward and backward, torch's threads: as many as the
module's); each comparison interleaved on its own.

    python benchmarks/cpu_losses.py --rounds 11 --old 1f4e1a0 --old 9051191
    python benchmarks/cpu_losses.py --part goals --json results.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
AB_SHAPES = ((2048, 32000), (8192, 1000), (64, 1000, 32))
GOAL_SHAPE = (2048, 32000)


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated(loss: str, folder: Path | None, scratch: Path):
    """``generated/<loss>_numpy.py`` (or as ``symce generate`` writes it now)."""
    path = (folder or ROOT / "generated") / f"{loss}_numpy.py"
    if not path.exists():
        from symce.codegen import generate

        path = scratch / f"{loss}_numpy.py"
        path.write_text(generate(loss, "numpy"))
    module = load(path, f"new_{loss}")
    if module.compiled_library() is None:
        raise SystemExit(f"{path}: no compiled kernels (a C compiler is needed)")
    return module


def old_module(version: str, scratch: Path):
    path = Path(version)
    if not path.is_file():
        text = subprocess.run(["git", "-C", str(ROOT), "show",
                               f"{version}:generated/cross_entropy_numpy.py"],
                              capture_output=True, text=True, check=True).stdout
        path = scratch / f"old_{version.replace('/', '_')}.py"
        path.write_text(text)
    module = load(path, f"old_{path.stem}")
    assert module.compiled_library() is not None, version
    return module


def interleaved(calls: dict[str, object], rounds: int) -> dict[str, float]:
    """Median milliseconds of each call, rounds interleaved (warm-up: two calls each)."""
    for call in calls.values():
        call()
        call()
    times = {label: [] for label in calls}
    labels = list(calls)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            start = time.perf_counter()
            calls[label]()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) * 1e3 for label, t in times.items()}


def ab(new, olds: dict[str, object], rounds: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    rows = []
    for shape in AB_SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32) * 3
        y = rng.integers(0, shape[1], (shape[0],) + shape[2:])
        ignored = y.copy()
        ignored.flat[::7] = -100
        w = np.linspace(0.5, 2.0, shape[1], dtype=np.float32)
        for options, target, kw in [("plain", y, {}),
                                    ("all", ignored, {"weight": w, "label_smoothing": 0.1})]:
            modules = {"new": new, **olds}
            calls = {label: (lambda m=m, x=x, t=target, kw=kw:
                             m.cross_entropy_with_grad(x, t, **kw))
                     for label, m in modules.items()}
            medians = interleaved(calls, rounds)
            row = {"shape": "x".join(map(str, shape)), "options": options, "ms": medians,
                   "ratio_new_to": {label: medians["new"] / ms for label, ms in medians.items()
                                    if label != "new"}}
            rows.append(row)
            times = "  ".join(f"{label} {ms:8.2f} ms" for label, ms in medians.items())
            ratios = "  ".join(f"new/{label} {r:.2f}x" for label, r in row["ratio_new_to"].items())
            print(f"{row['shape']:>12} {options:5}  {times}   {ratios}", flush=True)
    return rows


# -- eager torch through each definition (independent of symce) ---------------------------
def torch_focal(x, y, gamma):
    q = torch.softmax(x, dim=1)
    c = torch.nn.functional.one_hot(y, x.shape[1]).to(x.dtype)
    return -(c * (1 - q) ** gamma * torch.log_softmax(x, dim=1)).sum(1).mean()


def torch_focal_gathered(x, y, gamma):
    log_q = torch.log_softmax(x, dim=1).gather(1, y[:, None])[:, 0]
    return -((1 - log_q.exp()) ** gamma * log_q).mean()


def torch_kl(x, t, temperature):
    log_p = torch.log_softmax(t / temperature, dim=1)
    log_q = torch.log_softmax(x / temperature, dim=1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(1).mean()


def eager(definition, x, *args):
    def step():
        leaf = torch.from_numpy(x).requires_grad_()
        definition(leaf, *args).backward()
        return leaf.grad

    return step


def goals(folder: Path | None, scratch: Path, rounds: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(GOAL_SHAPE, dtype=np.float32) * 3
    y = rng.integers(0, GOAL_SHAPE[1], GOAL_SHAPE[0])
    teacher = rng.standard_normal(GOAL_SHAPE, dtype=np.float32) * 3
    ce = generated("cross_entropy", folder, scratch)
    focal = generated("focal_loss", folder, scratch)
    kl = generated("kl_distillation", folder, scratch)
    yt, tt = torch.from_numpy(y), torch.from_numpy(teacher)
    torch.set_num_threads(ce.get_num_threads())
    # three groups, each interleaved on its own: a call right after one of eager
    # torch's (GBs of temporaries freed, its OpenMP threads) ran up to 3x slower,
    # so the cross-entropy pair is timed without torch between its calls
    groups = [
        {"cross_entropy plain": lambda: ce.cross_entropy_with_grad(x, y),
         "cross_entropy z_loss=1e-4 softcap=30": lambda: ce.cross_entropy_with_grad(
             x, y, z_loss=1e-4, softcap=30.0),
         # logits beyond 0.625·softcap in every row: the general tanh (no goal)
         "cross_entropy z_loss=1e-4 softcap=5": lambda: ce.cross_entropy_with_grad(
             x, y, z_loss=1e-4, softcap=5.0)},
        {"focal_loss gamma=2": lambda: focal.focal_loss_with_grad(x, y, gamma=2.0),
         "torch eager focal (one-hot c)": eager(torch_focal, x, yt, 2.0),
         "torch eager focal (gathered)": eager(torch_focal_gathered, x, yt, 2.0)},
        {"kl_distillation T=2": lambda: kl.kl_distillation_with_grad(x, teacher,
                                                                       temperature=2.0),
         "torch eager kl T=2": eager(torch_kl, x, tt, 2.0)},
    ]
    medians = {}
    for calls in groups:
        medians.update(interleaved(calls, rounds))
    pairs = [("cross_entropy z_loss=1e-4 softcap=30", "cross_entropy plain", 1.25),
             ("cross_entropy z_loss=1e-4 softcap=5", "cross_entropy plain", None),
             ("focal_loss gamma=2", "torch eager focal (one-hot c)", 0.5),
             ("focal_loss gamma=2", "torch eager focal (gathered)", 0.5),
             ("kl_distillation T=2", "torch eager kl T=2", 0.5)]
    rows = []
    for label, ms in medians.items():
        print(f"{'x'.join(map(str, GOAL_SHAPE))} {label:40} {ms:9.2f} ms", flush=True)
    for a, b, goal in pairs:
        ratio = medians[a] / medians[b]
        rows.append({"variant": a, "against": b, "ratio": ratio, "goal": goal,
                     "ms": medians[a], "ms_against": medians[b]})
        print(f"  {a} / {b}: {ratio:.2f}x" + ("" if goal is None else f" (goal <= {goal}x)"),
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("ab", "goals", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--old", action="append", default=[],
                        help="git revision or file of an earlier cross_entropy_numpy.py")
    parser.add_argument("--modules", type=Path, default=None,
                        help="folder of the generated modules (default: generated/)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    machine = {"machine": platform.machine(), "processor": platform.processor(),
               "python": sys.version.split()[0], "numpy": np.__version__,
               "torch": torch.__version__, "dtype": "float32", "rounds": args.rounds}
    print(json.dumps(machine), flush=True)
    results: dict[str, object] = {"machine": machine}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.part in ("ab", "all"):
            olds = {version: old_module(version, scratch) for version in args.old or ["9051191"]}
            results["ab"] = ab(generated("cross_entropy", args.modules, scratch), olds,
                               args.rounds)
        if args.part in ("goals", "all"):
            results["goals"] = goals(args.modules, scratch, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
