"""generated/linear_cross_entropy_torch.py against PyTorch 2.13's F.linear_cross_entropy.

float64 parity to 1e-9 for the loss and the gradients to ``input``,
``linear_weight`` and ``linear_bias`` on every option (torch's reference
path, ``options=None``, is the reference); z-loss and soft-capping against
symce's generated ``cross_entropy`` on the materialised logits; several
chunks (``batch_chunk_size``) give the same numbers; bad inputs raise.
"""

from __future__ import annotations

import itertools
import types

import pytest
import torch
import torch.nn.functional as F

from tests.parity import load_generated

head = load_generated("linear_cross_entropy_torch")
loss_module = load_generated("cross_entropy_torch")

N, H, V = 7, 5, 9
TOL64 = 1e-9


def _inputs(shape=(N,), dtype=torch.float64, kind="index", bias=True, ignore=-100, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, H, dtype=dtype, generator=g, requires_grad=True)
    W = torch.randn(V, H, dtype=dtype, generator=g).mul_(0.7).requires_grad_()
    b = torch.randn(V, dtype=dtype, generator=g).requires_grad_() if bias else None
    if kind == "index":
        t = torch.randint(0, V, shape, generator=g)
        if t.dim() > 0 and ignore is not None:
            t.view(-1)[1] = ignore  # one ignored row
    else:
        t = torch.softmax(torch.randn(*shape, V, dtype=dtype, generator=g), dim=-1)
    return h, W, b, t


def _compare(out, ref, params, tol):
    go = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(1))
    live = [p for p in params if p is not None]
    got = torch.autograd.grad(out, live, go)
    want = torch.autograd.grad(ref, live, go)
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


WEIGHTS = torch.linspace(0.2, 1.7, V, dtype=torch.float64)
OPTIONS = [{}, {"weight": WEIGHTS}, {"label_smoothing": 0.15},
           {"weight": WEIGHTS, "label_smoothing": 0.3}]
CASES = [(kind, reduction, opts, bias)
         for kind, reduction, opts, bias in itertools.product(
             ("index", "probability"), ("mean", "sum", "none"), range(len(OPTIONS)),
             (True, False))]


@pytest.mark.parametrize("kind,reduction,opts,bias", CASES)
def test_float64_parity_with_torch(kind, reduction, opts, bias):
    h, W, b, t = _inputs(kind=kind, bias=bias)
    kw = dict(OPTIONS[opts], reduction=reduction)
    out = head.linear_cross_entropy(h, W, t, linear_bias=b, **kw)
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b, **kw)
    _compare(out, ref, (h, W, b), TOL64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [3, -1])
def test_ignore_index_and_chunks(reduction, ignore_index):
    h, W, b, t = _inputs(shape=(11,), ignore=ignore_index)
    t[4] = ignore_index
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=3)
    kw = {"reduction": reduction, "ignore_index": ignore_index, "weight": WEIGHTS}
    out = head.linear_cross_entropy(h, W, t, linear_bias=b, options=options, **kw)
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b, **kw)
    _compare(out, ref, (h, W, b), TOL64)


def test_every_row_ignored_is_nan_with_zero_gradients():
    h, W, b, t = _inputs()
    t.fill_(-100)
    out = head.linear_cross_entropy(h, W, t, linear_bias=b)
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b)
    assert torch.isnan(out) and torch.isnan(ref)
    out.backward()
    assert h.grad.abs().max() == 0 and W.grad.abs().max() == 0 and b.grad.abs().max() == 0


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_unbatched_input(kind):
    h, W, b, t = _inputs(shape=(), kind=kind)
    out = head.linear_cross_entropy(h, W, t, linear_bias=b, label_smoothing=0.1)
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b, label_smoothing=0.1)
    _compare(out, ref, (h, W, b), TOL64)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_batch_time_input_is_flattened(reduction):
    h, W, b, t = _inputs(shape=(2, 3))
    out = head.linear_cross_entropy(h, W, t, linear_bias=b, reduction=reduction)
    ref = F.linear_cross_entropy(h.reshape(-1, H), W, t.reshape(-1), linear_bias=b,
                                 reduction=reduction)
    assert out.shape == ((2, 3) if reduction == "none" else ())
    _compare(out, ref.reshape(out.shape), (h, W, b), TOL64)


PARAMS = [{"z_loss": 0.3}, {"softcap": 2.5}, {"z_loss": 0.1, "softcap": 1.5}]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "+".join(p))
@pytest.mark.parametrize("kind,reduction", [("index", "mean"), ("index", "none"),
                                            ("probability", "sum")])
def test_loss_parameters_against_the_loss_on_logits(params, kind, reduction):
    h, W, b, t = _inputs(kind=kind)
    kw = dict(params, reduction=reduction, label_smoothing=0.1)
    if kind == "index":
        kw["weight"] = WEIGHTS
    out = head.linear_cross_entropy(h, W, t, linear_bias=b,
                                    options=torch.nn.LinearCrossEntropyOptions(
                                        batch_chunk_size=2), **kw)
    ref = loss_module.cross_entropy(F.linear(h, W, b), t, **kw)
    _compare(out, ref, (h, W, b), TOL64)


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "weight": WEIGHTS.float()},
                                     {"z_loss": 0.2, "softcap": 3.0}])
def test_float32_compiled_chunks_against_float64(options):
    h, W, b, t = _inputs(shape=(40,))
    h32, W32, b32 = (p.detach().float().requires_grad_() for p in (h, W, b))
    out = head.linear_cross_entropy(h32, W32, t, linear_bias=b32,
                                    options=torch.nn.LinearCrossEntropyOptions(
                                        batch_chunk_size=16), **options)
    ref_options = {k: (v.double() if isinstance(v, torch.Tensor) else v)
                   for k, v in options.items()}
    ref = loss_module.cross_entropy(F.linear(h, W, b), t, **ref_options)
    out.backward()
    ref.backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=1e-5)
    for a, r in ((h32, h), (W32, W), (b32, b)):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=0, atol=1e-5)


def test_chunk_budget_gives_the_same_result():
    h, W, b, t = _inputs(shape=(23,))
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b, label_smoothing=0.2)
    before = head.chunk_bytes()
    try:
        head.chunk_bytes(2 * V * 8 * 4)  # four rows a chunk
        out = head.linear_cross_entropy(h, W, t, linear_bias=b, label_smoothing=0.2)
    finally:
        head.chunk_bytes(0)
    assert head.chunk_bytes() == before
    _compare(out, ref, (h, W, b), TOL64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    h, W, b, t = _inputs(shape=(12,), dtype=torch.float32)
    hh, Wh, bh = (p.detach().to(dtype).requires_grad_() for p in (h, W, b))
    out = head.linear_cross_entropy(hh, Wh, t, linear_bias=bh)
    assert out.dtype == dtype
    out.backward()
    ref = F.linear_cross_entropy(*(p.detach().float().requires_grad_() for p in (hh, Wh)), t,
                                 linear_bias=bh.detach().float())
    torch.testing.assert_close(out.float(), ref, rtol=0.02, atol=0.02)
    assert hh.grad.dtype == dtype and Wh.grad.dtype == dtype and bh.grad.dtype == dtype


def test_retained_graph_second_backward_and_grad_output():
    h, W, b, t = _inputs()
    out = head.linear_cross_entropy(h, W, t, linear_bias=b)
    (2.5 * out).backward(retain_graph=True)
    first = [p.grad.clone() for p in (h, W, b)]
    for p in (h, W, b):
        p.grad = None
    out.backward()
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b)
    want = torch.autograd.grad(ref, (h, W, b))
    for a, g, w in zip(first, (h.grad, W.grad, b.grad), want, strict=True):
        torch.testing.assert_close(a, 2.5 * w, rtol=0, atol=TOL64)
        torch.testing.assert_close(g, w, rtol=0, atol=TOL64)


def test_module_and_no_grad():
    h, W, b, t = _inputs()
    module = head.LinearCrossEntropyLoss(weight=WEIGHTS, label_smoothing=0.1, reduction="sum")
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b, weight=WEIGHTS, label_smoothing=0.1,
                                 reduction="sum")
    _compare(module(h, W, t, b), ref, (h, W, b), TOL64)
    with torch.no_grad():
        value = head.linear_cross_entropy(h, W, t, linear_bias=b)
    assert not value.requires_grad
    torch.testing.assert_close(value, F.linear_cross_entropy(h, W, t, linear_bias=b).detach(),
                               rtol=0, atol=TOL64)


def test_gradient_to_one_argument_only():
    h, W, b, t = _inputs()
    W.requires_grad_(False)
    b.requires_grad_(False)
    out = head.linear_cross_entropy(h, W, t, linear_bias=b)
    ref = F.linear_cross_entropy(h, W, t, linear_bias=b)
    _compare(out, ref, (h,), TOL64)


BAD = [
    ("hidden", lambda h, W, b, t: (h[:, :3], W, t, {"linear_bias": b}), ValueError,
     "hidden size mismatch"),
    ("bias", lambda h, W, b, t: (h, W, t, {"linear_bias": b[:4]}), ValueError,
     r"linear_bias must have shape \(9,\)"),
    ("weight_3d", lambda h, W, b, t: (h, W.reshape(V, H, 1), t, {}), ValueError,
     "linear_weight must be"),
    ("target_range", lambda h, W, b, t: (h, W, t.clone().fill_(V), {}), IndexError,
     "out of bounds"),
    ("target_shape", lambda h, W, b, t: (h, W, t[:3], {}), ValueError,
     "class-index target must have shape"),
    ("probability_shape", lambda h, W, b, t: (h, W, torch.rand(N, V + 1, dtype=h.dtype), {}),
     ValueError, "probability target must have shape"),
    ("probability_ignore", lambda h, W, b, t: (h, W, torch.rand(N, V, dtype=h.dtype),
                                               {"ignore_index": 1}),
     ValueError, "ignore_index cannot be specified"),
    ("dtype", lambda h, W, b, t: (h.float(), W, t, {}), ValueError, "same dtype"),
    ("reduction", lambda h, W, b, t: (h, W, t, {"reduction": "avg"}), ValueError,
     "reduction must be"),
    ("z_loss", lambda h, W, b, t: (h, W, t, {"z_loss": -1.0}), ValueError, "z_loss must be"),
    ("chunk", lambda h, W, b, t: (h, W, t, {"options": types.SimpleNamespace(
        batch_chunk_size=0)}), ValueError, "batch_chunk_size"),
]


@pytest.mark.parametrize("name,make,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise(name, make, error, match):
    h, W, b, t = _inputs(ignore=None)
    *args, kw = make(h, W, b, t)
    with pytest.raises(error, match=match):
        head.linear_cross_entropy(*args, **kw)


class _Shapes(torch.utils._python_dispatch.TorchDispatchMode):
    """Every aten op's name and its outputs' shapes and storage sizes, as the head runs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        tensors = [o for o in outs if isinstance(o, torch.Tensor)]
        self.calls.append((func.overloadpacket.__name__, [tuple(o.shape) for o in tensors],
                           [o.untyped_storage().nbytes() // o.element_size() for o in tensors]))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_tensor_of_all_the_logits_and_ignored_rows_skip_the_gemm(dtype):
    n, v = 40, 64
    g = torch.Generator().manual_seed(5)
    h = torch.randn(n, H, dtype=dtype, generator=g, requires_grad=True)
    W = torch.randn(v, H, dtype=dtype, generator=g, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    t[::4] = -100  # 10 ignored rows
    options = types.SimpleNamespace(batch_chunk_size=8)
    with _Shapes() as shapes:
        loss = head.linear_cross_entropy(h, W, t, options=options, label_smoothing=0.1)
        loss.backward()
    # no storage holds half the logits (the stand-in of their shape has one element)
    assert max(size for *_, sizes in shapes.calls for size in sizes) < n * v / 2
    logits = [out[0] for name, out, _ in shapes.calls if name in ("mm", "addmm")
              and out and out[0][-1] == v]
    assert sum(rows for rows, _ in logits) == n - 10  # the ignored rows took no GEMM
    ref = F.linear_cross_entropy(*(p.detach().double().requires_grad_() for p in (h, W)), t,
                                 label_smoothing=0.1)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=0, atol=1e-5)
