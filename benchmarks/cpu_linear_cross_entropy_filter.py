"""What CCE-style gradient filtering (``filter_eps``) does to the head's accuracy and time.

symce's ``generated/linear_cross_entropy_torch.py`` with ``filter_eps=None``
(off, the default) and ``filter_eps="auto"`` (the input dtype's eps / 32:
2**-12 for bfloat16, 2**-28 for float32), forward + backward of the ``mean``
loss with the gradients of ``input`` and ``linear_weight``, on two kinds of
logits:

- ``peaked``: a trained-like head.  The vocabulary has a Zipf prior (the
  bias ``-1.1 log(1 + j)`` of class ``j``, the classes in frequency order as a
  tokenizer numbers them), the targets are drawn from it, and each row of
  ``input`` points at its target's row of ``linear_weight``, so the head
  predicts its targets well (the mean target probability is printed) and most
  softmax entries, those of the rare classes above all, are tiny;
- ``random``: ``input`` and ``linear_weight`` Gaussian, logits about N(0, 1),
  uniform targets: no entry is small, nothing should be skipped.

Accuracy: the largest and the relative (Frobenius) error of ``dh`` and ``dW``
against torch's chunked ``F.linear_cross_entropy`` in float64 on the same
(rounded) inputs; the fraction of vocabulary blocks skipped
(``filter_stats()``).  Time: off and on interleaved, medians of ``--rounds``,
the ratio from the same process.

    python benchmarks/cpu_linear_cross_entropy_filter.py               # N=4096 H=512 V=32000
    python benchmarks/cpu_linear_cross_entropy_filter.py --quick
    python benchmarks/cpu_linear_cross_entropy_filter.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FULL = (4096, 512, 32000)
QUICK = (512, 128, 4000)
SETTINGS = {"off": None, "auto": "auto"}


def _load():
    import importlib.util

    path = ROOT / "generated" / "linear_cross_entropy_torch.py"
    spec = importlib.util.spec_from_file_location("linear_cross_entropy_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(kind, shape, seed=0):
    """float64 ``(h, W, b, t)`` of the ``peaked`` or ``random`` kind."""
    n, hidden, c = shape
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, hidden, generator=g, dtype=torch.float64) * hidden ** -0.5
    if kind == "random":
        h = torch.randn(n, hidden, generator=g, dtype=torch.float64)
        return h, W, None, torch.randint(0, c, (n,), generator=g)
    prior = -1.1 * torch.log1p(torch.arange(c, dtype=torch.float64))
    t = torch.multinomial(torch.softmax(prior, 0), n, replacement=True, generator=g)
    W = W * 3.0  # logits of spread ~3 between unrelated classes
    h = 3.0 * W[t] / W[t].norm(dim=1, keepdim=True) ** 2 * 4.0  # target logit ~ +12
    h = h + torch.randn(n, hidden, generator=g, dtype=torch.float64) * 0.3
    return h, W, prior, t


def _reference(h, W, b, t):
    h, W = (p.detach().double().requires_grad_() for p in (h, W))
    b = None if b is None else b.double()
    options = torch.nn.LinearCrossEntropyOptions()
    loss = F.linear_cross_entropy(h, W, t, linear_bias=b, options=options)
    return torch.autograd.grad(loss, (h, W))


def _errors(got, want):
    out = {}
    for name, a, w in zip(("dh", "dW"), got, want, strict=True):
        d = a.double() - w
        out[name] = {"max": float(d.abs().max()), "relative": float(d.norm() / w.norm())}
    return out


def run(kind, dtype, shape, rounds, module):
    h64, W64, b64, t = inputs(kind, shape)
    cast = getattr(torch, dtype)
    h, W = (p.to(cast).requires_grad_() for p in (h64, W64))
    b = None if b64 is None else b64.to(cast)
    with torch.no_grad():  # the target's probability, for the record
        x = torch.addmm(b64, h64, W64.t()) if b64 is not None else h64 @ W64.t()
        p_target = float(torch.softmax(x, 1).gather(1, t[:, None]).mean())
        del x
    want = _reference(h, W, b, t)

    def step(setting):
        h.grad = W.grad = None
        module.linear_cross_entropy(h, W, t, linear_bias=b,
                                    filter_eps=SETTINGS[setting]).backward()
        return h.grad, W.grad

    result = {"mean_target_probability": p_target}
    for setting in SETTINGS:
        grads = step(setting)
        stats = module.filter_stats() if setting != "off" else None
        result[setting] = {"errors": _errors(grads, want)}
        if stats is not None:
            result[setting]["skipped_fraction"] = stats["skipped"] / max(1, stats["blocks"])
            result[setting]["threshold"] = stats["threshold"]
    times = {s: [] for s in SETTINGS}
    for _ in range(rounds):
        for setting in SETTINGS:
            t0 = time.perf_counter()
            step(setting)
            times[setting].append(time.perf_counter() - t0)
    for setting in SETTINGS:
        result[setting]["median_s"] = statistics.median(times[setting])
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"shape {QUICK} instead of {FULL}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", nargs="*", default=["peaked", "random"],
                    choices=["peaked", "random"])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"])
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    shape = QUICK if args.quick else FULL
    module = _load()
    print(f"N, H, V = {shape}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"rounds {args.rounds}; filter_block {module.filter_block()}; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'logits':<8}{'dtype':<10}{'filter':<7}{'skipped':>9}{'time s':>9}{'on/off':>8}"
          f"{'dh max err':>12}{'dh rel':>10}{'dW max err':>12}{'dW rel':>10}")
    results = {}
    for kind in args.kinds:
        for dtype in args.dtypes:
            r = run(kind, dtype, shape, args.rounds, module)
            results[f"{kind} {dtype}"] = r
            for setting in SETTINGS:
                e = r[setting]["errors"]
                skipped = r[setting].get("skipped_fraction")
                print(f"{kind:<8}{dtype:<10}{setting:<7}"
                      f"{'-' if skipped is None else f'{skipped:.1%}':>9}"
                      f"{r[setting]['median_s']:>9.3f}"
                      f"{r[setting]['median_s'] / r['off']['median_s']:>8.2f}"
                      f"{e['dh']['max']:>12.2e}{e['dh']['relative']:>10.2e}"
                      f"{e['dW']['max']:>12.2e}{e['dW']['relative']:>10.2e}")
            print(f"{'':<8}mean target probability {r['mean_target_probability']:.3f}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "results": results}, indent=1))


if __name__ == "__main__":
    main()
