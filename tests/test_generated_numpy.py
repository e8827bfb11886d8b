"""generated/cross_entropy_numpy.py against torch float64 (loss and autograd gradient)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.parity import CASES, Case, assert_parity, load_generated

ce = load_generated("cross_entropy_numpy")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_parity_table(case):
    assert_parity(ce, case)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 12)),
        st.tuples(st.integers(0, 6), st.integers(1, 12)),
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3)),
    ),
    target=st.sampled_from(["index", "probability"]),
    weight=st.booleans(),
    ignore=st.sampled_from(["none", "some"]),
    ignore_index=st.sampled_from([-100, 0, 2]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_smoothing=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    normalised=st.booleans(),
    dtype=st.sampled_from(["float64", "float32"]),
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_parity_random(shape, target, weight, ignore, ignore_index, reduction,
                       label_smoothing, normalised, dtype, magnitude, seed):
    if target == "probability":
        ignore_index = -100  # torch refuses ignore_index with probability targets
    if shape[0] == 0 and reduction == "mean":
        reduction = "sum"  # an empty mean is NaN in both; covered by the table
    case = Case("random", shape, target=target, weight=weight, ignore=ignore,
                ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, normalised=normalised, dtype=dtype,
                magnitude=magnitude, seed=seed)
    assert_parity(ce, case)


def test_blocks_cover_every_row(monkeypatch):
    """Tiny blocks: many tiles, partial last tiles, K-dim tiles across positions."""
    monkeypatch.setattr(ce, "_BLOCK_BYTES", 64)
    for case in (Case("blocks-2d", (13, 5), weight=True, ignore="some", label_smoothing=0.1),
                 Case("blocks-kdim", (3, 5, 7), target="probability", weight=True,
                      label_smoothing=0.2, reduction="none"),
                 Case("blocks-slab", (2, 5, 150), weight=True, ignore="some",
                      label_smoothing=0.2, reduction="none"),
                 Case("blocks-slab-prob", (2, 5, 150), target="probability", weight=True)):
        assert_parity(ce, case)


def test_with_grad_matches_backward_for_none():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 6)), rng.integers(0, 6, 4)
    loss, grad = ce.cross_entropy_with_grad(x, y, reduction="none")
    np.testing.assert_allclose(ce.cross_entropy_backward(x, y, np.ones(4), reduction="none"),
                               grad, rtol=1e-12)
    np.testing.assert_allclose(loss.sum(), ce.cross_entropy(x, y, reduction="sum"), rtol=1e-12)


def test_input_is_not_modified():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    p = rng.random((5, 7)).astype(np.float32)
    x0, p0 = x.copy(), p.copy()
    ce.cross_entropy_with_grad(x, p, label_smoothing=0.1)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(p, p0)


def test_extreme_logits_are_finite():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    loss, grad = ce.cross_entropy_with_grad(x, np.array([1, 2]), reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, [2e4, np.log(3)], rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 33), (3, 5, 40)], ids=["2d", "kdim-as-it-lies"])
@pytest.mark.parametrize("target", ["index", "probability"])
def test_float16_input_is_computed_in_float32(target, shape):
    case = Case("numpy-float16", shape, target=target, dtype="float16", weight=True,
                label_smoothing=0.1, ignore="some" if target == "index" else "none")
    assert_parity(ce, case)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kdim_with_many_positions_as_it_lies(dtype):
    for target in ("index", "probability"):
        assert_parity(ce, Case("kdim-40", (9, 6, 40), target=target, dtype=dtype, weight=True,
                               label_smoothing=0.1, reduction="none",
                               ignore="some" if target == "index" else "none"))


# -- threads and chunked products ------------------------------------------------
THREAD_CASES = (
    Case("threads-2d", (37, 9), weight=True, ignore="some", label_smoothing=0.1),
    Case("threads-prob", (37, 9), target="probability", weight=True, label_smoothing=0.2,
         reduction="none"),
    Case("threads-kdim", (5, 9, 7), target="probability", weight=True, label_smoothing=0.2),
    # 3·40·8 = 960 bytes a sample: whole samples, two to a block of 2048 bytes
    Case("threads-samples", (7, 3, 40), weight=True, ignore="some", label_smoothing=0.1),
    Case("threads-samples-prob", (7, 3, 40), target="probability", weight=True,
         reduction="none"),
    Case("threads-slab", (3, 9, 150), weight=True, ignore="some", label_smoothing=0.2,
         reduction="none"),
    Case("threads-slab-prob", (3, 9, 150), target="probability", weight=True,
         label_smoothing=0.1),
)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows and product chunks of a row or two: many of each per call."""
    monkeypatch.setattr(ce, "_BLOCK_BYTES", 256)
    monkeypatch.setattr(ce, "_CHUNK_ELEMENTS", 12)
    yield
    ce.set_num_threads(None)


@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: c.name)
def test_threads_agree_with_torch_and_with_one_thread_bit_for_bit(small_blocks, monkeypatch,
                                                                   case):
    from symce.verify.parity import make_inputs

    if case.name.startswith("threads-samples"):
        monkeypatch.setattr(ce, "_BLOCK_BYTES", 2048)
        assert len(list(ce._tiles(7, 40, 3, 8))) == 4  # the layout this case is for

    x, target, weight, _ = make_inputs(case)
    results = []
    for threads in (1, 3):
        ce.set_num_threads(threads)
        assert ce.get_num_threads() == threads
        assert_parity(ce, case)
        results.append(ce.cross_entropy_with_grad(x, target, weight=weight,
                                                  reduction=case.reduction,
                                                  label_smoothing=case.label_smoothing))
    (loss1, grad1), (loss3, grad3) = results
    np.testing.assert_array_equal(loss1, loss3)
    np.testing.assert_array_equal(grad1, grad3)


def test_error_in_one_block_is_raised_and_the_pool_survives(small_blocks, monkeypatch):
    key = ("index", False, False)
    constants, block = ce._KERNELS[key]
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise FloatingPointError("block four")
        return block(*args, **kwargs)

    monkeypatch.setitem(ce._KERNELS, key, (constants, failing))
    ce.set_num_threads(3)
    x = np.random.default_rng(0).standard_normal((40, 9))
    y = np.arange(40) % 9
    with pytest.raises(FloatingPointError, match="block four"):
        ce.cross_entropy_with_grad(x, y)
    monkeypatch.setitem(ce._KERNELS, key, (constants, block))
    ce.set_num_threads(3)
    loss, grad = ce.cross_entropy_with_grad(x, y)
    ce.set_num_threads(1)
    loss1, grad1 = ce.cross_entropy_with_grad(x, y)
    assert loss == loss1
    np.testing.assert_array_equal(grad, grad1)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_forked_child_computes_with_threads(small_blocks):
    import os

    ce.set_num_threads(2)
    x = np.random.default_rng(1).standard_normal((30, 9))
    y = np.arange(30) % 9
    want = ce.cross_entropy(x, y)  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # the child: a pool's threads do not survive fork
        ok = False
        try:
            ok = ce.cross_entropy(x, y) == want
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="positive integer"):
        ce.set_num_threads(bad)


def test_thread_count_from_environment(monkeypatch):
    ce.set_num_threads(None)
    monkeypatch.setenv("SYMCE_NUM_THREADS", "3")
    assert ce.get_num_threads() == 3
    monkeypatch.setenv("SYMCE_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="SYMCE_NUM_THREADS"):
        ce.get_num_threads()
    monkeypatch.delenv("SYMCE_NUM_THREADS")
    assert ce.get_num_threads() >= 1
