"""The torch module's tests, run unchanged against the generated Triton module.

CPU tensors under Triton's interpreter (this file sets ``TRITON_INTERPRET=1``
before triton is imported), small shapes.  The tests of
tests/test_generated_torch.py and tests/test_generated_bad_inputs.py are
collected here with the ``module`` fixture pointing at the Triton module; the
parity table runs again with class tiles of four, so the online log-sum-exp
crosses tiles; then what only the Triton module has (``inplace``).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if "triton" not in sys.modules:
    # read when triton and the module's @triton.jit kernels are defined, and at launch
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

if not isinstance(triton.language.cdiv, InterpretedFunction):
    pytest.skip("triton was imported for the GPU before this file could set TRITON_INTERPRET=1;"
                " run it on its own: pytest tests/test_triton_parity.py", allow_module_level=True)

from symce.verify.parity import CASES, HALF_CASES, Case, assert_parity  # noqa: E402
from tests import test_generated_bad_inputs as bad_inputs  # noqa: E402

GENERATED = Path(__file__).resolve().parent.parent / "generated" / "cross_entropy_triton.py"


def _load():
    spec = importlib.util.spec_from_file_location("cross_entropy_triton_interpreted", GENERATED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ce = _load()

#: cases whose rows cross several class tiles (of four classes)
TILED = [c for c in CASES if c.shape[1:2] and c.shape[1] > 4 and c.dtype == "float64"][::3]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the interpreter is numpy-bound; share the machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def module():
    """The module under test in the torch module's tests collected below."""
    return ce


# The cross-entropy-only checks this module had from the torch tests before they
# covered every loss (the Triton port runs tests/test_generated_torch.py itself)
@pytest.mark.parametrize("case", CASES + HALF_CASES, ids=lambda c: c.name)
def test_parity_table(case):
    assert_parity(ce, case)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 12)),
        st.tuples(st.integers(1, 6), st.integers(1, 12)),
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3)),
    ),
    target=st.sampled_from(["index", "probability"]),
    weight=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    dtype=st.sampled_from(["float64", "float32", "float16", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_parity_random(shape, target, weight, reduction, label_smoothing, dtype, seed):
    case = Case("random", shape, target=target, weight=weight,
                ignore="some" if target == "index" else "none", reduction=reduction,
                label_smoothing=label_smoothing, dtype=dtype, seed=seed)
    assert_parity(ce, case)


def test_backward_is_the_saved_gradient_scaled():
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 4, 2, 1])
    (ce.cross_entropy(x, y) * 3.0).backward()
    x2 = x.detach().clone().requires_grad_(True)
    (torch.nn.functional.cross_entropy(x2, y) * 3.0).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_module_options_and_buffer():
    w = torch.rand(6) + 0.1
    loss_fn = ce.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum",
                                  label_smoothing=0.2)
    assert torch.equal(dict(loss_fn.named_buffers())["weight"], w)
    x, y = torch.randn(5, 6), torch.tensor([0, 2, 5, 1, 2])
    ref = torch.nn.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum",
                                    label_smoothing=0.2)
    torch.testing.assert_close(loss_fn(x, y), ref(x, y))


@pytest.mark.parametrize("name", sorted(bad_inputs.BAD))
def test_bad_input_raises_clear_error(name):
    bad_inputs.test_bad_input_raises_clear_error("triton", ce, "cross_entropy", name)


@pytest.mark.parametrize("case", TILED, ids=lambda c: c.name)
def test_parity_across_class_tiles(case: Case, monkeypatch):
    monkeypatch.setattr(ce, "_MAX_BLOCK_C", 4)
    monkeypatch.setattr(ce, "_TILE", 16)  # and several rows per tile for K-dim inputs
    assert_parity(ce, case)


def test_inplace_writes_the_gradient_over_the_logits():
    x = torch.randn(4, 9, dtype=torch.float64)
    target = torch.tensor([0, 8, 3, 3])
    leaf = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(leaf, target), leaf)[0]
    logits = x.clone().requires_grad_(True)
    buffer = logits * 1.0  # an intermediate that nothing else saved
    ce.cross_entropy(buffer, target, inplace=True).backward()
    torch.testing.assert_close(logits.grad, expected)
    torch.testing.assert_close(buffer.detach(), expected)  # the logits' memory holds it


def test_inplace_over_logits_autograd_saved_fails_loudly():
    """Liger's in-place gradient silently corrupts such logits; here backward refuses."""
    leaf = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    logits = torch.exp(leaf)  # exp saves its output for its own backward
    loss = ce.cross_entropy(logits, torch.tensor([1, 2, 3]), inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_default_leaves_the_logits_alone():
    x = torch.randn(3, 5, requires_grad=True)
    before = x.detach().clone()
    ce.CrossEntropyLoss(label_smoothing=0.1)(x, torch.tensor([1, 2, 3])).backward()
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=0)


def test_one_backward_per_forward():
    x = torch.randn(3, 5, requires_grad=True)
    loss = ce.cross_entropy(x, torch.tensor([1, 2, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


@given(
    shape=st.sampled_from([(5,), (3, 6), (2, 5, 3), (4, 9)]),
    kind=st.sampled_from(["index", "probability"]),
    weighted=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.15, 1.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    block_c=st.sampled_from([2, 4, 16384]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=15, deadline=None)
def test_random_options_match_torch(shape, kind, weighted, smoothing, reduction, block_c, seed):
    gen = torch.Generator().manual_seed(seed)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    if kind == "index":
        batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
        target = torch.randint(-1, n_classes, batch, generator=gen)
    else:
        target = torch.rand(shape, generator=gen, dtype=torch.float64)
    options = dict(weight=torch.rand(n_classes, generator=gen, dtype=torch.float64)
                   if weighted else None, ignore_index=-1 if kind == "index" else -100,
                   reduction=reduction,
                   label_smoothing=smoothing)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    old = ce._MAX_BLOCK_C
    ce._MAX_BLOCK_C = block_c
    try:
        loss = ce.cross_entropy(ours, target, **options)
    finally:
        ce._MAX_BLOCK_C = old
    want = torch.nn.functional.cross_entropy(theirs, target, **options)
    upstream = torch.rand(want.shape, generator=gen, dtype=torch.float64)
    loss.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(loss, want, equal_nan=True)
    torch.testing.assert_close(ours.grad, theirs.grad, equal_nan=True)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(ce)
    assert result.attempted > 0 and result.failed == 0
