"""The generated Triton module on a CUDA device: parity, large shapes, memory.

Skipped without a CUDA device (the interpreter tests are
tests/test_triton_parity.py).  The speed goals are measured by
benchmarks/gpu_cross_entropy.py, not here.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU tests need one", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("TRITON_INTERPRET is set: these tests compile for the GPU",
                allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from symce.verify.parity import CASES, HALF_CASES, Case, assert_parity  # noqa: E402

GENERATED = Path(__file__).resolve().parent.parent / "generated" / "cross_entropy_triton.py"
spec = importlib.util.spec_from_file_location("cross_entropy_triton_gpu", GENERATED)
ce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ce)
CUDA = torch.device("cuda")


def _cuda(t):
    return None if t is None else t.to(CUDA)


class _OnCuda:
    """The module's API for CPU tensors, computed on the GPU (the parity helper's tensors)."""

    @staticmethod
    def cross_entropy(input, target, weight=None, **options):
        return ce.cross_entropy(input.to(CUDA), _cuda(target), _cuda(weight), **options).cpu()

    @staticmethod
    def CrossEntropyLoss(weight=None, **options):  # noqa: N802 - the module's class name
        module = ce.CrossEntropyLoss(weight=_cuda(weight), **options)
        return lambda input, target: module(input.to(CUDA), _cuda(target)).cpu()


@pytest.mark.parametrize("case", CASES + HALF_CASES, ids=lambda c: c.name)
def test_parity_on_gpu(case: Case):
    assert_parity(_OnCuda, case)


@pytest.mark.parametrize("dtype, n, c", [
    (torch.bfloat16, 64, 128256),
    (torch.float32, 64, 32000),
    (torch.float16, 33, 50257),
])
@pytest.mark.parametrize("options", [
    {}, {"label_smoothing": 0.1, "ignore_index": 5},
    {"weight": True, "label_smoothing": 0.05, "reduction": "sum"},
])
def test_large_vocabulary(dtype, n, c, options):
    gen = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randn(n, c, device=CUDA, generator=gen).mul_(4).to(dtype)
    target = torch.randint(0, c, (n,), device=CUDA, generator=gen)
    target[::7] = options.get("ignore_index", -100)
    options = dict(options)
    if options.pop("weight", False):
        options["weight"] = torch.rand(c, device=CUDA, generator=gen) + 0.5
    ours = x.clone().requires_grad_(True)
    ref = x.double().requires_grad_(True)
    loss = ce.cross_entropy(ours, target, **options)
    weight = options.pop("weight", None)
    want = torch.nn.functional.cross_entropy(
        ref, target, weight=None if weight is None else weight.double(), **options)
    loss.backward()
    want.backward()
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(loss.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("inplace", [False, True])
def test_extra_memory_is_at_most_one_logits_buffer(inplace):
    n, c = 512, 32000
    x = torch.randn(n, c, device=CUDA, dtype=torch.bfloat16)
    target = torch.randint(0, c, (n,), device=CUDA)
    logits = x.clone().requires_grad_(True)
    ce.cross_entropy(logits * 1, target, inplace=inplace).backward()  # compile, warm up
    logits.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ce.cross_entropy(logits, target, inplace=inplace).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    size = x.numel() * x.element_size()
    # the gradient buffer becomes logits.grad (inplace: the logits' own memory);
    # the rest is per-row (N floats)
    assert extra <= (0 if inplace else size) + (1 << 20), extra


def test_gpu_targets_out_of_range_give_nan_not_a_sync():
    x = torch.randn(4, 10, device=CUDA)
    loss = ce.cross_entropy(x, torch.tensor([0, 12, 3, 3], device=CUDA), reduction="none")
    assert torch.isnan(loss[1]) and not torch.isnan(loss[[0, 2, 3]]).any()
