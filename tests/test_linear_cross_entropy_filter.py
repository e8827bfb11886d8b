"""Gradient filtering (``filter_eps``) of generated/linear_cross_entropy_torch.py.

The reference is independent of the module: torch autograd of
``F.cross_entropy`` on the float64 logits gives the gradient ``g`` of the
reduced loss; the entries the filter looks at are ``g`` times the reduction's
denominator (the gradient of the summed loss, before ``grad_output``); the
chunks (``batch_chunk_size`` rows of the non-ignored rows, in order) and the
vocabulary blocks (``filter_block()`` classes) are cut here; a block whose
entries other than the rows' targets are all below the threshold has those
entries zeroed, and ``dh = g W``, ``dW = gᵀ h`` follow by matmul (``db`` from
the unfiltered ``g``).  The threshold is taken between the blocks' own
maxima, so some blocks are skipped and the others must not be.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.parity import load_generated

head = load_generated("linear_cross_entropy_torch")

N, H, V = 13, 6, 37  # 37 classes: the last block is narrower
ROWS, WIDTH = 4, 8  # rows per chunk, classes per block
TOL = 1e-12
WEIGHTS = torch.linspace(0.3, 1.6, V, dtype=torch.float64)


@pytest.fixture(autouse=True)
def _block_width():
    head.filter_block(WIDTH)
    yield
    head.filter_block(0)


def _inputs(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, H, dtype=torch.float64, generator=g)
    b = torch.randn(V, dtype=torch.float64, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    # trained-like rows: each near its target's row of W (peaked softmax, many tiny entries)
    h = 2.0 * W[t] + 0.5 * torch.randn(N, H, dtype=torch.float64, generator=g)
    if kind == "index":
        t[5] = -100  # one ignored row: the chunks are cut from the others
    else:
        t = torch.softmax(3.0 * torch.randn(N, V, dtype=torch.float64, generator=g), dim=1)
    return h.requires_grad_(), W.requires_grad_(), b.requires_grad_(), t


def _denominator(kind, reduction, t, weight):
    if reduction != "mean":
        return 1.0
    if kind == "probability":
        return float(N)
    valid = t != -100
    w = torch.ones(V, dtype=torch.float64) if weight is None else weight
    return float(w[t[valid]].sum())


def _reference(h, W, b, t, kind, reduction, opts, go, eps=None):
    """(dh, dW, db, skipped blocks, blocks, block maxima) with the blocks below ``eps``
    zeroed (``eps=None``: only the maxima)."""
    x = (h @ W.T + b).detach().requires_grad_()
    out = F.cross_entropy(x, t, reduction=reduction, **opts)
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
    check = g * _denominator(kind, reduction, t, opts.get("weight"))
    rows = torch.arange(N) if kind == "probability" else torch.nonzero(t != -100).reshape(-1)
    keep = torch.ones_like(g, dtype=torch.bool)
    maxima, skipped = [], 0
    for r0 in range(0, len(rows), ROWS):
        chunk = rows[r0:r0 + ROWS]
        for c0 in range(0, V, WIDTH):
            block = check[chunk, c0:c0 + WIDTH].abs()
            if kind == "index":
                block = torch.where(t[chunk, None] == torch.arange(c0, c0 + block.shape[1]),
                                    0.0, block)
            maxima.append(float(block.max()))
            if eps is not None and maxima[-1] < eps:
                skipped += 1
                keep[chunk, c0:c0 + WIDTH] = False
    if kind == "index":  # the targets always count
        valid = torch.nonzero(t != -100).reshape(-1)
        keep[valid, t[valid]] = True
    scale = go.reshape(-1, 1) if reduction == "none" else go
    kept = torch.where(keep, g, 0.0) * scale
    return (kept @ W.detach(), kept.T @ h.detach(), (g * scale).sum(0), skipped, len(maxima),
            sorted(maxima))


def _run(h, W, b, t, reduction, opts, go, filter_eps):
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=ROWS)
    out = head.linear_cross_entropy(h, W, t, linear_bias=b, reduction=reduction,
                                    options=options, filter_eps=filter_eps, **opts)
    return torch.autograd.grad(out, (h, W, b), go)


CASES = [("index", "mean", {}), ("index", "sum", {"weight": WEIGHTS}),
         ("index", "none", {"label_smoothing": 0.05}),
         ("index", "mean", {"weight": WEIGHTS, "label_smoothing": 0.1}),
         ("probability", "mean", {}), ("probability", "none", {})]


@pytest.mark.parametrize("kind,reduction,opts", CASES)
def test_filtered_gradients_equal_the_reference_with_the_skipped_blocks_zeroed(kind, reduction,
                                                                               opts):
    h, W, b, t = _inputs(kind)
    go = (torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5
          if reduction == "none" else torch.tensor(1.7, dtype=torch.float64))
    *_, maxima = _reference(h, W, b, t, kind, reduction, opts, go)
    # between two of the blocks' maxima: about half the blocks below it
    k = len(maxima) // 2
    assert maxima[k - 1] < maxima[k]
    eps = math.sqrt(maxima[k - 1] * maxima[k]) if maxima[k - 1] > 0 else maxima[k] / 2
    dh, dW, db, skipped, blocks, _ = _reference(h, W, b, t, kind, reduction, opts, go, eps)
    assert skipped == k
    got = _run(h, W, b, t, reduction, opts, go, eps)
    assert head.filter_stats()["skipped"] == skipped and head.filter_stats()["blocks"] == blocks
    for a, want in zip(got, (dh, dW, db), strict=True):
        torch.testing.assert_close(a, want, rtol=0, atol=TOL)
    # and the filtering changed something: the unfiltered gradients differ from these
    plain = _run(h, W, b, t, reduction, opts, go, None)
    assert not torch.allclose(plain[1], got[1], rtol=0, atol=1e-9)


def test_a_skipped_block_keeps_its_rows_targets():
    """Blocks holding targets are skipped when everything else in them is small, and
    the targets' entries still reach dh and dW (a threshold above every non-target
    entry: every block skipped, only the targets count)."""
    h, W, b, t = _inputs("index")
    go = torch.tensor(1.0, dtype=torch.float64)
    *_, maxima = _reference(h, W, b, t, "index", "mean", {}, go)
    eps = 2 * maxima[-1]
    dh, dW, db, skipped, blocks, _ = _reference(h, W, b, t, "index", "mean", {}, go, eps)
    assert skipped == blocks
    got = _run(h, W, b, t, "mean", {}, go, eps)
    assert head.filter_stats()["skipped"] == blocks
    valid = torch.nonzero(t != -100).reshape(-1)
    assert float(dh[valid].abs().min()) > 0  # every row's gradient is its target's entry
    for a, want in zip(got, (dh, dW, db), strict=True):
        torch.testing.assert_close(a, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_threshold_zero_and_off_give_torchs_gradients(kind):
    h, W, b, t = _inputs(kind)
    go = torch.tensor(0.8, dtype=torch.float64)
    out = F.linear_cross_entropy(h, W, t, linear_bias=b)
    want = torch.autograd.grad(out, (h, W, b), go)
    for eps in (None, 0.0, 0):
        got = _run(h, W, b, t, "mean", {}, go, eps)
        if eps is not None:
            assert head.filter_stats()["skipped"] == 0
        for a, w in zip(got, want, strict=True):
            torch.testing.assert_close(a, w, rtol=0, atol=1e-9)


def test_auto_is_the_dtypes_eps_over_32_and_the_module_takes_it():
    h, W, b, t = _inputs("index")
    for dtype, want in ((torch.bfloat16, 2.0 ** -12), (torch.float32, 2.0 ** -28),
                        (torch.float64, 2.0 ** -57)):
        hh, Wh = (p.detach().to(dtype).requires_grad_() for p in (h, W))
        head.linear_cross_entropy(hh, Wh, t, filter_eps="auto").backward()
        assert head.filter_stats()["threshold"] == want
    loss = head.LinearCrossEntropyLoss(filter_eps=1e-3)
    h.grad = None
    loss(h, W, t, b).backward()
    assert head.filter_stats()["threshold"] == 1e-3


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf"), "fast", True, [1e-3]])
def test_bad_filter_eps_raises(bad):
    h, W, b, t = _inputs("index")
    with pytest.raises(ValueError, match="filter_eps"):
        head.linear_cross_entropy(h, W, t, filter_eps=bad).backward()


def test_bad_filter_block_raises():
    with pytest.raises(ValueError, match="filter_block"):
        head.filter_block(-8)
    assert head.filter_block() == WIDTH


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
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4)
    head.linear_cross_entropy(h, W, t, reduction="sum", options=options).backward()
    assert W.grad.dtype == torch.bfloat16
    assert torch.all((W.grad[0].float() + 263).abs() <= 1), W.grad[0]
