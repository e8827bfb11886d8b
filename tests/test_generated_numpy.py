"""generated/cross_entropy_numpy.py against torch float64 (loss and autograd gradient)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.forking import passes_in_forked_child
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


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "array"])
def test_z_term_off_costs_nothing_even_where_its_square_overflows(compiled):
    """At z_loss = 0 the kernels have no λ·ℓ² (z_loss is specialised): ℓ² = inf costs no NaN."""
    x = np.array([[1e20, -1e20, 0.0]], dtype=np.float32)
    ce.use_compiled(compiled)
    try:
        loss, grad = ce.cross_entropy_with_grad(x, np.array([1]))
    finally:
        ce.use_compiled(None)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_array_equal(grad, [[1.0, -1.0, 0.0]])


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
    key = ("index", False, False, False, False)  # (kind, weighted, smoothed, z_loss, softcap)
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
    ce.set_num_threads(2)
    x = np.random.default_rng(1).standard_normal((30, 9))
    y = np.arange(30) % 9
    want = ce.cross_entropy(x, y)  # the parent's pool now exists
    # the child: a pool's threads do not survive fork
    assert passes_in_forked_child(lambda: ce.cross_entropy(x, y) == want)


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


def test_helpers_run_under_the_callers_error_settings(small_blocks):
    x = np.random.default_rng(2).standard_normal((40, 9))
    x[30, 4] = np.inf  # x - max = inf - inf in a block that a helper may take
    y = np.arange(40) % 9
    for threads in (1, 3):
        ce.set_num_threads(threads)
        with np.errstate(all="raise"), pytest.raises(FloatingPointError):
            ce.cross_entropy_with_grad(x, y)


def test_a_call_does_not_wait_for_helpers_queued_behind_another_call(small_blocks, monkeypatch):
    import threading

    key = ("index", False, False, False, False)  # (kind, weighted, smoothed, z_loss, softcap)
    constants, block = ce._KERNELS[key]
    inside, release = threading.Semaphore(0), threading.Event()

    def held(*args, **kwargs):  # the big call's blocks wait until the small call is done
        inside.release()
        if not release.wait(timeout=30):
            raise TimeoutError("the small call never finished")
        return block(*args, **kwargs)

    monkeypatch.setitem(ce._KERNELS, key, (constants, held))
    ce.set_num_threads(2)  # one helper thread in the pool
    rng = np.random.default_rng(3)
    x_big, y_big = rng.standard_normal((40, 9)), np.arange(40) % 9
    x_small, w = rng.standard_normal((40, 9)), rng.random(9) + 0.5
    big = {}
    caller = threading.Thread(target=lambda: big.update(out=ce.cross_entropy_with_grad(
        x_big, y_big)))
    caller.start()
    assert inside.acquire(timeout=30) and inside.acquire(timeout=30)  # both threads held
    small = {}
    other = threading.Thread(target=lambda: small.update(out=ce.cross_entropy_with_grad(
        x_small, y_big, weight=w)))  # another kernel: not held
    other.start()
    other.join(timeout=20)
    finished_first = not other.is_alive()
    release.set()
    caller.join(timeout=30)
    other.join(timeout=30)
    assert finished_first, "the small call waited for a helper busy with the big call"
    monkeypatch.setitem(ce._KERNELS, key, (constants, block))
    ce.set_num_threads(1)
    np.testing.assert_array_equal(big["out"][1], ce.cross_entropy_with_grad(x_big, y_big)[1])
    np.testing.assert_array_equal(small["out"][1],
                                  ce.cross_entropy_with_grad(x_small, y_big, weight=w)[1])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_fork_while_another_thread_holds_the_pool_lock(small_blocks):
    import threading

    ce.set_num_threads(2)
    x = np.random.default_rng(4).standard_normal((30, 9))
    y = np.arange(30) % 9
    want = ce.cross_entropy(x, y)
    held, done = threading.Event(), threading.Event()

    def hold():
        with ce._pool_lock:
            held.set()
            done.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(timeout=30)
    try:
        assert passes_in_forked_child(lambda: ce.cross_entropy(x, y) == want, timeout=20)
    finally:
        done.set()
        holder.join()


def test_no_helper_threads_to_be_had_runs_on_the_calling_thread(small_blocks, monkeypatch):
    def refused(count):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    x = np.random.default_rng(5).standard_normal((40, 9))
    y = np.arange(40) % 9
    ce.set_num_threads(1)
    want = ce.cross_entropy_with_grad(x, y)
    monkeypatch.setattr(ce, "_helpers", refused)
    ce.set_num_threads(3)
    got = ce.cross_entropy_with_grad(x, y)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


def test_dot_products_without_np_vecdot(small_blocks, monkeypatch):
    """NumPy 1.x has no vecdot: the einsum path gives the same result."""
    monkeypatch.setattr(ce, "_VECDOT", None)
    for case in THREAD_CASES[:2]:
        assert_parity(ce, case)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["index", "probability"])
def test_zero_positions_like_torch(reduction, target):
    import torch
    import torch.nn.functional as F

    x = np.zeros((2, 3, 0))
    t = np.zeros((2, 0), dtype=np.int64) if target == "index" else np.zeros((2, 3, 0))
    loss, grad = ce.cross_entropy_with_grad(x, t, reduction=reduction)
    want = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), reduction=reduction)
    np.testing.assert_array_equal(np.abs(np.asarray(loss)), np.abs(want.numpy()))
    assert grad.shape == x.shape


def test_zero_upstream_gradients_give_zero_gradients():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(6)
    x, p = rng.standard_normal((6, 5)), rng.random((6, 5))
    g = np.array([0.0, 1.5, 0.0, -2.0, 0.3, 0.0])
    got = ce.cross_entropy_backward(x, p, grad_output=g, reduction="none", label_smoothing=0.1)
    xt = torch.tensor(x, requires_grad=True)
    F.cross_entropy(xt, torch.tensor(p), reduction="none", label_smoothing=0.1).backward(
        torch.tensor(g))
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-12, atol=1e-15)
