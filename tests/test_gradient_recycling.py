"""The generated torch modules recycle their CPU gradient buffers.

A gradient storage is handed out again only when nothing but the module's pool
references it; every gradient is compared with PyTorch's, and every gradient
still held must keep its values while later calls run.
"""

import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from tests.parity import load_generated

MODULE = load_generated("cross_entropy_torch")
ROWS, CLASSES = 512, 700  # 1.4 MB of float32: above the recycling threshold


def _inputs(seed, rows=ROWS):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, CLASSES, generator=generator, requires_grad=True)
    y = torch.randint(0, CLASSES, (rows,), generator=generator)
    return x, y


def _grad(x, y, **options):
    MODULE.cross_entropy(x, y, **options).backward()
    return x.grad


def _reference(x, y, **options):
    (grad,) = torch.autograd.grad(F.cross_entropy(x, y, **options), x)
    return grad


@pytest.fixture(autouse=True)
def _recycling_on():
    before = MODULE.recycle_gradients(False)  # each test starts with nothing kept
    MODULE.recycle_gradients(True)
    yield
    MODULE.recycle_gradients(before)


def test_a_dropped_gradient_is_handed_out_again_with_the_right_values():
    x, y = _inputs(0)
    first = _grad(x, y).data_ptr()
    x.grad = None
    x2, y2 = _inputs(1)
    again = _grad(x2, y2)
    assert again.data_ptr() == first
    torch.testing.assert_close(again, _reference(x2, y2))


def test_a_gradient_still_referenced_is_never_reused():
    x, y = _inputs(2)
    held = _grad(x, y)
    kept = held.clone()
    view = held[3:7]  # a view, and an array of it, keep the storage alive too
    array = held.numpy()
    x.grad = None
    seen, alive = {held.data_ptr()}, []
    for seed in range(3, 8):
        xs, ys = _inputs(seed)
        alive.append(xs)  # each gradient stays referenced (xs.grad)
        grad = _grad(xs, ys, label_smoothing=0.1)
        assert grad.data_ptr() not in seen
        torch.testing.assert_close(grad, _reference(xs, ys, label_smoothing=0.1))
        seen.add(grad.data_ptr())
    torch.testing.assert_close(held, kept)
    torch.testing.assert_close(view, kept[3:7])
    torch.testing.assert_close(torch.from_numpy(array), kept)


def test_a_gradient_consumed_inside_a_graph_is_recycled_and_the_weights_are_right():
    """Logits from a layer: autograd frees the loss's gradient once the layer's
    backward has read it, so the next step reuses it."""
    generator = torch.Generator().manual_seed(9)
    h = torch.randn(ROWS, 32, generator=generator)
    w = torch.randn(CLASSES, 32, generator=generator, requires_grad=True)
    y = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    pointers = []
    original = MODULE._gradient_like

    def spy(t):
        grad, grad3 = original(t)
        pointers.append(grad.data_ptr())
        return grad, grad3

    MODULE._gradient_like = spy
    try:
        for _ in range(3):
            w.grad = None
            MODULE.cross_entropy(h @ w.t(), y).backward()
            (want,) = torch.autograd.grad(F.cross_entropy(h @ w.t(), y), w)
            torch.testing.assert_close(w.grad, want)
    finally:
        MODULE._gradient_like = original
    assert len(set(pointers)) == 1


def test_threads_never_share_a_buffer():
    """Four threads, switching as often as the interpreter allows (a storage picked
    from the pool looks free until its tensor exists: once that was outside the
    lock, and 7-17 of 600 gradients came out wrong here)."""
    expected = {}
    for seed in range(4):
        x, y = _inputs(20 + seed, rows=380)  # just above the threshold: short calls
        expected[seed] = (x, y, _reference(x, y))
    errors, calls = [], []
    barrier = threading.Barrier(4)

    def work(seed):
        x, y, want = expected[seed]
        try:
            barrier.wait()
            for _ in range(200):
                x.grad = None
                torch.testing.assert_close(_grad(x, y), want)
                calls.append(seed)
        except Exception as exc:  # reported below
            errors.append(exc)

    interval, threads_before = sys.getswitchinterval(), torch.get_num_threads()
    sys.setswitchinterval(1e-6)
    torch.set_num_threads(1)  # each call on its own thread: the calls overlap most
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        torch.set_num_threads(threads_before)
    assert not errors, errors[:2]
    assert len(calls) == 800


def _bytes(storage):
    """A copy of an untyped storage's bytes (the viewing tensor dropped at once)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage).clone()


def test_a_held_storage_object_is_never_reused():
    """``x.grad.untyped_storage()`` is the pool's own storage object (torch keeps one
    Python object per storage): holding it, or a TypedStorage of it, keeps it out."""
    for hold in (lambda g: g.untyped_storage(), lambda g: g.storage()):
        x, y = _inputs(50)
        held = hold(_grad(x, y))
        untyped = held if isinstance(held, torch.UntypedStorage) else held.untyped()
        kept = _bytes(untyped)
        del untyped
        x.grad = None
        x2, y2 = _inputs(51)
        torch.testing.assert_close(_grad(x2, y2), _reference(x2, y2))
        untyped = held if isinstance(held, torch.UntypedStorage) else held.untyped()
        assert torch.equal(_bytes(untyped), kept)
        del untyped


def test_shared_memory_is_never_reused():
    """A gradient moved to shared memory (as a multiprocessing queue does) may still be
    mapped by another process after this one dropped it: it leaves the pool."""
    x, y = _inputs(52)
    _grad(x, y).share_memory_()
    x.grad = None  # only the pool (and, say, a child process) has it now
    assert any(s.is_shared() for s in MODULE._recycling["storages"])
    x2, y2 = _inputs(53)
    again = _grad(x2, y2)
    assert not again.is_shared()
    assert not any(s.is_shared() for s in MODULE._recycling["storages"])
    torch.testing.assert_close(again, _reference(x2, y2))


def test_under_a_default_device_the_gradient_stays_on_the_cpu():
    x, y = _inputs(54)
    with torch.device("meta"):
        grad = _grad(x, y)
    assert grad.device.type == "cpu"
    torch.testing.assert_close(grad, _reference(x, y))


def test_only_a_storage_of_the_exact_size_is_reused():
    """A larger free one would carry another gradient's bytes past the end of this one
    (``torch.save`` writes the whole storage)."""
    big = torch.randn(ROWS + 88, CLASSES, requires_grad=True)
    _grad(big, torch.randint(0, CLASSES, (ROWS + 88,)))
    big.grad = None
    x, y = _inputs(55)
    grad = _grad(x, y)
    assert grad.untyped_storage().nbytes() == grad.numel() * grad.element_size()


def test_turning_it_off_frees_the_kept_buffers_and_small_ones_are_never_kept():
    x, y = _inputs(30)
    _grad(x, y)
    x.grad = None
    assert MODULE._recycling["storages"]
    assert MODULE.recycle_gradients(False) is True
    assert MODULE._recycling["storages"] == []
    x2, y2 = _inputs(31)
    torch.testing.assert_close(_grad(x2, y2), _reference(x2, y2))
    assert MODULE._recycling["storages"] == []
    MODULE.recycle_gradients(True)
    small = torch.randn(4, 3, requires_grad=True)
    _grad(small, torch.tensor([0, 1, 2, 0]))
    assert all(s.nbytes() >= MODULE._RECYCLE_FROM for s in MODULE._recycling["storages"])
    with pytest.raises(TypeError, match="True, False or None"):
        MODULE.recycle_gradients("yes")


def test_a_kept_buffer_resized_by_its_user_is_not_reused():
    x, y = _inputs(40)
    grad = _grad(x, y)
    grad.resize_(ROWS * CLASSES * 2)  # the storage grows beyond what recycling accepts
    grad.fill_(7.0)
    x.grad = None
    x2, y2 = _inputs(41)
    again = _grad(x2, y2)
    torch.testing.assert_close(again, _reference(x2, y2))
    assert torch.all(grad == 7.0)
