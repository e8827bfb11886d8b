"""The generated torch modules' per-call glue (issue #8): the public function's shortcut
past ``Function.apply``'s argument binding, and one denominator sum for terms that
share a row weight, against PyTorch's cross-entropy (float64)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.parity import load_generated

CE = load_generated("cross_entropy_torch")


def _reference(x, y, **options):
    """PyTorch's loss and gradient, in float64."""
    x64 = x.detach().double().requires_grad_()
    options = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    loss = F.cross_entropy(x64, y, **options)
    (grad,) = torch.autograd.grad(loss, x64)
    return loss, grad


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("options", [
    {},
    # ignore_index among the targets: the valid rows' count is the denominator of
    # both terms (one sum), the weights' sum that of the cross-entropy
    {"ignore_index": 2},
    {"weight": torch.linspace(0.5, 2.0, 7), "label_smoothing": 0.1, "ignore_index": 2},
])
def test_loss_and_gradient_as_pytorch(compiled, options):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 3, generator=gen, requires_grad=True)
    y = torch.randint(0, 7, (5, 3), generator=gen)
    y[0, 0] = 2
    CE.use_compiled(compiled)
    try:
        loss = CE.cross_entropy(x, y, **options)
        loss.backward()
    finally:
        CE.use_compiled(None)
    ref, ref_grad = _reference(x, y, **options)
    assert loss.dtype == torch.float32 and loss.grad_fn is not None
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("z_loss", [0.0, 0.5])
def test_everything_ignored_is_nan_as_pytorch(z_loss):
    """Both terms' denominators zero (one shared sum): NaN loss, zero gradient; the z
    term NaN too, even where z_loss = 0 makes its rows 0 (0 / 0)."""
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.full((4,), 3)
    loss, z = CE.cross_entropy(x, y, ignore_index=3, z_loss=z_loss, return_z_loss=True)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(z)
    assert torch.isnan(F.cross_entropy(x.detach(), y, ignore_index=3))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_a_leaked_functorch_tensor_is_unwrapped():
    """A tensor kept from inside a finished ``torch.func.grad`` is a dead wrapper:
    the public function unwraps it, as ``Function.apply`` does."""
    leaked = []

    def keep(t):
        leaked.append(t)
        return t.sum()

    x = torch.randn(6, 4)
    torch.func.grad(keep)(x)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = CE.cross_entropy(leaked[0], y)
    torch.testing.assert_close(loss.double(), _reference(x, y)[0], rtol=1e-6, atol=1e-6)


def test_under_torch_func_the_function_takes_functorchs_path():
    """Under a transform the public function goes through ``Function.apply`` (functorch's
    custom_function_call): ``torch.func.grad`` against PyTorch's gradient."""
    x = torch.randn(3, 6, dtype=torch.float64)
    y = torch.tensor([5, 0, 2])
    grad = torch.func.grad(lambda t: CE.cross_entropy(t, y, label_smoothing=0.2))(x)
    torch.testing.assert_close(grad, _reference(x, y, label_smoothing=0.2)[1])


def test_the_shortcut_past_function_apply_only_where_its_code_is_known(monkeypatch):
    """``_apply`` skips ``Function.apply``'s binding only while ``Function.apply`` names
    what its torch 2.13 code names; a torch whose ``apply`` does more gets ``apply``
    itself, with the same results."""
    assert CE._apply_is_known()
    monkeypatch.setattr(CE, "_APPLY_NAMES", CE._APPLY_NAMES - {"unwrap_dead_wrappers"})
    assert not CE._apply_is_known()
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 6, 2, 3, 1])
    shortcut = torch.autograd.grad(CE.cross_entropy(x, y), x)[0]
    called = []
    original = CE.CrossEntropyFunction.apply

    def apply(*args):
        called.append(True)
        return original(*args)

    monkeypatch.setattr(CE, "_UNWRAP_IF_DEAD", None)
    monkeypatch.setattr(CE.CrossEntropyFunction, "apply", apply)
    fallback = torch.autograd.grad(CE.cross_entropy(x, y), x)[0]
    assert called
    assert torch.equal(shortcut, fallback)
    torch.testing.assert_close(fallback, _reference(x, y)[1])


@pytest.mark.parametrize("denominator", [2048.0, 3.0, 0.0, -0.0, -7.0, 5e-324, 1e-310,
                                         float("inf"), float("-inf"), float("nan")])
def test_a_tensor_denominators_scale_is_divides_bit_for_bit(denominator):
    """``_scales`` takes ``1 / d`` as torch's reciprocal, once for terms sharing ``d``:
    the same bits as ``1.0 / d`` (0 where d is 0) rounded to float32."""
    d = torch.tensor(denominator, dtype=torch.float64)
    scales = CE._scales({"cross_entropy": d, "z": d}, "mean", None, (2, 1, 3), (2, 3),
                        torch.float32, torch.device("cpu"))
    expected = torch.where(d != 0, 1.0 / d, 0.0).to(torch.float32)
    for scale in scales.values():
        assert scale.dtype == torch.float32
        assert scale.view(torch.int32).item() == expected.view(torch.int32).item()


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_term_switched_off_reduces_to_plus_zero(compiled, reduction):
    """z_loss = 0: the z term's rows are 0, so its reduction is skipped: +0.0 exactly,
    with NaN and infinite logits too, and the total is PyTorch's cross-entropy
    (NaN where PyTorch's is NaN)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 2, generator=gen)
    x[0, 1, 0] = float("nan")
    x[1, :, 1] = float("inf")
    x[2, 3, 0] = -float("inf")
    y = torch.randint(0, 5, (6, 2), generator=gen)
    CE.use_compiled(compiled)
    try:
        loss, z = CE.cross_entropy(x, y, reduction=reduction, return_z_loss=True)
        empty_loss, empty_z = CE.cross_entropy(x[:0], y[:0], reduction=reduction,
                                               return_z_loss=True)
    finally:
        CE.use_compiled(None)
    assert z.dtype == torch.float32 and z.view(torch.int32).item() == 0  # +0.0
    ref = F.cross_entropy(x.double(), y, reduction=reduction)
    assert torch.isnan(loss) and torch.isnan(ref)
    finite = x[3:], y[3:]
    CE.use_compiled(compiled)
    try:
        loss, z = CE.cross_entropy(*finite, reduction=reduction, return_z_loss=True)
    finally:
        CE.use_compiled(None)
    assert z.view(torch.int32).item() == 0
    torch.testing.assert_close(loss.double(), F.cross_entropy(finite[0].double(), finite[1],
                                                              reduction=reduction))
    # no rows: the mean is 0 / 0 (NaN, as PyTorch's), the sum +0.0
    empty_ref = F.cross_entropy(x[:0].double(), y[:0], reduction=reduction)
    if reduction == "mean":
        assert torch.isnan(empty_loss) and torch.isnan(empty_z) and torch.isnan(empty_ref)
    else:
        assert empty_loss.item() == 0.0 == empty_ref.item()
        assert empty_z.view(torch.int32).item() == 0


def test_the_overhead_benchmark_runs():
    """benchmarks/percall_overhead.py, a smoke run (no timing judged): it must finish and
    report both cases for the working tree."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "percall_overhead.py"), ".", "--shape",
         "tiny", "--rounds", "2"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("beyond the kernel") == 2
    assert proc.stdout.count("F.cross_entropy") == 2
