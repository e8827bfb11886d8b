"""Modules with the torch API against torch float64 (loss and autograd gradient).

Parametrised over :data:`tests.parity.TORCH_API_MODULES`, so a new module with
the same API (Triton) runs the same table by adding its name there.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.parity import CASES, HALF_CASES, TORCH_API_MODULES, Case, assert_parity, load_generated

MODULES = {name: load_generated(name) for name in TORCH_API_MODULES}


@pytest.fixture(params=TORCH_API_MODULES)
def module(request):
    return MODULES[request.param]


@pytest.mark.parametrize("case", CASES + HALF_CASES, ids=lambda c: c.name)
def test_parity_table(module, case):
    assert_parity(module, case)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 12)),
        st.tuples(st.integers(1, 6), st.integers(1, 12)),
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3)),
    ),
    target=st.sampled_from(["index", "probability"]),
    weight=st.booleans(),
    ignore_index=st.sampled_from([-100, 1]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    dtype=st.sampled_from(["float64", "float32", "float16", "bfloat16"]),
    magnitude=st.sampled_from([1.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_parity_random(shape, target, weight, ignore_index, reduction, label_smoothing, dtype,
                       magnitude, seed):
    if target == "probability":
        ignore_index = -100
    if dtype in ("float16", "bfloat16"):
        magnitude = min(magnitude, 30.0)  # 1e4 logits are not representable in detail
    case = Case("random", shape, target=target, weight=weight, ignore="some",
                ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, dtype=dtype, magnitude=magnitude, seed=seed)
    for module in MODULES.values():
        assert_parity(module, case)


def test_backward_is_the_saved_gradient_scaled(module):
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 4, 2, 1])
    (module.cross_entropy(x, y) * 3.0).backward()
    x2 = x.detach().clone().requires_grad_(True)
    (F.cross_entropy(x2, y) * 3.0).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_no_grad_input_needs_no_gradient(module):
    x = torch.randn(3, 4)
    loss = module.cross_entropy(x, torch.tensor([0, 1, 2]))
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(x, torch.tensor([0, 1, 2])))


def test_module_options_and_buffer(module):
    w = torch.rand(6) + 0.1
    loss_fn = module.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum",
                                      label_smoothing=0.2)
    assert torch.equal(dict(loss_fn.named_buffers())["weight"], w)
    x, y = torch.randn(5, 6), torch.tensor([0, 2, 5, 1, 2])
    ref = torch.nn.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum",
                                    label_smoothing=0.2)
    torch.testing.assert_close(loss_fn(x, y), ref(x, y))


def test_blocks_cover_every_row(module, monkeypatch):
    """Tiny blocks: many tiles, partial last tiles, transposed tiles and slabs."""
    if not hasattr(module, "_BLOCK_BYTES"):
        pytest.skip("module has no block size")
    monkeypatch.setattr(module, "_BLOCK_BYTES", 64)
    for case in (Case("blocks-2d", (13, 5), weight=True, ignore="some", label_smoothing=0.1),
                 Case("blocks-kdim", (3, 5, 7), target="probability", weight=True,
                      label_smoothing=0.2, reduction="none"),
                 Case("blocks-slab", (2, 5, 150), weight=True, ignore="some",
                      label_smoothing=0.2, reduction="none", dtype="float16"),
                 Case("blocks-slab-prob", (2, 5, 150), target="probability", weight=True)):
        assert_parity(module, case)


def test_thread_setting_is_restored(module):
    threads = torch.get_num_threads()
    module.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert torch.get_num_threads() == threads


def test_second_backward_is_refused_clearly(module):
    x = torch.randn(3, 4, requires_grad=True)
    loss = module.cross_entropy(x, torch.tensor([0, 1, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


def test_legacy_reduction_arguments(module):
    x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    loss = module.CrossEntropyLoss(size_average=False)(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(x, y, reduction="sum"))


def _against_torch(module, x, target, **kwargs):
    """Loss and gradient of ``module`` and of F.cross_entropy (float64 inputs)."""
    got_x = x.clone().requires_grad_()
    want_x = x.clone().requires_grad_()
    got = module.cross_entropy(got_x, target, **kwargs)
    want = F.cross_entropy(want_x, target, **kwargs)
    if got.numel() and got.dim() == 0 and not torch.isnan(want):
        got.backward()
        want.backward()
        torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("targets, ignore_index", [
    ([0, 2, 2, 1, 3], 2),    # ignore_index is a class, and present: those rows drop out
    ([0, 1, 1, 3, 0], 2),    # a class, absent: nothing is ignored
    ([0, 1, 1, 3, 0], -100),  # the default, absent
    ([0, 1, -100, 3, 0], -100),  # the default, present
    ([0, 1, 7, 3, 0], 7),    # outside the classes, present
])
def test_ignore_index_inside_and_outside_the_class_range(module, targets, ignore_index):
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for reduction in ("mean", "sum", "none"):
        _against_torch(module, x, torch.tensor(targets), ignore_index=ignore_index,
                       reduction=reduction)


@pytest.mark.parametrize("targets", [[0, 4, -100], [-1, 0, 1], [0, 1, -100, 5]])
def test_out_of_range_target_beside_ignored_ones_is_an_index_error(module, targets):
    x = torch.randn(len(targets), 4, dtype=torch.float64)
    with pytest.raises(IndexError, match="out of bounds"):
        module.cross_entropy(x, torch.tensor(targets))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_like_torch(module, reduction):
    x = torch.zeros(0, 4, dtype=torch.float64)
    _against_torch(module, x, torch.zeros(0, dtype=torch.int64), reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_positions_like_torch(module, reduction):
    x = torch.zeros(2, 3, 0, dtype=torch.float64)
    _against_torch(module, x, torch.zeros(2, 0, dtype=torch.int64), reduction=reduction)
