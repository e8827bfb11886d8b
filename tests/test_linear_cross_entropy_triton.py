"""generated/linear_cross_entropy_triton.py against F.linear_cross_entropy (Triton interpreter).

CPU tensors with ``TRITON_INTERPRET=1`` (set here before triton is imported),
small shapes, float64 to 1e-9: the loss and the gradients to ``input``,
``linear_weight`` and ``linear_bias``; several chunks and class tiles of four
(the kernel's online maximum crosses tiles); z-loss and soft-capping against
symce's generated torch ``cross_entropy`` on the materialised logits.
"""

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

if not isinstance(triton.language.cdiv, InterpretedFunction):
    pytest.skip("triton was imported for the GPU before this file could set TRITON_INTERPRET=1;"
                " run it on its own", allow_module_level=True)

from tests.parity import load_generated  # noqa: E402

head = load_generated("linear_cross_entropy_triton")
loss_module = load_generated("cross_entropy_torch")

pytestmark = pytest.mark.filterwarnings(
    "ignore:(divide by zero|invalid value|overflow) encountered:RuntimeWarning")

N, H, V = 6, 4, 7
WEIGHTS = torch.linspace(0.3, 1.5, V, dtype=torch.float64)
CHUNKS = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4)


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the interpreter is numpy-bound; share the machine
    monkeypatch.setattr(head, "_MAX_BLOCK_C", 4)
    yield
    torch.set_num_threads(threads)


def _inputs(kind="index", shape=(N,)):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(*shape, H, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(V, H, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(V, dtype=torch.float64, generator=g).requires_grad_()
    if kind == "index":
        t = torch.randint(0, V, shape, generator=g)
        t.view(-1)[2] = -100
    else:
        t = torch.softmax(torch.randn(*shape, V, dtype=torch.float64, generator=g), dim=-1)
    return h, W, b, t


def _compare(out, ref, params):
    go = torch.rand(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, params, go)
    want = torch.autograd.grad(ref, params, go)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


CASES = [("index", "mean", {}), ("index", "sum", {"weight": WEIGHTS, "label_smoothing": 0.2}),
         ("index", "none", {"label_smoothing": 0.1}), ("probability", "mean", {"weight": WEIGHTS}),
         ("probability", "none", {"label_smoothing": 0.3})]


@pytest.mark.parametrize("kind,reduction,options", CASES,
                         ids=[f"{k}-{r}-{'+'.join(o) or 'plain'}" for k, r, o in CASES])
def test_parity_with_torch(kind, reduction, options):
    h, W, b, t = _inputs(kind)
    kw = dict(options, reduction=reduction)
    out = head.linear_cross_entropy(h, W, t, linear_bias=b, options=CHUNKS, **kw)
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b, **kw)
    _compare(out, ref, (h, W, b))


@pytest.mark.parametrize("params", [{"z_loss": 0.2}, {"softcap": 2.0}],
                         ids=["z_loss", "softcap"])
def test_loss_parameters_against_the_loss_on_logits(params):
    h, W, b, t = _inputs()
    kw = dict(params, weight=WEIGHTS, label_smoothing=0.1)
    out = head.linear_cross_entropy(h, W, t, linear_bias=b, options=CHUNKS, **kw)
    ref = loss_module.cross_entropy(F.linear(h, W, b), t, **kw)
    _compare(out, ref, (h, W, b))


def test_batch_time_input_and_module():
    h, W, b, t = _inputs(shape=(2, 3))
    module = head.LinearCrossEntropyLoss(label_smoothing=0.1)
    out = module(h, W, t, b)
    ref = F.linear_cross_entropy(h.reshape(-1, H), W, t.reshape(-1), linear_bias=b,
                                 label_smoothing=0.1)
    _compare(out, ref, (h, W, b))


def test_bad_inputs_raise():
    h, W, b, t = _inputs()
    with pytest.raises(ValueError, match="hidden size mismatch"):
        head.linear_cross_entropy(h[:, :2], W, t)
    with pytest.raises(ValueError, match="linear_bias must have shape"):
        head.linear_cross_entropy(h, W, t, linear_bias=b[:3])
    with pytest.raises(IndexError, match="out of bounds"):
        head.linear_cross_entropy(h, W, t.clone().fill_(V))
    with pytest.raises(ValueError, match="probability target must have shape"):
        head.linear_cross_entropy(h, W, torch.rand(N, V + 2, dtype=torch.float64))


FILTER_CASES = [("index", "none", {"weight": WEIGHTS}),
                ("probability", "sum", {"label_smoothing": 0.1})]


@pytest.mark.parametrize("kind,reduction,options", FILTER_CASES,
                         ids=[f"{k}-{r}-{'+'.join(o) or 'plain'}" for k, r, o in FILTER_CASES])
def test_gradient_filtering_against_the_reference_with_the_skipped_blocks_zeroed(
        kind, reduction, options, monkeypatch):
    """filter_eps as in tests/test_linear_cross_entropy_filter.py (its float64 reference,
    its shapes, chunks and blocks): the skipped blocks' entries zeroed, targets kept;
    threshold 0 (first case) gives torch's gradients."""
    from tests import test_linear_cross_entropy_filter as ref

    monkeypatch.setattr(head, "_MAX_BLOCK_C", 64)  # one class tile: the blocks are the head's

    weighted = {k: (ref.WEIGHTS if k == "weight" else v) for k, v in options.items()}
    h, W, b, t = ref._inputs(kind)
    go = (torch.rand(ref.N, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
          + 0.5 if reduction == "none" else torch.tensor(1.3, dtype=torch.float64))
    *_, maxima = ref._reference(h, W, b, t, kind, reduction, weighted, go)
    k = len(maxima) // 2
    eps = math.sqrt(maxima[k - 1] * maxima[k])
    dh, dW, db, skipped, blocks, _ = ref._reference(h, W, b, t, kind, reduction, weighted, go,
                                                    eps)
    head.filter_block(ref.WIDTH)
    try:
        out = head.linear_cross_entropy(
            h, W, t, linear_bias=b, reduction=reduction, filter_eps=eps,
            options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=ref.ROWS), **weighted)
        got = torch.autograd.grad(out, (h, W, b), go)
        stats = head.filter_stats()
        if kind == "index":
            zero = head.linear_cross_entropy(h, W, t, linear_bias=b, reduction=reduction,
                                             filter_eps=0.0, **weighted)
            zero_got = torch.autograd.grad(zero, (h, W, b), go)
            assert head.filter_stats()["skipped"] == 0
            plain = F.linear_cross_entropy(h, W, t, linear_bias=b, reduction=reduction,
                                           **weighted)
            for a, want in zip(zero_got, torch.autograd.grad(plain, (h, W, b), go),
                               strict=True):
                torch.testing.assert_close(a, want, rtol=0, atol=1e-9)
    finally:
        head.filter_block(0)
    assert 0 < skipped < blocks and (stats["skipped"], stats["blocks"]) == (skipped, blocks)
    for a, want in zip(got, (dh, dW, db), strict=True):
        torch.testing.assert_close(a, want, rtol=0, atol=1e-12)


def test_half_precision_weight_gradient_accumulates_in_float32():
    """bfloat16 over 8 chunks of 4 rows: the first chunk adds -256 to dW's first row,
    each later one -1 (every row's gradient on its target, class 0, is -1: its logit
    is far below the others').  Summed in float32 that is -263 (-264 in bfloat16); a
    bfloat16 running sum would stay at -256 (256 - 1 rounds back to 256)."""
    rows = torch.cat([torch.full((4,), 64.0), torch.full((28,), 0.25)])
    h = rows[:, None].expand(32, H).to(torch.bfloat16).requires_grad_()
    W = torch.zeros(V, H)
    W[0] = -40.0
    W = W.to(torch.bfloat16).requires_grad_()
    t = torch.zeros(32, dtype=torch.long)
    head.linear_cross_entropy(h, W, t, reduction="sum", options=CHUNKS).backward()
    assert W.grad.dtype == torch.bfloat16
    assert torch.all((W.grad[0].float() + 263).abs() <= 1), W.grad[0]
