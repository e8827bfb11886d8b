"""CPU time of a user's own loss: the module symce generates from a formula vs eager torch.

The loss is PolyLoss-1 (Leng et al., 2022), which symce does not ship:

    symce.define_loss("poly1", "-sum(p*log(q)) + epsilon*sum(p*(1 - q))",
                      params={"epsilon": 1.0})

Its torch module is generated into a temporary folder (never into generated/)
and timed, forward and backward of the mean over class-index targets, against
eager torch autograd of the same formula written two ways: literally (a
one-hot ``p``) and as a careful user would (``gather`` at the target).  Every
variant runs once per round, rounds interleaved, medians reported, ratios
from the same run (the machine is shared and noisy).

    python benchmarks/cpu_user_loss.py                     # 2048x32000 float32, 5 rounds
    python benchmarks/cpu_user_loss.py --shape 256x4000 --rounds 3   # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORMULA = "-sum(p*log(q)) + epsilon*sum(p*(1 - q))"
EPS = 1.0


def eager_onehot(x, y):
    """The formula as written, in torch: p one-hot, q and log q over the whole row."""
    logq = F.log_softmax(x, dim=1)
    p = F.one_hot(y, x.shape[1]).to(x.dtype)
    return (-(p * logq).sum(1) + EPS * (p * (1 - logq.exp())).sum(1)).mean()


def eager_gather(x, y):
    """The same loss as a careful user writes it: the target's entries gathered."""
    logq_y = F.log_softmax(x, dim=1).gather(1, y[:, None])[:, 0]
    return (-logq_y + EPS * (1 - logq_y.exp())).mean()


def generated_module(folder: Path):
    import symce
    from symce.codegen import generate

    symce.define_loss("poly1", FORMULA, params={"epsilon": EPS})
    path = folder / "poly1_torch.py"
    path.write_text(generate("poly1", "torch"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("poly1_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step(fn, x, y):
    x.grad = None
    loss = fn(x, y)
    loss.backward()
    return loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2048x32000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, c = (int(v) for v in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        module = generated_module(Path(tmp))
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(n, c, generator=g) * 3).requires_grad_(True)
        y = torch.randint(0, c, (n,), generator=g)
        variants = {
            "symce poly1_torch": lambda a, b: module.poly1(a, b, epsilon=EPS),
            "eager torch (one-hot p)": eager_onehot,
            "eager torch (gather)": eager_gather,
        }
        # agreement first (float32 against float32 eager), then warm-up (C build)
        want = step(eager_gather, x, y).item()
        want_grad = x.grad.clone()
        got = step(variants["symce poly1_torch"], x, y).item()
        assert abs(got - want) <= 1e-4 * (1 + abs(want)), (got, want)
        assert torch.allclose(x.grad, want_grad, rtol=1e-3, atol=1e-6)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                step(fn, x, y)
                times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["eager torch (gather)"]
    print(f"shape {n}x{c} float32, forward + backward, median of {args.rounds} interleaved "
          f"rounds, torch threads {torch.get_num_threads()}")
    for name, t in medians.items():
        print(f"  {name:26} {t * 1e3:9.1f} ms   {t / base:5.2f}x eager (gather)   "
              f"{t / medians['eager torch (one-hot p)']:5.2f}x eager (one-hot)")
    print(json.dumps({"shape": [n, c], "median_s": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
