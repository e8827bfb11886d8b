"""The C kernels the NumPy and torch modules compile on first use (float32, CPU).

Every check runs the compiled path explicitly (``use_compiled(True)``, with a
spy that the kernel was called) against torch float64, or against the same
module's array code; the fallback and the build cache are checked on fresh
copies of the modules with their own cache folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.forking import passes_in_forked_child
from tests.parity import CASES, Case, assert_parity, load_generated

NAMES = ("cross_entropy_numpy", "cross_entropy_torch")
HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
pytestmark = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
FLOAT32 = [c for c in CASES if c.dtype == "float32"]


@pytest.fixture(scope="module")
def modules():
    loaded = {name: load_generated(name) for name in NAMES}
    for module in loaded.values():
        assert module.compiled_library() is not None, "a C compiler is present: the build must work"
    return loaded


@pytest.fixture(params=NAMES)
def compiled(request, modules, monkeypatch):
    """A module forced onto its compiled path; counts the kernel calls."""
    module = modules[request.param]
    module.use_compiled(True)
    calls = []
    real = module._c_call

    def spy(function, args, threads):
        calls.append(function.__name__)
        return real(function, args, threads)

    monkeypatch.setattr(module, "_c_call", spy)
    module.calls = calls
    yield module
    module.use_compiled(None)


@pytest.mark.parametrize("case", FLOAT32, ids=lambda c: c.name)
def test_parity_table_float32(compiled, case):
    assert_parity(compiled, case)
    if np.prod(case.shape) > 0:
        assert compiled.calls, "the compiled kernel did not run"


# positions: 1 (rows), 2..15 (samples transposed to rows), 16 (one vector of
# positions), 17+ (vectors and a remainder); classes past 512 (two blocks)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 9), st.sampled_from([1, 2, 7, 600])),
        st.tuples(st.integers(1, 3), st.sampled_from([1, 3, 40]),
                  st.sampled_from([1, 2, 5, 15, 16, 17, 40])),
    ),
    target=st.sampled_from(["index", "probability"]),
    weight=st.booleans(),
    ignore=st.sampled_from(["none", "some", "all"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_parity_random_float32(modules, shape, target, weight, ignore, reduction,
                               label_smoothing, magnitude, seed):
    if target == "probability":
        ignore = "none"
    case = Case("random-c", shape, target=target, weight=weight, ignore=ignore,
                reduction=reduction, label_smoothing=label_smoothing, dtype="float32",
                magnitude=magnitude, seed=seed)
    for module in modules.values():
        module.use_compiled(True)
        try:
            assert_parity(module, case)
        finally:
            module.use_compiled(None)


def _numpy_and_torch(module, x, y, **kw):
    """Loss and gradient (float64 arrays) from either module's API."""
    if hasattr(module, "cross_entropy_with_grad"):
        loss, grad = module.cross_entropy_with_grad(x.numpy(), y.numpy(), **kw)
        return np.float64(loss), np.asarray(grad, np.float64)
    xt = x.detach().requires_grad_()  # the same storage and strides
    kw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    loss = module.cross_entropy(xt, y, **kw)
    loss.backward()
    return np.float64(loss.item()), xt.grad.double().numpy()


def test_exponential_is_accurate_to_float32(compiled):
    """Two classes [0, z]: the gradient at class 1 is q = e/(1 + e), e = exp(z).

    z runs over [-104, 0] (past float32's smallest normal, 2^-126 = e^-87.3);
    against float64, q must be within 4 float32 ulps relative where q is
    normal, and within 2^-126 absolute below (flushed to 0 there)."""
    z = -np.linspace(0.0, 104.0, 20001)
    x = torch.from_numpy(np.stack([np.zeros_like(z), z], axis=1).astype(np.float32))
    y = torch.zeros(len(z), dtype=torch.int64)
    _, grad = _numpy_and_torch(compiled, x, y, reduction="sum")
    zf = x[:, 1].double().numpy()  # the float32 z the kernel saw
    want = np.exp(zf) / (1 + np.exp(zf))
    normal = want > 2.0**-126
    rel = np.abs(grad[normal, 1] - want[normal]) / want[normal]
    assert rel.max() < 4 * 2.0**-24, rel.max()
    assert np.abs(grad[~normal, 1] - want[~normal]).max() <= 2.0**-126
    assert compiled.calls


@pytest.mark.parametrize("row", [
    [0.0, float("nan"), 1.0],
    [float("inf"), 0.0, 1.0],
    [float("-inf"), 0.0, 1.0],
    [float("-inf")] * 3,
])
def test_non_finite_logits_like_torch(compiled, row):
    x = torch.tensor([row, [0.5, 0.25, -1.0]], dtype=torch.float32)
    y = torch.tensor([1, 2])
    loss, grad = _numpy_and_torch(compiled, x, y, reduction="sum")
    xr = x.double().requires_grad_()
    want = F.cross_entropy(xr, y, reduction="sum")
    want.backward()
    np.testing.assert_allclose(loss, want.item(), rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(grad, xr.grad.numpy(), rtol=1e-5, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("shape", [(7, 600), (3, 40, 17), (4, 9, 5)])
def test_result_does_not_depend_on_threads(compiled, monkeypatch, shape):
    """Many small units over 1, 2 and 3 threads: the same bits."""
    monkeypatch.setattr(compiled, "_C_UNIT_BYTES", 64)
    monkeypatch.setattr(compiled, "_C_SLAB_UNIT_BYTES", 64)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=gen) * 5
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
    w = np.linspace(0.5, 2.0, shape[1], dtype=np.float32)
    results = []
    for threads in (1, 2, 3):
        if hasattr(compiled, "set_num_threads"):
            compiled.set_num_threads(threads)
        else:
            monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        try:
            results.append(_numpy_and_torch(compiled, x, y, weight=w, label_smoothing=0.1))
        finally:
            if hasattr(compiled, "set_num_threads"):
                compiled.set_num_threads(None)
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        assert np.array_equal(grad, results[0][1])


def test_compiled_and_array_code_agree_closely(modules):
    """Both float32 paths of one module, and each against float64, 1e-6 apart
    relative to the largest entry (about 17 float32 ulps of it).

    The largest entries are rows' dominant classes, g = scale·(q·Σc − c) with q
    near 1: their error is e's (within 4 ulps in the kernels, 1 in NumPy's and
    torch's exp2), Σe's and three roundings (α, α·e, the dense term).  The class
    sums (300 classes, samples transposed to rows) are accurate to a few ulps in
    both: float32 pairwise sums in the array code, float partial sums of at most
    16 terms into double in the kernels.  Measured: 2.6e-7 for each path against
    float64, 2.9e-7 between them.  The kernels' row sum once added all 300
    terms in float32 one at a time (where the loop did not vectorise) and missed
    the bound (1.3e-6: terms under half an ulp of the running sum were lost)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(33, 300, 3, generator=gen) * 4
    p = torch.softmax(torch.randn(33, 300, 3, generator=gen), dim=1)
    w = np.linspace(0.5, 2.0, 300, dtype=np.float32)
    xr = x.double().requires_grad_()
    want = F.cross_entropy(xr, p.double(), weight=torch.from_numpy(w).double(),
                           label_smoothing=0.2)
    want.backward()
    want_loss, want_grad = want.item(), xr.grad.numpy()
    bound = 1e-6 * np.abs(want_grad).max()
    for module in modules.values():
        out = {}
        for flag in (True, False):
            module.use_compiled(flag)
            try:
                out[flag] = _numpy_and_torch(module, x, p, weight=w, label_smoothing=0.2)
            finally:
                module.use_compiled(None)
        (lc, gc), (la, ga) = out[True], out[False]
        assert abs(lc - la) <= 1e-6 * abs(la)
        assert np.abs(gc - ga).max() <= 1e-6 * np.abs(ga).max()
        for loss, grad in out.values():
            assert abs(loss - want_loss) <= 1e-6 * abs(want_loss)
            assert np.abs(grad - want_grad).max() <= bound


def test_numpy_per_row_upstream_gradient(modules):
    """reduction="none" with a grad_output per row: the kernel's per-row scales."""
    module = modules["cross_entropy_numpy"]
    gen = np.random.default_rng(2)
    x = gen.standard_normal((6, 5, 20)).astype(np.float32)
    y = gen.integers(0, 5, (6, 20))
    go = gen.standard_normal((6, 20)).astype(np.float32)
    module.use_compiled(True)
    try:
        got = module.cross_entropy_backward(x, y, grad_output=go, reduction="none",
                                            label_smoothing=0.3)
    finally:
        module.use_compiled(None)
    xr = torch.from_numpy(x).double().requires_grad_()
    loss = F.cross_entropy(xr, torch.from_numpy(y), reduction="none", label_smoothing=0.3)
    loss.backward(torch.from_numpy(go).double())
    np.testing.assert_allclose(got, xr.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_non_contiguous_input_takes_the_array_code(compiled):
    x = torch.randn(6, 10, 4)[:, :, ::2]
    y = torch.randint(0, 10, (6, 2))
    loss, grad = _numpy_and_torch(compiled, x, y)
    xr = x.double().requires_grad_()
    F.cross_entropy(xr, y).backward()
    np.testing.assert_allclose(grad, xr.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert not compiled.calls


@pytest.mark.parametrize("name", NAMES)
def test_without_a_compiler_the_array_code_runs_and_says_why(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    module = load_generated(name)
    with pytest.warns(RuntimeWarning, match="array code runs instead"):
        assert module.compiled_library() is None
    x = torch.randn(4, 7)
    y = torch.tensor([0, 6, 3, 3])
    loss, grad = _numpy_and_torch(module, x, y)
    xr = x.double().requires_grad_()
    want = F.cross_entropy(xr, y)
    want.backward()
    assert loss == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(grad, xr.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_build_is_cached_per_source(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path))
    first = load_generated(name)
    assert first.compiled_library() is not None
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].endswith(".so")  # no temporary left behind
    second = load_generated(name)

    def no_compiler(*args, **kwargs):
        raise AssertionError("the cached build should have been used")

    monkeypatch.setattr(second.subprocess, "run", no_compiler)
    assert second.compiled_library() is not None


@pytest.mark.parametrize("name", NAMES)
def test_switches(name, monkeypatch, recwarn):
    module = load_generated(name)
    monkeypatch.setenv("SYMCE_COMPILE", "0")
    assert module.compiled_library() is None
    assert not recwarn.list  # turned off on purpose: no warning
    module.use_compiled(True)
    assert module.compiled_library() is not None
    with pytest.raises(ValueError, match="True, False or None"):
        module.use_compiled("yes")


@pytest.mark.parametrize("positions", [1, 16])
def test_class_sums_keep_small_terms(compiled, positions):
    """One logit 0 and 99999 at -17: Σe = 1 + 99999·e^-17 (each small term is
    below half a float32 ulp of 1).  Summed in float32 one at a time, the loss
    was 0 (positions 16) or 1 % off; the kernels' float partial sums add at most
    32 terms (slabs) or 16 (rows), then double.  A row's sum over a whole
    512-class block in float32, where the loop did not vectorise (AVX2), lost
    the block's 511 small terms beside the 1 (0.5 % off)."""
    x = np.full((1, 100000, positions), -17.0, np.float32)
    x[0, 0] = 0.0
    y = torch.zeros((1, positions), dtype=torch.int64)
    loss, grad = _numpy_and_torch(compiled, torch.from_numpy(x), y)
    exact = np.log1p(99999 * np.exp(np.float64(np.float32(-17.0))))
    assert abs(loss - exact) <= 1e-3 * exact
    q0 = 1 / (1 + 99999 * np.exp(np.float64(np.float32(-17.0))))
    assert abs(grad[0, 0, 0] - (q0 - 1) / positions) <= 1e-3 * abs(q0 - 1) / positions
    assert compiled.calls


def test_kernels_give_the_same_bits_without_vectorisation(modules, tmp_path, monkeypatch):
    """The kernels' class sums add in an order the source fixes (a row: float
    lanes, class c in lane c % 32, then double; a slab: one position a lane),
    so a build with vectorisation off gives the same bits as the host's
    vectorised one: rows (two blocks and a tail), transposed samples and slabs,
    each target kind with every summand.  A float sum over a 512-class block
    once ran 16 wide on one machine and one term at a time on another."""
    cc = os.environ.get("CC") or next(shutil.which(c) for c in ("cc", "gcc", "clang")
                                      if shutil.which(c))
    scalar_cc = tmp_path / "cc-no-vectorise"
    scalar_cc.write_text(f'#!/bin/sh\nexec {cc} "$@" -fno-tree-vectorize -fno-openmp-simd\n')
    scalar_cc.chmod(0o755)
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(scalar_cc))
    scalar, vector = load_generated("cross_entropy_numpy"), modules["cross_entropy_numpy"]
    assert scalar.compiled_library() is not None
    assert scalar.compiled_library()._name != vector.compiled_library()._name
    gen = torch.Generator().manual_seed(4)
    for shape in [(5, 1100), (3, 300, 5), (2, 700, 17)]:
        x = torch.randn(*shape, generator=gen) * 6
        y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
        p = torch.softmax(torch.randn(*shape, generator=gen), dim=1)
        w = np.linspace(0.5, 2.0, shape[1], dtype=np.float32)
        for target, kw in [(y, {}), (y, {"weight": w, "label_smoothing": 0.1}),
                           (p, {}), (p, {"weight": w, "label_smoothing": 0.1})]:
            got = {}
            for module in (scalar, vector):
                module.use_compiled(True)
                calls = []
                real = module._c_call
                monkeypatch.setattr(module, "_c_call", lambda f, a, t, r=real, seen=calls:
                                    seen.append(f) or r(f, a, t))
                try:
                    got[module] = _numpy_and_torch(module, x, target, reduction="sum", **kw)
                finally:
                    module.use_compiled(None)
                    monkeypatch.setattr(module, "_c_call", real)
                assert calls
            (ls, gs), (lv, gv) = got[scalar], got[vector]
            assert ls == lv, (shape, kw)
            assert np.array_equal(gs, gv), (shape, kw)


def test_unaligned_numpy_input_takes_the_array_code(compiled):
    if not hasattr(compiled, "cross_entropy_with_grad"):
        pytest.skip("NumPy arrays only")
    raw = np.frombuffer(bytearray(4 * 40 + 1), dtype=np.float32, count=40, offset=1)
    x = raw.reshape(4, 10)
    x[...] = np.linspace(-3, 3, 40, dtype=np.float32).reshape(4, 10)
    assert not x.flags.aligned
    y = np.array([0, 9, 3, 3])
    loss, grad = compiled.cross_entropy_with_grad(x, y)
    xr = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    want = F.cross_entropy(xr, torch.from_numpy(y))
    want.backward()
    assert float(loss) == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(grad, xr.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert not compiled.calls


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("name", NAMES)
def test_fork_while_another_thread_builds(name, tmp_path, monkeypatch):
    """A child forked while a thread of the parent compiles must not wait on
    the parent's build lock (held by a thread that does not exist there)."""
    compiler = tmp_path / "slow-cc"
    compiler.write_text(f"#!/bin/sh\nsleep 2\nexec {shutil.which('cc') or 'gcc'} \"$@\"\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(compiler))
    module = load_generated(name)
    builder = threading.Thread(target=module.compiled_library)
    builder.start()
    time.sleep(0.5)  # the build lock is held now

    def child():
        loss, _ = _numpy_and_torch(module, torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([2]))
        return abs(loss - 0.40760596) < 1e-5

    try:
        assert passes_in_forked_child(child)
    finally:
        builder.join()


def test_openmp_team_and_helper_threads_agree_bit_for_bit(modules, monkeypatch):
    """torch's module runs its units on an OpenMP team where the build has one;
    the helper-thread way (a forked child's) must give the same bits."""
    module = modules["cross_entropy_torch"]
    library = module.compiled_library()
    if not hasattr(library, "symce_probability_weighted_smoothed_omp"):
        pytest.skip("built without OpenMP here")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 70, generator=gen)
    p = torch.softmax(torch.randn(300, 70, generator=gen), dim=1)
    w = np.linspace(0.5, 2.0, 70, dtype=np.float32)
    monkeypatch.setattr(module, "_C_UNIT_BYTES", 256)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    module.use_compiled(True)
    try:
        team = _numpy_and_torch(module, x, p, weight=w, label_smoothing=0.1)
        monkeypatch.setitem(module._compiled, "forked", True)
        helpers = _numpy_and_torch(module, x, p, weight=w, label_smoothing=0.1)
    finally:
        module.use_compiled(None)
    assert team[0] == helpers[0]
    assert np.array_equal(team[1], helpers[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_after_an_openmp_team_computes(modules):
    """GNU libgomp's team threads do not exist in a forked child (a team there
    would hang): the child runs the units on helper threads instead."""
    module = modules["cross_entropy_torch"]
    x = torch.randn(64, 500)
    y = torch.randint(0, 500, (64,))
    want = F.cross_entropy(x.double(), y).item()
    _numpy_and_torch(module, x, y)  # the parent's team exists now

    def child():
        torch.set_num_threads(2)
        loss, _ = _numpy_and_torch(module, x, y)
        return abs(loss - want) < 1e-5 * abs(want)

    assert passes_in_forked_child(child)


@pytest.mark.parametrize("target", ["index", "probability"])
def test_slab_too_wide_for_the_exponentials_scratch(compiled, target):
    """20000 classes × 16 positions exceed the 1 MiB scratch: the exponentials
    stay in the gradient (written twice), with the same results."""
    case = Case("wide-slab", (2, 20000, 17), target=target, weight=True,
                label_smoothing=0.1, dtype="float32", reduction="none")
    assert_parity(compiled, case)
    assert compiled.calls


def test_unusable_cache_folder_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    """~/.cache cannot hold a folder (here: it is a file): the build goes to the temp dir."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.delenv("SYMCE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = load_generated("cross_entropy_numpy")
    assert module.compiled_library() is not None
    assert module._cache_dir().startswith(str(tmp_path))
    assert any(p.suffix == ".so" for p in Path(module._cache_dir()).iterdir())
