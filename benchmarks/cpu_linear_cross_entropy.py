"""CPU speed and memory of the fused linear + cross-entropy (the language-model head).

symce's ``generated/linear_cross_entropy_torch.py`` against PyTorch 2.13's
``F.linear_cross_entropy`` reference path (``options=None``: full logits),
its chunked path (``options=LinearCrossEntropyOptions()``; with label
smoothing it falls back to the reference path, with a warning, and is shown
as such) and a hand-written chunked torch loop (an autograd Function that
computes the chunk's logits, softmax and gradients by torch operations).
Each measures forward + backward of ``loss`` (``mean``) with gradients to
``input`` and ``linear_weight``.

Time: every configuration (dtype, label smoothing) in a fresh process, its
variants run once per round, rounds interleaved, the median reported (the
machine is shared and noisy; the ratios come from the same run).
Memory: every (configuration, variant) in a fresh process: the libraries
warmed up on a tiny problem first, then the inputs made, the peak resident
set reset (``/proc/self/clear_refs``; else ``ru_maxrss`` with the baseline
at the inputs), one forward + backward; peak extra = peak RSS minus RSS with
the inputs.  It includes the input's and the weight's gradients (``.grad``;
4096 x 512 + 32000 x 512 float32 = 74 MB).

    python benchmarks/cpu_linear_cross_entropy.py                  # N=4096 H=512 V=32000
    python benchmarks/cpu_linear_cross_entropy.py --quick          # small, a smoke run
    python benchmarks/cpu_linear_cross_entropy.py --rounds 7 --json out.json
    python benchmarks/cpu_linear_cross_entropy.py --configs bfloat16 --rows 1024 \
        --variants torch_reference torch_chunked symce --rounds 3   # the bfloat16 row

bfloat16 on a CPU without bfloat16 matrix units: torch's bfloat16 GEMMs are
emulated (a 128 x 32000 by 32000 x 512 one took 25 s here, 80x its float32
time), so the bfloat16 row is measured at fewer rows (``--rows``) and without
the hand-written loop (its bfloat16 ``G W`` is that GEMM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FULL = (4096, 512, 32000)
QUICK = (512, 128, 4000)
CONFIGS = {  # name → (dtype, label smoothing)
    "float32": ("float32", 0.0),
    "float32 ls=0.1": ("float32", 0.1),
    "bfloat16": ("bfloat16", 0.0),
}
VARIANTS = ("torch_reference", "torch_chunked", "hand_chunked", "symce")


def _load():
    import importlib.util

    path = ROOT / "generated" / "linear_cross_entropy_torch.py"
    spec = importlib.util.spec_from_file_location("linear_cross_entropy_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _HandChunked(torch.autograd.Function):
    """The chunked head written by hand in torch: per chunk of rows the logits by one
    matmul, log-softmax, the gradient ``softmax − p`` formed and multiplied into the
    input's and weight's gradients (the forward computes them)."""

    @staticmethod
    def forward(ctx, h, W, t, label_smoothing, chunk):
        n, c = h.shape[0], W.shape[0]
        acc = torch.float32
        dh = torch.empty_like(h)
        dW = torch.zeros(W.shape, dtype=acc)
        total = torch.zeros((), dtype=torch.float64)
        for r0 in range(0, n, chunk):
            hc, tc = h[r0:r0 + chunk], t[r0:r0 + chunk]
            x = (hc @ W.t()).to(acc)
            lse = torch.logsumexp(x, dim=1, keepdim=True)
            logq = x - lse
            picked = logq.gather(1, tc[:, None])[:, 0]
            row = -(1 - label_smoothing) * picked - label_smoothing * logq.mean(dim=1)
            total += row.sum(dtype=torch.float64)
            g = logq.exp_()
            g.scatter_add_(1, tc[:, None], torch.full((len(tc), 1), -(1 - label_smoothing)))
            g.sub_(label_smoothing / c).div_(n)
            dh[r0:r0 + chunk] = (g.to(h.dtype) @ W)
            dW.addmm_(g.t(), hc.to(acc))
        ctx.grads = (dh, dW.to(W.dtype))
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx, go):
        dh, dW = ctx.grads
        return dh * go, dW * go, None, None, None


def _runner(variant, module, label_smoothing):
    if variant == "torch_reference":
        return lambda h, W, t: F.linear_cross_entropy(h, W, t, label_smoothing=label_smoothing)
    if variant == "torch_chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda h, W, t: F.linear_cross_entropy(h, W, t, label_smoothing=label_smoothing,
                                                      options=options)
    if variant == "hand_chunked":
        return lambda h, W, t: _HandChunked.apply(h, W, t, label_smoothing, 256)
    return lambda h, W, t: module.linear_cross_entropy(h, W, t,
                                                       label_smoothing=label_smoothing)


def _inputs(shape, dtype, seed=0):
    n, hidden, c = shape
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, dtype)
    h = torch.randn(n, hidden, generator=g).to(dtype).requires_grad_()
    W = (torch.randn(c, hidden, generator=g) * hidden ** -0.5).to(dtype).requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    return h, W, t


def _step(run, h, W, t):
    h.grad = W.grad = None
    loss = run(h, W, t)
    loss.backward()
    return loss


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb(reset):
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(shape, config, variant):
    import warnings

    warnings.simplefilter("ignore")
    dtype, ls = CONFIGS[config]
    module = _load()
    run = _runner(variant, module, ls)
    small = _inputs((64, 16, 100), dtype)
    _step(run, *small)  # libraries loaded, kernels compiled, before the measure
    del small
    h, W, t = _inputs(shape, dtype)
    base = _rss_mb()
    reset = _reset_peak()
    _step(run, h, W, t)
    return {"peak_extra_mb": _peak_mb(reset) - base, "reset": reset}


def child_time(shape, config, rounds, variants=VARIANTS):
    import warnings

    warnings.simplefilter("ignore")
    dtype, ls = CONFIGS[config]
    module = _load()
    h, W, t = _inputs(shape, dtype)
    runs = {v: _runner(v, module, ls) for v in variants}
    losses = {v: float(_step(r, h, W, t)) for v, r in runs.items()}  # warm-up, and agreement
    grads = {}
    for v, r in runs.items():
        _step(r, h, W, t)
        grads[v] = (h.grad.float().clone(), W.grad.float().clone())
    ref = grads["torch_reference" if "torch_reference" in grads else variants[0]]
    error = {v: max(float((a - b).abs().max()) for a, b in zip(g, ref, strict=True))
             for v, g in grads.items()}
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for v, r in runs.items():
            t0 = time.perf_counter()
            _step(r, h, W, t)
            times[v].append(time.perf_counter() - t0)
    return {"median_s": {v: statistics.median(s) for v, s in times.items()},
            "loss": losses, "max_grad_difference_to_reference": error}


def _child(kind, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    here = str(Path(__file__).resolve().parent)
    code = (f"import json, sys; sys.path.insert(0, {here!r}); "
            "import cpu_linear_cross_entropy as b; "
            f"print(json.dumps(b.child_{kind}(*json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load_average():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine():
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"shape {QUICK} instead of {FULL}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--rows", type=int, help="N (tokens) instead of the shape's")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    shape = QUICK if args.quick else FULL
    if args.rows:
        shape = (args.rows, *shape[1:])
    variants = [v for v in VARIANTS if v in args.variants]
    if "torch_chunked" not in variants:
        ap.error("--variants must include torch_chunked (the ratios' denominator)")
    print(f"N, H, V = {shape}; {machine()}; rounds {args.rounds}; load {_load_average()}")
    results = {}
    for config in args.configs:
        timing = _child("time", shape, config, args.rounds, variants)
        memory = {v: _child("memory", shape, config, v)["peak_extra_mb"] for v in variants}
        results[config] = {**timing, "peak_extra_mb": memory}
        med = timing["median_s"]
        path = "falls back to the reference" if CONFIGS[config][1] else "runs"
        print(f"\n{config}   (torch's chunked path {path})")
        print(f"  {'variant':<16}{'time s':>9}{'peak MB':>10}{'t/chunked':>11}{'mem/chunked':>13}"
              f"{'max |grad - ref|':>18}")
        for v in variants:
            print(f"  {v:<16}{med[v]:>9.3f}{memory[v]:>10.1f}"
                  f"{med[v] / med['torch_chunked']:>11.2f}"
                  f"{memory[v] / memory['torch_chunked']:>13.2f}"
                  f"{timing['max_grad_difference_to_reference'][v]:>18.2e}")
    print(f"\nload average at the end: {_load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "machine": machine(),
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
