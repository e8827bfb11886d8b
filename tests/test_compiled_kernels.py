"""The C kernels every loss's NumPy module compiles on first use (float32, CPU).

Every check runs the compiled path explicitly (``use_compiled(True)``, with a
spy that a kernel was called) against torch float64 autograd of each loss's
definition, written here independently of symce, or against the same module's
array code.  The fallback, the build cache, OpenMP and forks are checked on
fresh copies of a module with their own cache folder (kl_distillation's: one
kernel, the quickest build).  The float32 library (exp, log, tanh, pow) is
checked in ulps against float64 through the entry points the C source exports
for that.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.forking import passes_in_forked_child
from tests.parity import load_generated

LOSSES = ("cross_entropy", "focal_loss", "kl_distillation")
HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
pytestmark = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
#: the module rebuilt in fresh folders (one kernel: the quickest build)
QUICK = "kl_distillation"


@pytest.fixture(scope="module")
def modules():
    loaded = {loss: load_generated(f"{loss}_numpy") for loss in LOSSES}
    for module in loaded.values():
        assert module.compiled_library() is not None, "a C compiler is present: the build must work"
    return loaded


@contextmanager
def compiled_path(module):
    """``module`` forced onto its compiled path; yields the entry points called."""
    calls = []
    real = module._c_call

    def spy(function, args, threads):
        calls.append(function.__name__)
        return real(function, args, threads)

    module.use_compiled(True)
    module._c_call = spy
    try:
        yield calls
    finally:
        module._c_call = real
        module.use_compiled(None)


# -- the definitions, in torch float64 (independent of symce) ------------------------------
def _classes(x, target, weight, ignore_index, label_smoothing):
    """The class-target model: (c, rows that count, mean's denominator); c None for plain
    class indices (the definition then reads q at the target only)."""
    n = x.shape[1]
    view = [1, n] + [1] * (x.dim() - 2)
    w = torch.ones(n, dtype=x.dtype) if weight is None else weight
    if target.is_floating_point():
        c = w.view(view) * ((1 - label_smoothing) * target + label_smoothing / n)
        valid = torch.ones(x.shape[:1] + x.shape[2:], dtype=x.dtype)
        return c, valid, valid.sum()
    valid = (target != ignore_index).to(x.dtype)
    y = torch.where(target != ignore_index, target, 0)
    w_y = w[y]
    if label_smoothing == 0:
        return None, valid, (valid * w_y).sum()
    one_hot = F.one_hot(y, n).movedim(-1, 1).to(x.dtype)
    c = (1 - label_smoothing) * w_y.unsqueeze(1) * one_hot + label_smoothing / n * w.view(view)
    return c, valid, (valid * w_y).sum()


def _reduce(rows, reduction, denominator):
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / denominator


def ref_cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean",
                      label_smoothing=0.0, z_loss=0.0, softcap=None):
    """F.cross_entropy of the soft-capped logits plus z_loss·logsumexp² per row that
    counts (mean: over the rows that count, Liger-Kernel's convention)."""
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    ce = F.cross_entropy(x, target, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing)
    if z_loss == 0:
        return ce
    _, valid, _ = _classes(x, target, weight, ignore_index, label_smoothing)
    z = z_loss * torch.logsumexp(x, dim=1) ** 2 * valid
    return ce + _reduce(z, reduction, valid.sum())


def ref_focal_loss(x, target, gamma=2.0, weight=None, ignore_index=-100, reduction="mean",
                   label_smoothing=0.0):
    """−Σ c_i (1 − q_i)^γ log q_i per row, cross-entropy's denominator."""
    log_q = torch.log_softmax(x, dim=1)
    c, valid, denominator = _classes(x, target, weight, ignore_index, label_smoothing)
    if c is None:  # c = w_y at y: the sum has one term
        y = torch.where(target != ignore_index, target, 0).unsqueeze(1)
        log_q_y = log_q.gather(1, y).squeeze(1)
        w_y = 1.0 if weight is None else weight[y.squeeze(1)]
        rows = -w_y * (1 - log_q_y.exp()) ** gamma * log_q_y
    else:
        rows = -(c * (1 - log_q.exp()) ** gamma * log_q).sum(1)
    return _reduce(rows * valid, reduction, denominator)


def ref_kl_distillation(x, teacher, temperature=1.0, reduction="batchmean", mask=None):
    """T²·Σ p (log p − log q), p = softmax(t/T), q = softmax(u/T); mean over rows × classes."""
    log_p = torch.log_softmax(teacher / temperature, dim=1)
    log_q = torch.log_softmax(x / temperature, dim=1)
    rows = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(1)
    valid = torch.ones_like(rows) if mask is None else mask.to(x.dtype)
    denominator = valid.sum() * (x.shape[1] if reduction == "mean" else 1)
    return _reduce(rows * valid, reduction, denominator)


REFERENCES = {"cross_entropy": ref_cross_entropy, "focal_loss": ref_focal_loss,
              "kl_distillation": ref_kl_distillation}


def _tensor(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.float64) if value.dtype.kind == "f" else value)
    return value


def reference(loss, x, target, grad_output=None, **options):
    """Loss and the gradient of ``(loss · grad_output).sum()`` by torch float64 autograd."""
    xr = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    one_d = x.ndim == 1
    xt = xr.unsqueeze(0) if one_d else xr
    tt = _tensor(target)
    if one_d:
        tt = tt.unsqueeze(0)
    kw = {k: _tensor(v) for k, v in options.items()}
    if one_d and isinstance(kw.get("mask"), torch.Tensor):
        kw["mask"] = kw["mask"].unsqueeze(0)
    value = REFERENCES[loss](xt, tt, **kw)
    if one_d and value.dim() == 1:
        value = value.squeeze(0)
    upstream = torch.ones_like(value) if grad_output is None else _tensor(grad_output)
    (grad,) = torch.autograd.grad((value * upstream).sum(), xr)
    return value.detach().numpy(), grad.numpy()


def run(module, loss, x, target, **options):
    """The module's ``_with_grad`` as float64 arrays."""
    value, grad = getattr(module, f"{loss}_with_grad")(x, target, **options)
    return np.asarray(value, np.float64), np.asarray(grad, np.float64)


def assert_close(got, want, rtol=1e-5, atol=2.5e-7):
    """Within ``rtol`` of the largest entry, or ``atol`` (two float32 ulps of 1: an
    entry that is a difference of terms near 1, q·Σc − c at the target class, is
    off by that much even where the difference is small); NaN where the reference
    has NaN, ±inf alike."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    if finite.any():
        bound = max(rtol * np.abs(want[finite]).max(), atol)
        error = np.abs(got[finite] - want[finite]).max()
        assert error <= bound, (error, bound)


# -- the case table: one line a case ----------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """``target``: index | probability | teacher; ``ignore``: none | some (every third
    row ignored, or masked for a teacher) | all; ``options``: the loss's keywords,
    ``weight=True`` for class weights."""

    loss: str
    shape: tuple[int, ...]
    target: str = "index"
    options: dict = field(default_factory=dict)
    ignore: str = "none"
    magnitude: float = 3.0
    seed: int = 0

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.loss}-{'x'.join(map(str, self.shape))}-{self.target}-{opts}-{self.ignore}"

    @property
    def _ignored(self) -> slice:
        """Every third row from the second ("some": one row alone always counts)."""
        return slice(1, None, 3) if self.ignore == "some" else slice(None)

    def inputs(self):
        rng = np.random.default_rng(self.seed)
        shape = self.shape
        n_classes = shape[0] if len(shape) == 1 else shape[1]
        batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
        x = (rng.standard_normal(shape) * self.magnitude).astype(np.float32)
        options = dict(self.options)
        if options.get("weight") is True:
            options["weight"] = rng.uniform(0.5, 2.0, n_classes).astype(np.float32)
        if self.target == "teacher":
            target = (rng.standard_normal(shape) * 3).astype(np.float32)
            if self.ignore != "none":
                mask = np.ones(batch, dtype=bool)
                mask.flat[self._ignored] = False
                options["mask"] = mask
            return x, target, options
        if self.target == "probability":
            logits = rng.standard_normal(shape)
            axis = 0 if len(shape) == 1 else 1
            p = np.exp(logits) / np.exp(logits).sum(axis=axis, keepdims=True)
            return x, p.astype(np.float32), options
        y = rng.integers(0, n_classes, batch)
        if self.ignore != "none":
            y = np.asarray(y)
            y.flat[self._ignored] = -100
        return x, np.asarray(y, dtype=np.int64), options


W = {"weight": True}
ALL = {"weight": True, "label_smoothing": 0.1}
CASES = [
    # cross_entropy: rows (one block, two and a tail), (C), transposed (S < 16),
    # slabs (16, 17, 40 positions), softcap and z_loss on every path
    Case("cross_entropy", (7, 600)),
    Case("cross_entropy", (7, 1100), options=ALL, ignore="some"),
    Case("cross_entropy", (300,)),
    Case("cross_entropy", (3, 40, 5), "probability", ALL),
    Case("cross_entropy", (3, 40, 16), ignore="some"),
    Case("cross_entropy", (2, 700, 17), options={"z_loss": 1e-2, "softcap": 5.0,
                                                 "label_smoothing": 0.2}),
    Case("cross_entropy", (2, 50, 40), "probability", {"softcap": 2.0, "weight": True}),
    Case("cross_entropy", (4, 300, 2), options={"softcap": 3.0, "reduction": "none"}),
    Case("cross_entropy", (5, 1100), options={"z_loss": 1e-3, "softcap": 30.0, "weight": True,
                                              "reduction": "sum"}, ignore="some"),
    Case("cross_entropy", (6, 90), "probability", {"z_loss": 0.1, "label_smoothing": 0.3}),
    Case("cross_entropy", (5, 80), ignore="all"),
    # focal_loss: level 1 (class indices), level 2 (smoothing, probabilities: sums over
    # (1 - q)^gamma need the sum of e first), gamma 1 (0^0 where q rounds to 1)
    Case("focal_loss", (7, 600)),
    Case("focal_loss", (5, 1100), options={"gamma": 0.5, "weight": True}, ignore="some"),
    Case("focal_loss", (4, 300), options={"label_smoothing": 0.1}),
    Case("focal_loss", (3, 40, 5), "probability"),
    Case("focal_loss", (2, 700, 17), "probability", ALL),
    Case("focal_loss", (3, 40, 16), options={"gamma": 1.0, "label_smoothing": 0.2},
         magnitude=12.0),
    Case("focal_loss", (300,), options={"gamma": 3.0}),
    Case("focal_loss", (4, 9, 40), options={**ALL, "reduction": "none"}, ignore="some"),
    Case("focal_loss", (6, 70, 3), "probability", {"gamma": 2.5, "reduction": "sum"}),
    # kl_distillation: two streams, temperature, mask, every reduction, every path
    Case("kl_distillation", (7, 600), "teacher"),
    Case("kl_distillation", (5, 1100), "teacher", {"temperature": 2.0, "reduction": "sum"}),
    Case("kl_distillation", (3, 40, 5), "teacher", {"temperature": 0.5, "reduction": "none"}),
    Case("kl_distillation", (2, 700, 17), "teacher", ignore="some"),
    Case("kl_distillation", (4, 300), "teacher", {"reduction": "mean"}),
    Case("kl_distillation", (300,), "teacher", {"temperature": 3.0}),
    Case("kl_distillation", (2, 60, 40), "teacher", {"temperature": 1.5}, ignore="some"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_against_torch_float64(modules, case):
    x, target, options = case.inputs()
    module = modules[case.loss]
    with compiled_path(module) as calls:
        got = run(module, case.loss, x, target, **options)
    assert calls, "the compiled kernel did not run"
    want = reference(case.loss, x, target, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


# wide rows (many blocks), and slabs of 20000 classes, past the 1 MiB scratch for
# the exponentials (they stay in the gradient, written twice)
@pytest.mark.parametrize("case", [
    Case("cross_entropy", (3, 33000), options={"softcap": 20.0, "z_loss": 1e-4}),
    Case("cross_entropy", (2, 20000, 17), "index", {**ALL, "reduction": "none"}),
    Case("cross_entropy", (2, 20000, 17), "probability", {"softcap": 10.0, "weight": True}),
    Case("focal_loss", (3, 33000), options=ALL),
    Case("focal_loss", (2, 20000, 17), "probability", {"label_smoothing": 0.1}),
    Case("kl_distillation", (3, 33000), "teacher", {"temperature": 2.0}),
    Case("kl_distillation", (2, 20000, 17), "teacher"),
], ids=lambda c: c.name)
def test_wide_rows_and_slabs(modules, case):
    test_against_torch_float64(modules, case)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    loss=st.sampled_from(LOSSES),
    shape=st.one_of(
        st.tuples(st.integers(1, 9), st.sampled_from([1, 2, 7, 600])),
        st.tuples(st.integers(1, 3), st.sampled_from([1, 3, 40]),
                  st.sampled_from([1, 2, 5, 15, 16, 17, 40])),
    ),
    probability=st.booleans(),
    weight=st.booleans(),
    ignore=st.sampled_from(["none", "some"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    parameter=st.sampled_from([0.0, 1.0, 2.0]),
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_random_inputs(modules, loss, shape, probability, weight, ignore, reduction,
                       smoothing, parameter, magnitude, seed):
    options = {"reduction": reduction}
    if loss == "kl_distillation":
        target = "teacher"
        options["temperature"] = 0.5 + parameter
    else:
        target = "probability" if probability else "index"
        options["label_smoothing"] = smoothing
        if weight:
            options["weight"] = True
        if loss == "focal_loss":  # gamma < 1 where q rounds to 1: the gradient is ill-conditioned
            options["gamma"] = 1.0 + parameter
        else:
            options.update({"z_loss": parameter * 1e-2, "softcap": None if parameter == 0
                            else 10.0 * parameter})
    if target == "probability":
        ignore = "none"
    case = Case(loss, shape, target, options, ignore=ignore, magnitude=magnitude, seed=seed)
    test_against_torch_float64(modules, case)


def test_softcap_rows_with_small_and_large_arguments(modules):
    """A row whose logits all lie within 0.625·softcap takes the polynomial tanh in
    walk 1, one with a logit beyond it (or inf) the general one: one call holding
    both kinds of rows, each against torch float64 (and the per-row test is printed
    into the kernels that keep the capped logits)."""
    module = modules["cross_entropy"]
    rng = np.random.default_rng(5)
    s = 4.0
    x = rng.uniform(-2.4, 2.4, (6, 700)).astype(np.float32)  # |u/s| <= 0.6: small rows
    x[1, 3] = 2.6  # 0.65 s: this row is general
    x[3, 10] = -30.0
    x[4, :] *= 0.01
    y = np.array([0, 3, 5, 10, 699, 1])
    for options in ({"softcap": s}, {"softcap": s, "z_loss": 1e-2, "label_smoothing": 0.2}):
        got = run(module, "cross_entropy", x, y, reduction="none", **options)
        want = reference("cross_entropy", x, y, reduction="none", **options)
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])
    kept = [module._C_SOURCES[key] for key, (function, *_) in module._C_KERNELS.items()
            if function.endswith("softcap")]
    assert kept and all("symce_tanh_small(" in source for source in kept)


@pytest.mark.parametrize("path", ["compiled", "array"])
def test_focal_gamma_zero_on_a_confident_row_is_cross_entropy(modules, path):
    """gamma = 0 has its own kernels (gamma is specialised, off at 0): cross-entropy's
    expressions, so a row whose q_y rounds to 1 has a finite gradient, as torch."""
    module = modules["focal_loss"]
    x = np.array([[0.0, -40.0, -50.0], [0.3, 0.1, -0.2]], np.float32)
    y = np.array([0, 2])
    module.use_compiled(path == "compiled")
    try:
        got = run(module, "focal_loss", x, y, gamma=0.0)
    finally:
        module.use_compiled(None)
    want = reference("cross_entropy", x, y)
    assert_close(got[1], want[1])


# -- the float32 library, in ulps against float64 ------------------------------------------
def _vector(library, name, *arrays):
    function = getattr(library, f"symce_vector_{name}")
    function.restype = None
    arrays = [np.ascontiguousarray(a, np.float32) for a in arrays]
    out = np.empty_like(arrays[0])
    function(*[a.ctypes.data_as(ctypes.c_void_p) for a in arrays],
             out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(out.size))
    return out


def _ulps(got, want):
    """|got − want| in float32 ulps of the float64 ``want``."""
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / np.maximum(ulp, 2.0**-149)


@pytest.fixture(scope="module")
def library(modules):
    return modules["cross_entropy"].compiled_library()


def test_exp_within_4_ulps(library):
    """exp of the shifted logits (z <= 0): within 4 ulps where the result is a normal
    float, 0 below 2^-126.5 (not a subnormal); the full-range exp likewise up to
    the float maximum, inf beyond, NaN kept."""
    rng = np.random.default_rng(0)
    z = np.concatenate([-np.linspace(0, 104, 200001),
                        -rng.exponential(10, 100000)]).astype(np.float32)
    want = np.exp(z.astype(np.float64))
    got = _vector(library, "exp", z)
    normal = want > 2.0**-126
    assert _ulps(got[normal], want[normal]).max() <= 4
    assert np.all(got[want < 2.0**-126.5] <= 2.0**-126)
    v = np.concatenate([np.linspace(-87, 88.7, 300001), rng.normal(0, 20, 100000)])
    v = v.astype(np.float32)
    want = np.exp(v.astype(np.float64))
    inside = (want > 2.0**-126) & (want < np.finfo(np.float32).max)
    assert _ulps(_vector(library, "expx", v)[inside], want[inside]).max() <= 4
    special = _vector(library, "expx", np.array([np.inf, -np.inf, np.nan, 89.0, -200.0, 0.0]))
    np.testing.assert_array_equal(special, [np.inf, 0.0, np.nan, np.inf, 0.0, 1.0])


def test_log_within_2_ulps(library):
    rng = np.random.default_rng(1)
    b = np.concatenate([np.exp(rng.uniform(-103, 88, 300000)), rng.uniform(0, 2, 100000),
                        1 - rng.uniform(0, 1e-3, 100000),
                        2.0**-149 * rng.integers(1, 2**23, 10000)]).astype(np.float32)
    b = b[b > 0]
    assert _ulps(_vector(library, "log", b), np.log(b.astype(np.float64))).max() <= 2
    special = _vector(library, "log", np.array([0.0, -0.0, -1.0, np.inf, np.nan, 1.0]))
    np.testing.assert_array_equal(special, [-np.inf, -np.inf, np.nan, np.inf, np.nan, 0.0])


def test_tanh_within_3_ulps(library):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, 300000), rng.normal(0, 10, 100000),
                        np.linspace(-12, 12, 200001), rng.uniform(-1e-3, 1e-3, 10000),
                        [1e-30, -1e-30, 0.625, -0.625, 9.5, 20.0]]).astype(np.float32)
    assert _ulps(_vector(library, "tanh", x), np.tanh(x.astype(np.float64))).max() <= 3
    special = _vector(library, "tanh", np.array([np.inf, -np.inf, np.nan, 0.0, -0.0]))
    np.testing.assert_array_equal(special, [1.0, -1.0, np.nan, 0.0, -0.0])
    assert np.signbit(special[-1])


def test_tanh_small_is_tanh_below_its_split_point(library):
    """A row whose tanh arguments all lie below 0.625 calls the polynomial alone
    (softcap's fast path): the same bits as tanh there, every float32 of a dense
    sample of (-0.625, 0.625), both signed zeros and the largest float below."""
    below = np.nextafter(np.float32(0.625), np.float32(0))
    rng = np.random.default_rng(4)
    x = np.concatenate([np.linspace(-below, below, 400001, dtype=np.float32),
                        rng.uniform(-0.625, 0.625, 200000).astype(np.float32),
                        np.float32([0.0, -0.0, below, -below, 1e-30, -1e-38])])
    x = x[np.abs(x) < 0.625]
    small, full = _vector(library, "tanh_small", x), _vector(library, "tanh", x)
    np.testing.assert_array_equal(small.view(np.uint32), full.view(np.uint32))
    assert _ulps(small, np.tanh(x.astype(np.float64))).max() <= 3


def test_pow_within_2_plus_2_ulps_per_unit_of_its_exponent(library):
    """b^a = exp(a·log b): the float32 a·log b and log's error scale with |a·ln b|,
    so the bound is 2 + 2·|a·ln b| ulps; 0^0 = 1, 0^a = 0 (a > 0), inf (a < 0)."""
    rng = np.random.default_rng(3)
    b = np.concatenate([rng.uniform(0, 1, 300000), 1 - rng.uniform(0, 1e-4, 100000),
                        rng.uniform(1, 3, 50000)]).astype(np.float32)
    a = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, -0.5, 5.0], b.size).astype(np.float32)
    keep = b > 0
    b, a = b[keep], a[keep]
    want = np.power(b.astype(np.float64), a.astype(np.float64))
    normal = want > 2.0**-126
    bound = 2 + 2 * np.abs(a.astype(np.float64) * np.log(b.astype(np.float64)))
    assert np.all(_ulps(_vector(library, "pow", b, a), want)[normal] <= bound[normal])
    special = _vector(library, "pow", np.array([0, 0, 0, 1, np.nan, -1]),
                      np.array([0, 2, -0.5, 0, 0, 0.5]))
    np.testing.assert_array_equal(special, [1.0, 0.0, np.inf, 1.0, 1.0, np.nan])


def test_exponential_through_a_kernel(modules):
    """Two classes [0, z]: the gradient at class 1 is q = e/(1 + e), e = exp(z), z over
    [-104, 0]: within 4 ulps of float64 where q is normal, 2^-126 absolute below."""
    module = modules["cross_entropy"]
    z = -np.linspace(0.0, 104.0, 20001)
    x = np.stack([np.zeros_like(z), z], axis=1).astype(np.float32)
    y = np.zeros(len(z), dtype=np.int64)
    with compiled_path(module) as calls:
        _, grad = run(module, "cross_entropy", x, y, reduction="sum")
    assert calls
    zf = x[:, 1].astype(np.float64)
    want = np.exp(zf) / (1 + np.exp(zf))
    normal = want > 2.0**-126
    rel = np.abs(grad[normal, 1] - want[normal]) / want[normal]
    assert rel.max() < 4 * 2.0**-24, rel.max()
    assert np.abs(grad[~normal, 1] - want[~normal]).max() <= 2.0**-126


# -- extreme inputs, threads, the array code ---------------------------------------------------
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("row", [
    [0.0, float("nan"), 1.0],
    [float("inf"), 0.0, 1.0],
    [float("-inf"), 0.0, 1.0],
    [float("-inf")] * 3,
], ids=["nan", "inf", "-inf", "all-inf"])
def test_non_finite_logits_like_torch(modules, loss, row):
    x = np.array([row, [0.5, 0.25, -1.0]], dtype=np.float32)
    target = (np.array([[1.0, 0.0, 2.0], [0.5, 0.5, -0.5]], np.float32)
              if loss == "kl_distillation" else np.array([1, 2]))
    module = modules[loss]
    with compiled_path(module) as calls:
        got = run(module, loss, x, target, reduction="sum")
    assert calls
    want = reference(loss, x, target, reduction="sum")
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def _units(module, monkeypatch):
    monkeypatch.setattr(module, "_C_UNIT_BYTES", 64)
    monkeypatch.setattr(module, "_C_SLAB_UNIT_BYTES", 64)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(7, 600), (3, 40, 17), (4, 9, 5)])
def test_result_does_not_depend_on_threads(modules, monkeypatch, loss, shape):
    """Many small units over 1, 2 and 3 threads: the same bits."""
    module = modules[loss]
    _units(module, monkeypatch)
    target = "teacher" if loss == "kl_distillation" else "index"
    options = {} if loss == "kl_distillation" else ALL
    x, t, options = Case(loss, shape, target, options, seed=3).inputs()
    results = []
    for threads in (1, 2, 3):
        module.set_num_threads(threads)
        try:
            with compiled_path(module) as calls:
                results.append(run(module, loss, x, t, **options))
            assert calls
        finally:
            module.set_num_threads(None)
    for value, grad in results[1:]:
        assert np.array_equal(value, results[0][0])
        assert np.array_equal(grad, results[0][1])


@pytest.mark.parametrize("loss", LOSSES)
def test_compiled_and_array_code_agree_closely(modules, loss):
    """Both float32 paths, and each against float64, 1e-6 apart relative to the
    largest entry (about 17 float32 ulps of it).

    The largest entries are rows' dominant classes, where the gradient is a
    difference of terms near 1 (q·Σc − c): their error is e's (within 4 ulps in the
    kernels, 1 in NumPy's exp2), Σe's and a few roundings (coefficient, product,
    sum of the terms).  The class sums (300 classes, samples transposed to rows)
    are accurate to a few ulps in both: float32 pairwise sums in the array code,
    float partial sums of at most 16 terms into double in the kernels.  Measured:
    at most 3.2e-7 for each path against float64 and between them (focal loss'
    (1 − q)^γ included); a row sum that added all 300 terms in float32 one at a
    time missed the bound (1.3e-6: terms under half an ulp of the running sum
    were lost)."""
    target = "teacher" if loss == "kl_distillation" else "probability"
    options = {} if loss == "kl_distillation" else {**ALL, "label_smoothing": 0.2}
    x, t, options = Case(loss, (33, 300, 3), target, options, magnitude=4.0, seed=11).inputs()
    module = modules[loss]
    with compiled_path(module) as calls:
        compiled = run(module, loss, x, t, **options)
    assert calls
    module.use_compiled(False)
    try:
        array = run(module, loss, x, t, **options)
    finally:
        module.use_compiled(None)
    want = reference(loss, x, t, **options)
    for got in (compiled, array):
        assert abs(got[0] - want[0]) <= 1e-6 * abs(want[0])
        assert np.abs(got[1] - want[1]).max() <= 1e-6 * np.abs(want[1]).max()
    assert np.abs(compiled[1] - array[1]).max() <= 1e-6 * np.abs(array[1]).max()


@pytest.mark.parametrize("loss", LOSSES)
def test_per_row_upstream_gradient(modules, loss):
    """reduction="none" with a grad_output per row: the kernels' per-row scales."""
    target = "teacher" if loss == "kl_distillation" else "index"
    options = {"reduction": "none"}
    if loss != "kl_distillation":
        options["label_smoothing"] = 0.3
    x, t, options = Case(loss, (6, 5, 20), target, options, seed=2).inputs()
    go = np.random.default_rng(2).standard_normal((6, 20)).astype(np.float32)
    module = modules[loss]
    with compiled_path(module) as calls:
        got = getattr(module, f"{loss}_backward")(x, t, grad_output=go, **options)
    assert calls
    _, want = reference(loss, x, t, grad_output=go, **options)
    assert_close(got, want)


@pytest.mark.parametrize("loss", LOSSES)
def test_non_contiguous_or_misaligned_input_takes_the_array_code(modules, loss):
    target = "teacher" if loss == "kl_distillation" else "index"
    x, t, options = Case(loss, (6, 10, 4), target).inputs()
    module = modules[loss]
    strided = x[:, :, ::2]
    t_strided = t[:, :, ::2] if target == "teacher" else t[:, ::2]
    raw = np.frombuffer(bytearray(4 * 40 + 1), dtype=np.float32, count=40, offset=1)
    misaligned = raw.reshape(4, 10)
    misaligned[...] = np.linspace(-3, 3, 40, dtype=np.float32).reshape(4, 10)
    t_misaligned = (np.ones((4, 10), np.float32) if target == "teacher"
                    else np.array([0, 9, 3, 3]))
    assert not misaligned.flags.aligned
    for xs, ts in ((strided, t_strided), (misaligned, t_misaligned)):
        with compiled_path(module) as calls:
            got = run(module, loss, xs, ts)
        assert not calls
        want = reference(loss, np.ascontiguousarray(xs), ts)
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])


class _NumpyGivingOffsetBuffers:
    """numpy, except that ``empty`` of a large array returns one that starts 16 bytes
    past a 64-byte boundary (numpy's own alignment guarantee is 16 bytes)."""

    def __init__(self, offset_from):
        self.offset_from = offset_from
        self.addresses = []

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=float, **kwargs):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        if count < self.offset_from or kwargs:
            return np.empty(shape, dtype=dtype, **kwargs)
        raw = np.empty(count * dtype.itemsize + 128, dtype=np.uint8)
        start = (-raw.ctypes.data) % 64 + 16
        out = raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)
        self.addresses.append(out.ctypes.data)
        return out


@pytest.mark.parametrize("loss", LOSSES)
def test_slab_gradient_into_a_buffer_off_a_cache_line(modules, loss, monkeypatch):
    """A slab's gradient lines are streamed only where each is a whole 64-byte line;
    into a gradient 16 bytes past a line boundary the same values are stored."""
    target = "teacher" if loss == "kl_distillation" else "index"
    x, t, options = Case(loss, (3, 40, 32), target).inputs()
    module = modules[loss]
    proxy = _NumpyGivingOffsetBuffers(offset_from=x.size)
    monkeypatch.setattr(module, "np", proxy)
    with compiled_path(module) as calls:
        got = run(module, loss, x, t, **options)
    assert calls
    assert proxy.addresses and all(a % 64 == 16 for a in proxy.addresses)
    want = reference(loss, x, t, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.mark.parametrize("positions", [1, 16])
def test_class_sums_keep_small_terms(modules, positions):
    """One logit 0 and 99999 at -17: Σe = 1 + 99999·e^-17 (each small term is below
    half a float32 ulp of 1).  Summed in float32 one at a time, the loss was 0
    (positions 16) or 1 % off; the kernels' float partial sums add at most 32 terms
    (slabs) or 16 (rows), then double."""
    module = modules["cross_entropy"]
    x = np.full((1, 100000, positions), -17.0, np.float32)
    x[0, 0] = 0.0
    y = np.zeros((1, positions), dtype=np.int64)
    with compiled_path(module) as calls:
        loss, grad = run(module, "cross_entropy", x, y)
    assert calls
    exact = np.log1p(99999 * np.exp(np.float64(np.float32(-17.0))))
    assert abs(loss - exact) <= 1e-3 * exact
    q0 = 1 / (1 + 99999 * np.exp(np.float64(np.float32(-17.0))))
    assert abs(grad[0, 0, 0] - (q0 - 1) / positions) <= 1e-3 * abs(q0 - 1) / positions


# -- the kernels a module picks ------------------------------------------------------------------
def test_softcap_runs_its_own_kernel(modules):
    """softcap is a specialised option: its kernel computes tanh, the plain one does not."""
    module = modules["cross_entropy"]
    x, y, _ = Case("cross_entropy", (4, 50)).inputs()
    with compiled_path(module) as calls:
        run(module, "cross_entropy", x, y)
        run(module, "cross_entropy", x, y, softcap=5.0)
        run(module, "cross_entropy", x, y, z_loss=0.1, softcap=5.0, label_smoothing=0.1)
    assert calls == ["symce_index", "symce_index_softcap", "symce_index_smoothed_z_loss_softcap"]
    plain = module._C_SOURCES[("index", False, False, False, False)]
    capped = module._C_SOURCES[("index", False, False, False, True)]
    assert "void symce_index(" in plain and "void symce_index_softcap(" in capped
    assert "symce_tanh" not in plain and "symce_tanh(" in capped
    assert "softcap" not in module._C_KERNELS[("index", False, False, False, False)][2]
    assert "softcap" in module._C_KERNELS[("index", False, False, False, True)][2]


@pytest.mark.parametrize("target", ["index", "probability"])
def test_level_two_walks_give_the_loss_alone_the_same_bits(modules, target):
    """Focal loss with smoothing or probability targets sums (1 − q)^γ terms, which
    need Σe first: a second walk.  With a gradient it reads e back from the
    gradient buffer; for the loss alone it computes e again: the same bits."""
    module = modules["focal_loss"]
    x, t, options = Case("focal_loss", (5, 1100), target, {"label_smoothing": 0.1}).inputs()
    with compiled_path(module) as calls:
        alone = module.focal_loss(x, t, **options)
        with_grad, _ = module.focal_loss_with_grad(x, t, **options)
    assert calls == [f"symce_{target}_smoothed_gamma"] * 2
    assert "/* walk 2:" in module._C_SOURCES[(target, False, True, True)]
    assert alone == with_grad


# -- the build: fallback, cache, switches, forks, OpenMP -----------------------------------------
@pytest.mark.parametrize("loss", LOSSES)
def test_without_a_compiler_the_array_code_runs_and_says_why(loss, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    module = load_generated(f"{loss}_numpy")
    with pytest.warns(RuntimeWarning, match="array code runs instead"):
        assert module.compiled_library() is None
    target = "teacher" if loss == "kl_distillation" else "index"
    x, t, options = Case(loss, (4, 7), target).inputs()
    got = run(module, loss, x, t, **options)
    want = reference(loss, x, t, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_build_is_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path))
    first = load_generated(f"{QUICK}_numpy")
    assert first.compiled_library() is not None
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].endswith(".so")  # no temporary left behind
    second = load_generated(f"{QUICK}_numpy")

    def no_compiler(*args, **kwargs):
        raise AssertionError("the cached build should have been used")

    monkeypatch.setattr(second.subprocess, "run", no_compiler)
    assert second.compiled_library() is not None


def test_each_kernel_is_built_on_its_first_use_and_once(tmp_path, monkeypatch):
    """compiled_library() builds the float32 library alone; a kernel's library is built
    when that kernel is first called (once, by four threads calling it together), and
    a second kernel adds one more: a process compiles only what it runs."""
    cc = os.environ.get("CC") or next(shutil.which(c) for c in ("cc", "gcc", "clang")
                                      if shutil.which(c))
    log = tmp_path / "cc.log"
    logging_cc = tmp_path / "logging-cc"
    logging_cc.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec {cc} "$@"\n')
    logging_cc.chmod(0o755)
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(logging_cc))

    def builds():
        return len(log.read_text().splitlines()) if log.exists() else 0

    module = load_generated("cross_entropy_numpy")
    assert module.compiled_library() is not None
    assert builds() == 1
    x, y, _ = Case("cross_entropy", (4, 50)).inputs()
    want = reference("cross_entropy", x, y)
    results = []
    with compiled_path(module) as calls:
        threads = [threading.Thread(target=lambda: results.append(
            run(module, "cross_entropy", x, y))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert builds() == 2
        run(module, "cross_entropy", x, y, softcap=5.0)
    assert calls == ["symce_index"] * 4 + ["symce_index_softcap"]
    assert builds() == 3 and len(results) == 4
    for got in results:
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [name.rsplit("_", 1)[0] for name in built] == [
        "cross_entropy", "cross_entropy_index", "cross_entropy_index_softcap"]
    assert all(name.endswith(".so") for name in built)


@pytest.mark.parametrize("loss", LOSSES)
def test_switches(loss, monkeypatch, recwarn):
    module = load_generated(f"{loss}_numpy")
    monkeypatch.setenv("SYMCE_COMPILE", "0")
    assert module.compiled_library() is None
    assert not recwarn.list  # turned off on purpose: no warning
    module.use_compiled(True)
    assert module.compiled_library() is not None
    with pytest.raises(ValueError, match="True, False or None"):
        module.use_compiled("yes")


@pytest.mark.parametrize("loss", LOSSES)
def test_kernels_give_the_same_bits_without_vectorisation(modules, loss, tmp_path,
                                                          monkeypatch):
    """The class sums add in an order the source fixes (a row: float lanes, class c
    in lane c % 32, then double; a slab: one position a lane) and the float32
    library is straight-line code, so a build with vectorisation off gives the same
    bits as the host's vectorised one: rows (two blocks and a tail), transposed
    samples and slabs, every kind of target, every walk (tanh, pow, log included)."""
    cc = os.environ.get("CC") or next(shutil.which(c) for c in ("cc", "gcc", "clang")
                                      if shutil.which(c))
    scalar_cc = tmp_path / "cc-no-vectorise"
    scalar_cc.write_text(f'#!/bin/sh\nexec {cc} "$@" -fno-tree-vectorize -fno-openmp-simd\n')
    scalar_cc.chmod(0o755)
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(scalar_cc))
    scalar, vector = load_generated(f"{loss}_numpy"), modules[loss]
    assert scalar.compiled_library() is not None
    assert scalar.compiled_library()._name != vector.compiled_library()._name
    if loss == "kl_distillation":
        variants = [("teacher", {"temperature": 2.0})]
    elif loss == "focal_loss":
        variants = [("index", {"gamma": 2.0}), ("index", {**ALL, "gamma": 1.5}),
                    ("probability", {**ALL, "gamma": 0.5})]
    else:
        variants = [("index", {}), ("index", {**ALL, "softcap": 5.0, "z_loss": 0.1}),
                    ("probability", {**ALL, "softcap": 3.0})]
    for shape in [(5, 1100), (3, 300, 5), (2, 700, 17)]:
        for target, options in variants:
            x, t, kw = Case(loss, shape, target, {**options, "reduction": "sum"},
                            magnitude=6.0, seed=4).inputs()
            got = []
            for module in (scalar, vector):
                with compiled_path(module) as calls:
                    got.append(run(module, loss, x, t, **kw))
                assert calls
            assert np.array_equal(got[0][0], got[1][0]), (shape, options)
            assert np.array_equal(got[0][1], got[1][1]), (shape, options)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_builds(tmp_path, monkeypatch):
    """A child forked while a thread of the parent compiles must not wait on the
    parent's build lock (held by a thread that does not exist there)."""
    compiler = tmp_path / "slow-cc"
    compiler.write_text(f"#!/bin/sh\nsleep 2\nexec {shutil.which('cc') or 'gcc'} \"$@\"\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(compiler))
    module = load_generated(f"{QUICK}_numpy")
    x, t, _ = Case(QUICK, (3, 7), "teacher").inputs()
    want, _ = reference(QUICK, x, t)
    builder = threading.Thread(target=module.compiled_library)
    builder.start()
    time.sleep(0.5)  # the build lock is held now

    def child():
        got, _ = run(module, QUICK, x, t)
        return abs(got - want) < 1e-5 * abs(want)

    try:
        assert passes_in_forked_child(child)
    finally:
        builder.join()


@pytest.fixture(scope="module")
def openmp_module(tmp_path_factory):
    """kl_distillation's NumPy module built with OpenMP, as the torch modules build
    theirs (``c_context(..., openmp=True)``): its units run on an OpenMP team."""
    from symce.codegen import _numpy, c_header, module_context
    from symce.codegen.c import c_context
    from symce.codegen.ir import kernels
    from symce.render.env import header_lines, render

    ks = kernels(QUICK)
    context = {**module_context(QUICK), **_numpy(QUICK, ks), **c_context(ks, c_header(QUICK),
                                                                           openmp=True)}
    source = render("numpy/module.py.j2", header=header_lines(QUICK, "test", "test"),
                    block_bytes=1 << 20, **context)
    path = tmp_path_factory.mktemp("openmp") / f"{QUICK}_openmp.py"
    path.write_text(source)
    from symce.verify.command import load_module

    module = load_module(path)
    library = module.compiled_library()
    if library is None or getattr(library, "symce_teacher_omp", None) is None:
        pytest.skip("no OpenMP build here")
    return module


def test_openmp_team_and_helper_threads_agree_bit_for_bit(openmp_module, monkeypatch):
    """Where the build has OpenMP the units run on a team; the helper-thread way (a
    forked child's) must give the same bits."""
    module = openmp_module
    assert module.compiled_library().symce_teacher.team is not None
    x, t, _ = Case(QUICK, (300, 70), "teacher", seed=5).inputs()
    monkeypatch.setattr(module, "_C_UNIT_BYTES", 256)
    module.set_num_threads(3)
    try:
        with compiled_path(module) as calls:
            team = run(module, QUICK, x, t, temperature=2.0)
            monkeypatch.setitem(module._compiled, "forked", True)
            helpers = run(module, QUICK, x, t, temperature=2.0)
        assert calls == ["symce_teacher"] * 2
    finally:
        module.set_num_threads(None)
    assert np.array_equal(team[0], helpers[0])
    assert np.array_equal(team[1], helpers[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_after_an_openmp_team_computes(openmp_module):
    """GNU libgomp's team threads do not exist in a forked child (a team there would
    hang): the child runs the units on helper threads instead."""
    module = openmp_module
    x, t, _ = Case(QUICK, (64, 500), "teacher").inputs()
    want, _ = reference(QUICK, x, t)
    module.set_num_threads(2)
    try:
        run(module, QUICK, x, t)  # the parent's team exists now

        def child():
            got, _ = run(module, QUICK, x, t)
            return abs(got - want) < 1e-5 * abs(want)

        assert passes_in_forked_child(child)
    finally:
        module.set_num_threads(None)


def test_unusable_cache_folder_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    """~/.cache cannot hold a folder (here: it is a file): the build goes to the temp dir."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.delenv("SYMCE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = load_generated(f"{QUICK}_numpy")
    assert module.compiled_library() is not None
    assert module._cache_dir().startswith(str(tmp_path))
    assert any(p.suffix == ".so" for p in Path(module._cache_dir()).iterdir())
