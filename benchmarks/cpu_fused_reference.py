"""A hand-written fused CPU kernel as a yardstick for the generated one.

The generated modules now carry their own fused kernel (C printed from the
derivation by symce/codegen/c.py, compiled on first use). This script
compiles (about 30 s, needs a C++ compiler) a hand-written C++ kernel for
plain class-index targets and mean reduction, the same three walks per row
while the row is in cache, and times it beside ``F.cross_entropy`` forward +
backward, the generated module and the floor (one read of the logits, one
write of a gradient-sized buffer). It is not used by symce.

    python benchmarks/cpu_fused_reference.py [--rounds 15]

Build flags: ``-O3 -march=native -fopenmp -ffast-math``. ``-ffast-math`` lets
GCC call the vectorised ``exp2f`` of glibc's libmvec; it also assumes finite
values, so this reference is only checked on finite logits.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from cpu_cross_entropy import _load, machine
from torch.utils.cpp_extension import load_inline

SOURCE = r"""
#include <torch/extension.h>
#include <cmath>

// Per row i: m = max x, e_j = exp2((x_j - m) log2 e) into the gradient with
// s = sum e, then gradient = e * scale / s and gradient[y] -= scale; the row
// loss is log s - (x_y - m). Rows are shared out by OpenMP.
torch::Tensor loss_and_grad(torch::Tensor x, torch::Tensor y, torch::Tensor grad,
                            double scale) {
  const int64_t n = x.size(0), c = x.size(1);
  const float* xp = x.data_ptr<float>();
  const int64_t* yp = y.data_ptr<int64_t>();
  float* gp = grad.data_ptr<float>();
  auto losses = torch::empty({n}, torch::kFloat64);
  double* lp = losses.data_ptr<double>();
  const float log2e = 1.4426950408889634f;
  #pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = xp + i * c;
    float* gr = gp + i * c;
    float m = -INFINITY;
    #pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < c; ++j) m = xr[j] > m ? xr[j] : m;
    float s = 0.f;
    #pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < c; ++j) {
      const float e = exp2f((xr[j] - m) * log2e);
      gr[j] = e;
      s += e;
    }
    const float a = static_cast<float>(scale / s);
    #pragma omp simd
    for (int64_t j = 0; j < c; ++j) gr[j] *= a;
    gr[yp[i]] -= static_cast<float>(scale);
    lp[i] = std::log(static_cast<double>(s)) - static_cast<double>(xr[yp[i]] - m);
  }
  return losses;
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("compiling the reference kernel ...", flush=True)
    start = time.perf_counter()
    ext = load_inline("symce_fused_reference", cpp_sources=SOURCE,
                      functions=["loss_and_grad"],
                      extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math"],
                      extra_ldflags=["-fopenmp"])
    print(f"compiled in {time.perf_counter() - start:.1f} s")
    generated = _load("cross_entropy_torch")
    print("| shape | F.cross_entropy fwd+bwd ms | generated module | fused C++ reference "
          "| floor: read + write |")
    print("|---|---:|---:|---:|---:|")
    for n, c in ((8192, 1000), (2048, 32000)):
        measure(ext, generated, n, c, args.rounds)


def measure(ext, generated, n: int, c: int, rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=gen)
    y = torch.randint(0, c, (n,), generator=gen)
    xg = x.clone().requires_grad_()
    buffer = torch.empty_like(x)

    def fused():
        grad = torch.empty_like(x)
        return ext.loss_and_grad(x, y, grad, 1.0 / n).sum() / n, grad

    loss, grad = fused()  # checked against torch before it is timed
    want = F.cross_entropy(xg, y)
    want.backward()
    torch.testing.assert_close(loss, want.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, xg.grad, rtol=1e-4, atol=1e-7)

    def fwd_bwd(fn):
        def run():
            xg.grad = None
            fn(xg, y).backward()
        return run

    runs = {"F": fwd_bwd(F.cross_entropy), "generated": fwd_bwd(generated.cross_entropy),
            "fused": fused, "floor": lambda: buffer.copy_(x)}
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            begin = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - begin)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"| {n}×{c} | {med['F']:.1f} | {med['generated']:.1f} "
          f"({med['generated'] / med['F']:.2f}×) | {med['fused']:.1f} "
          f"({med['fused'] / med['F']:.2f}×) | {med['floor']:.1f} |", flush=True)

if __name__ == "__main__":
    main()
