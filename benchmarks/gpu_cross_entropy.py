"""GPU cross-entropy, forward + backward: symce's Triton kernel against the field.

Contenders, run side by side in one process on the same inputs (mean
reduction, class-index targets):

- ``copy``: ``out.copy_(logits)``, one read and one write of the logits: the floor;
- ``eager``: ``F.cross_entropy``; ``compile``: ``torch.compile(F.cross_entropy)``;
- ``liger``: Liger-Kernel's ``liger_cross_entropy`` (when installed; it writes
  the gradient over the logits);
- ``symce`` / ``symce-inplace``: ``generated/cross_entropy_triton.py``.

Time: CUDA events around forward + backward, the rounds interleaved (every
contender once per round, inputs restored outside the timed region), median
over the rounds.  Extra memory: ``torch.cuda.max_memory_allocated`` during one
forward + backward minus what was allocated before it (the gradient that
stays in ``.grad`` counts).  Bandwidth: one read plus one write of the
logits over the time, the traffic a fused kernel cannot go below.

Usage::

    python benchmarks/gpu_cross_entropy.py                 # the issue's three shapes
    python benchmarks/gpu_cross_entropy.py --shape bfloat16:8192:128256 --rounds 50
    python benchmarks/gpu_cross_entropy.py --sweep         # tune the kernel's tile constants
    python benchmarks/gpu_cross_entropy.py --check         # exit 1 if a goal is missed

Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("bfloat16:8192:128256", "float32:8192:32000", "float32:4096:128256")
#: symce's time over each baseline's: the issue's goals
GOALS = {"copy": 1.15, "liger": 0.65, "eager": 0.26}


def load_symce():
    path = ROOT / "generated" / "cross_entropy_triton.py"
    spec = importlib.util.spec_from_file_location("cross_entropy_triton", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_liger():
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except ImportError:
        return None
    return liger_cross_entropy


def contenders(ce, liger) -> dict:
    """name → ``step(x, target, out)``: one forward + backward (``copy``: one copy)."""
    compiled = torch.compile(F.cross_entropy)

    def backward_of(loss_fn):
        return lambda x, target, out: loss_fn(x, target).backward()

    steps = {
        "copy": lambda x, target, out: out.copy_(x.detach()),
        "eager": backward_of(F.cross_entropy),
        "compile": backward_of(compiled),
        "liger": None if liger is None else backward_of(liger),
        "symce": backward_of(ce.cross_entropy),
        "symce-inplace": backward_of(lambda x, t: ce.cross_entropy(x, t, inplace=True)),
    }
    return {name: step for name, step in steps.items() if step is not None}


def make_inputs(dtype: torch.dtype, n: int, c: int):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x0 = (torch.randn(n, c, device="cuda", generator=gen) * 2).to(dtype)
    target = torch.randint(0, c, (n,), device="cuda", generator=gen)
    target[::97] = -100  # a few ignored rows, as padding in a language-model batch
    return x0, target


def _fresh(x: torch.Tensor, x0: torch.Tensor) -> None:
    """Restore the logits (in-place contenders overwrite them) and drop the gradient."""
    with torch.no_grad():
        x.copy_(x0)
    x.grad = None


def check_against_eager(steps: dict, x0, target) -> dict[str, float]:
    """Worst |gradient − eager's| per contender (float32 comparison)."""
    x = x0.clone().requires_grad_(True)
    F.cross_entropy(x, target).backward()
    want = x.grad.float()
    errors = {}
    out = torch.empty_like(x0)
    for name, step in steps.items():
        if name == "copy":
            continue
        y = x0.clone().requires_grad_(True)
        step(y, target, out)
        errors[name] = float((y.grad.float() - want).abs().max())
    return errors


def time_interleaved(steps: dict, x0, target, rounds: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per contender, every contender once per round."""
    x = x0.clone().requires_grad_(True)
    out = torch.empty_like(x0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + rounds):
        events = {}
        for name, step in steps.items():
            _fresh(x, x0)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(x, target, out)
            end.record()
            events[name] = (start, end)
        torch.cuda.synchronize()
        if r >= warmup:
            for name, (start, end) in events.items():
                times[name].append(start.elapsed_time(end))
    return {name: statistics.median(ts) for name, ts in times.items()}


def extra_memory(step, x0, target) -> int:
    """Bytes allocated at the peak of one step beyond what existed before it."""
    x = x0.clone().requires_grad_(True)
    out = torch.empty_like(x0)
    step(x, target, out)  # warm: compiled kernels, allocator pools
    _fresh(x, x0)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(x, target, out)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _logits_gb(spec: str) -> float:
    dtype_name, n, c = spec.split(":")
    return int(n) * int(c) * torch.empty((), dtype=getattr(torch, dtype_name)).element_size() / 1e9


def bandwidth_tbs(x0, ms: float) -> float:
    """One read and one write of the logits, in TB/s."""
    return 2 * x0.numel() * x0.element_size() / (ms * 1e-3) / 1e12


def run_shape(spec: str, ce, liger, rounds: int, warmup: int) -> list[dict]:
    dtype_name, n, c = spec.split(":")
    dtype, n, c = getattr(torch, dtype_name), int(n), int(c)
    x0, target = make_inputs(dtype, n, c)
    steps = contenders(ce, liger)
    errors = check_against_eager(steps, x0, target)
    memory = {name: extra_memory(step, x0, target) for name, step in steps.items()}
    ms = time_interleaved(steps, x0, target, rounds, warmup)
    return [
        {"shape": f"{n} × {c}", "dtype": dtype_name, "name": name, "ms": ms[name],
         "extra_gb": memory[name] / 1e9, "tbs": bandwidth_tbs(x0, ms[name]),
         "grad_error": errors.get(name, 0.0)}
        for name in steps
    ]


def goals(rows: list[dict]) -> list[tuple[str, float, float, bool]]:
    """``(what, ratio, goal, met)`` for symce (default, not in place) against each baseline."""
    by_name = {r["name"]: r["ms"] for r in rows}
    ours = by_name["symce"]
    return [(f"symce / {base}", ours / by_name[base], goal, ours / by_name[base] <= goal)
            for base, goal in GOALS.items() if base in by_name]


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"GPU: {device}, forward + backward, mean reduction, median of CUDA-event timings",
             "",
             "| shape | dtype | implementation | time (ms) | vs copy | extra memory (GB) "
             "| TB/s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (shape, dtype), group in itertools.groupby(rows, key=lambda r: (r["shape"], r["dtype"])):
        group = list(group)
        copy = next(r["ms"] for r in group if r["name"] == "copy")
        for r in group:
            lines.append(f"| {shape} | {dtype} | {r['name']} | {r['ms']:.2f} | "
                         f"{r['ms'] / copy:.2f}× | {r['extra_gb']:.2f} | {r['tbs']:.2f} |")
    return "\n".join(lines)


def sweep(spec: str, ce, rounds: int, warmup: int) -> None:
    """Time symce over tile constants and print the best (set them in the template)."""
    dtype_name, n, c = spec.split(":")
    x0, target = make_inputs(getattr(torch, dtype_name), int(n), int(c))
    results = []
    for block_c, warps, per_sm, stages in itertools.product(
            (4096, 8192, 16384, 32768), (8, 16, 32), (1, 2, 4), (1, 2, 3)):
        ce._MAX_BLOCK_C = ce._TILE = block_c
        ce._NUM_WARPS, ce._PROGRAMS_PER_SM, ce._NUM_STAGES = warps, per_sm, stages
        step = {"symce": lambda x, t, out: ce.cross_entropy(x, t).backward()}
        try:
            ms = time_interleaved(step, x0, target, rounds, warmup)["symce"]
        except Exception as error:  # noqa: BLE001 - e.g. out of shared memory: skip it
            print(f"  block_c={block_c} warps={warps} per_sm={per_sm} stages={stages}: {error}")
            continue
        results.append((ms, block_c, warps, per_sm, stages))
        print(f"  block_c={block_c:6d} warps={warps:2d} per_sm={per_sm} stages={stages}: "
              f"{ms:.3f} ms")
    ms, block_c, warps, per_sm, stages = min(results)
    print(f"best for {spec}: {ms:.3f} ms with _MAX_BLOCK_C = _TILE = {block_c}, "
          f"_NUM_WARPS = {warps}, _PROGRAMS_PER_SM = {per_sm}, _NUM_STAGES = {stages}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", metavar="DTYPE:N:C",
                        help=f"shapes to run (default: {', '.join(SHAPES)})")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="tune symce's tile constants")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_cross_entropy: no CUDA device here; nothing measured (skipped).")
        return 0
    try:
        ce = load_symce()
    except ImportError as error:
        print(f"gpu_cross_entropy: cannot import the Triton module ({error}); "
              "pip install triton")
        return 0
    shapes = args.shape or list(SHAPES)
    if args.sweep:
        for spec in shapes:
            sweep(spec, ce, args.rounds, args.warmup)
        return 0
    liger = load_liger()
    if liger is None:
        print("(Liger-Kernel not installed: pip install liger-kernel to compare with it)")
    device = torch.cuda.get_device_name()
    missed = False
    all_rows = []
    for spec in shapes:
        rows = run_shape(spec, ce, liger, args.rounds, args.warmup)
        all_rows += rows
        print(f"\n{spec} on {device}")
        for r in rows:
            print(f"  {r['name']:14s} {r['ms']:8.3f} ms  {r['extra_gb']:6.2f} GB extra  "
                  f"{r['tbs']:5.2f} TB/s  max |grad - eager| {r['grad_error']:.2e}")
        for what, ratio, goal, met in goals(rows):
            missed |= not met
            print(f"  {what:18s} {ratio:5.2f}  (goal ≤ {goal})  {'met' if met else 'MISSED'}")
        logits_gb = _logits_gb(spec)
        extra = next(r["extra_gb"] for r in rows if r["name"] == "symce")
        met = extra <= logits_gb * 1.01 + 0.01
        missed |= not met
        print(f"  symce extra memory {extra:.2f} GB  (goal ≤ one logits buffer, "
              f"{logits_gb:.2f} GB)  {'met' if met else 'MISSED'}")
    print("\n" + markdown(all_rows, device))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
