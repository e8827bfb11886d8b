"""The generated Triton modules on a CUDA device: parity, large vocabularies, memory.

Skipped without a CUDA device (the interpreter tests are
tests/test_triton_parity.py, with the same case table).  The speed goals are
measured by benchmarks/gpu_cross_entropy.py, not here.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU tests need one", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("TRITON_INTERPRET is set: these tests compile for the GPU",
                allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from tests.triton_cases import CASES, HALF_CASES, REFERENCES, Case, assert_case, load  # noqa: E402

LOSSES = ("cross_entropy", "focal_loss", "kl_distillation")
MODULES = {loss: load(loss, "gpu") for loss in LOSSES}
CUDA = torch.device("cuda")


@pytest.mark.parametrize("case", CASES + HALF_CASES, ids=lambda c: c.name)
def test_parity_on_gpu(case: Case):
    assert_case(MODULES[case.loss], case, device=CUDA)


def _large(loss, dtype, n, c, options):
    gen = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randn(n, c, device=CUDA, generator=gen).mul_(4).to(dtype)
    options = dict(options)
    if loss == "kl_distillation":
        target = torch.randn(n, c, device=CUDA, generator=gen).mul_(4).to(dtype)
    else:
        target = torch.randint(0, c, (n,), device=CUDA, generator=gen)
        target[::7] = options.get("ignore_index", -100)
        if options.pop("weight", False):
            options["weight"] = torch.rand(c, device=CUDA, generator=gen) + 0.5
    return x, target, options


@pytest.mark.parametrize("dtype, n, c", [
    (torch.bfloat16, 64, 128256),
    (torch.float32, 64, 32000),
    (torch.float16, 33, 50257),
])
@pytest.mark.parametrize("loss, options", [
    ("cross_entropy", {}),
    ("cross_entropy", {"label_smoothing": 0.1, "ignore_index": 5, "z_loss": 1e-4,
                       "softcap": 30.0}),
    ("cross_entropy", {"weight": True, "label_smoothing": 0.05, "reduction": "sum"}),
    ("focal_loss", {"gamma": 2.0}),
    ("focal_loss", {"gamma": 1.5, "label_smoothing": 0.1, "weight": True}),
    ("kl_distillation", {"temperature": 2.0}),
])
def test_large_vocabulary(dtype, n, c, loss, options):
    x, target, options = _large(loss, dtype, n, c, options)
    ours = x.clone().requires_grad_(True)
    ref = x.double().requires_grad_(True)
    got = getattr(MODULES[loss], loss)(ours, target, **options)
    ref_options = {k: v.double() if isinstance(v, torch.Tensor) else v
                   for k, v in options.items()}
    ref_target = target.double() if target.is_floating_point() else target
    want = REFERENCES[loss](ref, ref_target, **ref_options)
    got.backward()
    want.backward()
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("inplace", [False, True])
def test_extra_memory_is_at_most_one_logits_buffer(loss, inplace):
    n, c = 512, 32000
    x, target, _ = _large(loss, torch.bfloat16, n, c, {})
    fn = getattr(MODULES[loss], loss)
    logits = x.clone().requires_grad_(True)
    fn(logits * 1, target, inplace=inplace).backward()  # compile, warm up
    logits.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(logits, target, inplace=inplace).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    size = x.numel() * x.element_size()
    # the gradient buffer becomes logits.grad (inplace: the logits' own memory);
    # the rest is per-row (N floats)
    assert extra <= (0 if inplace else size) + (1 << 20), extra


@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss"])
def test_gpu_targets_out_of_range_give_nan_not_a_sync(loss):
    x = torch.randn(4, 10, device=CUDA)
    out = getattr(MODULES[loss], loss)(x, torch.tensor([0, 12, 3, 3], device=CUDA),
                                      reduction="none")
    assert torch.isnan(out[1]) and not torch.isnan(out[[0, 2, 3]]).any()
