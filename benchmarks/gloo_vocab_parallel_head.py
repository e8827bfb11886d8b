"""The vocabulary-parallel language-model head on gloo: fused against linear + loss.

R ranks on 127.0.0.1 (forked from this process); every rank holds the same N
activation rows of width H and its rows of the head's weight (V classes split
evenly), float32, class-index targets, ``reduction="mean"``.  Per method and
rank, one forward + backward step (gradients to the activations and the weight
slice):

* ``fused``: ``vocab_parallel_linear_cross_entropy`` of
  ``generated/cross_entropy_vocab_parallel_torch.py`` (chunks of rows, the
  slice's logits formed twice, never for all rows);
* ``linear + loss``: ``h @ W_r.T`` (autograd) and the same module's
  ``vocab_parallel_cross_entropy`` on those ``N x V_r`` logits, then the input
  gradient all-reduced as a column-parallel head does;
* ``linear + Megatron-style``: the same with the hand-written Megatron-style
  loss of ``benchmarks/gloo_vocab_parallel.py``.

Time: median of interleaved steps (rank 0's; the ranks are in lock step).
Memory: each method in a world of its own, rank 0's peak resident memory during
one step above what it held before it (the inputs, the weight slice, a warm-up
step's buffers freed), from ``/proc/self/status`` (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``).

    python benchmarks/gloo_vocab_parallel_head.py [--rows 4096] [--hidden 512]
        [--classes 32000] [--ranks 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gloo_vocab_parallel as loss_bench  # noqa: E402  (its loader and Megatron-style loss)

METHODS = ("fused", "linear + loss", "linear + Megatron-style")


def _inputs(rank, world, args):
    v = args.classes // world
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.rows, args.hidden, generator=g)
    target = torch.randint(0, v * world, (args.rows,), generator=g)
    w = torch.randn(v, args.hidden, generator=torch.Generator().manual_seed(1 + rank)) * 0.05
    return h, w, target, rank * v


def _step(method, vp, h, w, target, start):
    hl, wl = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
    if method == "fused":
        loss = vp.vocab_parallel_linear_cross_entropy(hl, wl, target, vocab_start=start)
        loss.backward()
        return loss.detach(), hl.grad, wl.grad
    logits = hl @ wl.T
    if method == "linear + loss":
        loss = vp.vocab_parallel_cross_entropy(logits, target, vocab_start=start)
    else:
        loss = loss_bench._Megatron.apply(logits, target, start, None)
    loss.backward()
    dist.all_reduce(hl.grad)  # the column-parallel head's input gradient: a sum over ranks
    return loss.detach(), hl.grad, wl.grad


def _rss_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_rank(rank, world, port, args, method, out):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    vp = loss_bench._load_symce()
    h, w, target, start = _inputs(rank, world, args)
    _step(method, vp, h, w, target, start)  # warm-up: kernels built, buffers faulted in
    dist.barrier()
    before = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    _step(method, vp, h, w, target, start)
    peak = _rss_kb("VmHWM")
    if rank == 0:
        Path(out).write_text(json.dumps({"extra_mb": (peak - before) / 1024}))
    dist.destroy_process_group()


def _time_rank(rank, world, port, args, out):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    vp = loss_bench._load_symce()
    h, w, target, start = _inputs(rank, world, args)
    found, reference = {}, None
    for method in METHODS:  # warm up, and the agreement of the methods
        loss, dh, dw = _step(method, vp, h, w, target, start)
        if reference is None:
            reference = (loss, dh, dw)
        found[method] = {"loss": float(loss),
                         "max_diff": max(float((a - b).abs().max())
                                         for a, b in zip((dh, dw), reference[1:], strict=True))}
    times = {m: [] for m in METHODS}
    for r in range(args.repeats):
        for method in METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]:
            dist.barrier()
            started = time.perf_counter()
            _step(method, vp, h, w, target, start)
            times[method].append(time.perf_counter() - started)
    for method in METHODS:
        found[method]["ms"] = 1e3 * statistics.median(times[method])
    if rank == 0:
        Path(out).write_text(json.dumps(found))
    dist.destroy_process_group()


def _launch(target, world, *args):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.start_processes(target, args=(world, loss_bench._free_port(), *args, out), nprocs=world,
                           join=True, start_method="fork")
        return json.loads(Path(out).read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    vp = loss_bench._load_symce()
    vp.vocab_parallel_linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3),
                                           torch.tensor([0, 3]), vocab_start=0)  # kernels built
    print(f"N = {args.rows}, H = {args.hidden}, V = {args.classes} split evenly, float32, "
          f"gloo on 127.0.0.1, {os.cpu_count()} cores, median of {args.repeats} interleaved "
          "steps (forward + backward); load average before: "
          + ", ".join(f"{a:.2f}" for a in os.getloadavg()), flush=True)
    print(f"{'ranks':>5} {'method':>24} {'ms/step':>9} {'vs fused':>9} {'peak extra MB':>14} "
          f"{'loss':>10} {'max |Δgrad|':>12}")
    for world in args.ranks:
        found = _launch(_time_rank, world, args)
        peaks = {m: _launch(_peak_rank, world, args, m)["extra_mb"] for m in METHODS}
        for method in METHODS:
            f = found[method]
            print(f"{world:>5} {method:>24} {f['ms']:>9.1f} {f['ms'] / found['fused']['ms']:>9.2f} "
                  f"{peaks[method]:>14.1f} {f['loss']:>10.6f} {f['max_diff']:>12.2e}", flush=True)
    print("load average after: " + ", ".join(f"{a:.2f}" for a in os.getloadavg()))


if __name__ == "__main__":
    main()
