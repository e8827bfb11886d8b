"""The generated Triton modules of every loss against torch float64 autograd.

CPU tensors under Triton's interpreter (this file sets ``TRITON_INTERPRET=1``
before triton is imported), small shapes.  The references are autograd
through each loss's definition (tests/triton_cases.py); the table runs once
as generated and again with class tiles of four (the online maximum and its
rescale cross tiles), then what only these modules have (``inplace``, the
teacher's gradient, the refusals).
"""

import inspect
import os
import sys

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

from tests.triton_cases import CASES, HALF_CASES, REFERENCES, Case, assert_case, load  # noqa: E402

# the interpreter runs the kernels in NumPy: a masked tile's discarded lanes may
# divide by zero or overflow (a GPU says nothing); the results are compared below
pytestmark = pytest.mark.filterwarnings(
    "ignore:(divide by zero|invalid value|overflow) encountered:RuntimeWarning")

LOSSES = ("cross_entropy", "focal_loss", "kl_distillation")
MODULES = {loss: load(loss) for loss in LOSSES}
#: the cases whose rows cross class tiles of four, with the class sums that are
#: accumulated online (rescaled) or in walks of their own
TILED = [c for c in CASES if c.dtype == "float64" and c.shape[min(1, len(c.shape) - 1)] > 4
         and ("smooth" in c.name or "prob" in c.name or "kl" in c.name or "zloss" in c.name)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the interpreter is numpy-bound; share the machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_tiles(monkeypatch):
    for module in MODULES.values():
        monkeypatch.setattr(module, "_MAX_BLOCK_C", 4)
        monkeypatch.setattr(module, "_TILE", 16)  # and several rows per tile for K-dim inputs


@pytest.mark.parametrize("case", CASES + HALF_CASES, ids=lambda c: c.name)
def test_parity_table(case: Case):
    assert_case(MODULES[case.loss], case)


@pytest.mark.parametrize("case", TILED, ids=lambda c: c.name)
def test_parity_across_class_tiles(case: Case, small_tiles):
    assert_case(MODULES[case.loss], case)


@pytest.mark.parametrize("loss, target, options", [
    ("cross_entropy", "probability", {"weight": True, "label_smoothing": 0.3, "z_loss": 0.1}),
    ("focal_loss", "index", {"gamma": 1.5, "label_smoothing": 0.2}),
    ("kl_distillation", "teacher", {"temperature": 1.5}),
])
@pytest.mark.parametrize("ramp", [1.0, -1.0], ids=["rising", "falling"])
def test_the_maximum_moves_across_tiles(loss, target, options, ramp, monkeypatch):
    """Tiles of two classes; the row maximum grows in every tile (rising) or is in the
    first (falling): every online sum is rescaled at every tile, or never."""
    module = MODULES[loss]
    monkeypatch.setattr(module, "_MAX_BLOCK_C", 2)
    assert_case(module, Case(f"{loss}-ramp", loss, (3, 9), target=target, options=options,
                             teacher_grad=target == "teacher", ramp=ramp))


@settings(max_examples=12, deadline=None)
@given(
    loss=st.sampled_from(LOSSES),
    shape=st.sampled_from([(5,), (3, 6), (2, 5, 3)]),
    kind=st.sampled_from(["index", "probability"]),
    weighted=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.15, 1.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    parameter=st.sampled_from([0.0, 0.5, 2.0]),
    block_c=st.sampled_from([2, 16384]),
    seed=st.integers(0, 2**16),
)
def test_random_options_match_torch(loss, shape, kind, weighted, smoothing, reduction,
                                    parameter, block_c, seed):
    if loss == "kl_distillation":
        options = {"temperature": parameter + 0.5,
                   "reduction": "batchmean" if reduction == "mean" else reduction}
        case = Case("random", loss, shape, target="teacher", options=options,
                    ignore="some" if weighted else "none", teacher_grad=True, seed=seed)
    else:
        options = {"weight": weighted or None, "label_smoothing": smoothing,
                   "reduction": reduction,
                   **({"z_loss": parameter} if loss == "cross_entropy" else {"gamma": parameter})}
        case = Case("random", loss, shape, target=kind, options=options,
                    ignore="some" if kind == "index" else "none", seed=seed)
    module = MODULES[loss]
    old = module._MAX_BLOCK_C
    module._MAX_BLOCK_C = block_c
    try:
        assert_case(module, case)
    finally:
        module._MAX_BLOCK_C = old


# -- what only the Triton modules have -------------------------------------------------
def _call(loss, x, **options):
    """The loss of ``x`` with a fixed target of the loss's kind, and that target."""
    gen = torch.Generator().manual_seed(1)
    if loss == "kl_distillation":
        target = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    else:
        target = torch.randint(0, x.shape[1], (x.shape[0],), generator=gen)
    return getattr(MODULES[loss], loss)(x, target, **options), target


@pytest.mark.parametrize("loss", LOSSES)
def test_inplace_writes_the_gradient_over_the_logits(loss):
    x = torch.randn(4, 9, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    _, target = _call(loss, x)
    expected = torch.autograd.grad(REFERENCES[loss](leaf, target), leaf)[0]
    logits = x.clone().requires_grad_(True)
    buffer = logits * 1.0  # an intermediate that nothing else saved
    getattr(MODULES[loss], loss)(buffer, target, inplace=True).backward()
    torch.testing.assert_close(logits.grad, expected)
    torch.testing.assert_close(buffer.detach(), expected)  # the logits' memory holds it


def test_inplace_over_logits_autograd_saved_fails_loudly():
    """Liger's in-place gradient silently corrupts such logits; here backward refuses."""
    leaf = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    logits = torch.exp(leaf)  # exp saves its output for its own backward
    loss, _ = _call("focal_loss", logits, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("loss", LOSSES)
def test_default_leaves_the_logits_alone(loss):
    x = torch.randn(3, 5, requires_grad=True)
    before = x.detach().clone()
    _call(loss, x)[0].backward()
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=0)


def test_a_retained_graph_backpropagates_twice():
    x = torch.randn(3, 5, requires_grad=True)
    loss, _ = _call("cross_entropy", x)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_a_second_backward_after_an_inplace_forward_is_refused():
    x = torch.randn(3, 5, requires_grad=True)
    loss = MODULES["cross_entropy"].cross_entropy(x.clone(), torch.tensor([0, 1, 2]),
                                                  inplace=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


def test_a_differentiable_gradient_after_an_inplace_forward_is_refused_not_silent():
    """The logits are gone: double backward (tests/test_autograd.py) needs them."""
    x = torch.randn(3, 5, requires_grad=True)
    loss = MODULES["cross_entropy"].cross_entropy(x.clone(), torch.tensor([0, 1, 2]),
                                                  inplace=True)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_teacher_gradient_only_where_asked():
    kl = MODULES["kl_distillation"]
    x = torch.randn(3, 6, dtype=torch.float64)
    t = torch.randn(3, 6, dtype=torch.float64)
    student = x.clone().requires_grad_(True)
    kl.kl_distillation(student, t).backward()
    assert student.grad is not None and t.grad is None
    teacher = t.clone().requires_grad_(True)  # the teacher alone: the input needs no gradient
    kl.kl_distillation(x, teacher, temperature=2.0).backward()
    ref = t.clone().requires_grad_(True)
    REFERENCES["kl_distillation"](x, ref, temperature=2.0).backward()
    torch.testing.assert_close(teacher.grad, ref.grad)
    with torch.no_grad():
        value = kl.kl_distillation(student, teacher)
    assert not value.requires_grad
    torch.testing.assert_close(value, REFERENCES["kl_distillation"](x, t))


def test_return_z_loss_logs_the_term_without_a_gradient():
    ce = MODULES["cross_entropy"]
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, -100, 2, 2])
    total, z = ce.cross_entropy(x, y, z_loss=0.25, return_z_loss=True)
    torch.testing.assert_close(total, ce.cross_entropy(x, y, z_loss=0.25))
    _, z_ref = REFERENCES["cross_entropy"](x.detach(), y, z_loss=0.25, return_z_loss=True)
    torch.testing.assert_close(z, z_ref)
    assert total.requires_grad and not z.requires_grad


@pytest.mark.parametrize("options", [{}, {"weight": True, "label_smoothing": 0.2},
                                     {"reduction": "none"}])
@pytest.mark.parametrize("target", ["index", "probability"])
def test_gamma_zero_is_cross_entropy(options, target):
    x = torch.randn(4, 6, dtype=torch.float64) * 3
    y = torch.tensor([1, 5, 0, 3]) if target == "index" else torch.rand(4, 6, dtype=torch.float64)
    if options.get("weight"):
        options = {**options, "weight": torch.rand(6, dtype=torch.float64) + 0.5}
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    focal = MODULES["focal_loss"].focal_loss(a, y, gamma=0.0, **options)
    ce = MODULES["cross_entropy"].cross_entropy(b, y, **options)
    torch.testing.assert_close(focal, ce, rtol=1e-13, atol=1e-15)
    focal.sum().backward()
    ce.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [1.0, 2.0, 2.5])
def test_focal_loss_on_a_certain_row_is_finite(dtype, gamma):
    """q_y rounds to 1: (1 − q)^γ and its derivative at a base of exactly 0."""
    x = torch.tensor([[60.0, 0.0, -3.0], [0.0, 80.0, 1.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 1])
    focal = MODULES["focal_loss"].focal_loss
    for options in ({}, {"label_smoothing": 0.1}):
        loss = focal(x, y, gamma=gamma, reduction="sum", **options)
        (grad,) = torch.autograd.grad(loss, x)
        ref = x.detach().double().requires_grad_(True)
        want = REFERENCES["focal_loss"](ref, y, gamma=gamma, reduction="sum", **options)
        (want_grad,) = torch.autograd.grad(want, ref)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-6)


def test_empty_batch():
    ce = MODULES["cross_entropy"]
    x = torch.zeros(0, 4, requires_grad=True)
    assert float(ce.cross_entropy(x, torch.zeros(0, dtype=torch.int64), reduction="sum")) == 0
    assert ce.cross_entropy(x, torch.zeros(0, dtype=torch.int64), reduction="none").shape == (0,)


# -- refusals ------------------------------------------------------------------------------
X = torch.arange(12.0).reshape(3, 4) / 7.0
Y = torch.tensor([0, 3, 1])
T = torch.randn(3, 4)

#: name → (loss, input, target, options, exception, message fragment)
BAD = {
    "target-too-large": ("cross_entropy", X, torch.tensor([0, 4, 1]), {}, IndexError,
                         "out of bounds"),
    "target-negative": ("focal_loss", X, torch.tensor([0, -1, 1]), {}, IndexError,
                        "out of bounds"),
    "target-batch-mismatch": ("cross_entropy", X, torch.tensor([0, 1]), {}, ValueError,
                              "shape"),
    "prob-column": ("focal_loss", X, torch.ones(3, 1), {}, ValueError, "input's shape"),
    "float-class-indices": ("cross_entropy", X, torch.tensor([0.0, 3.0, 1.0]), {}, ValueError,
                            "integers"),
    "prob-with-ignore-index": ("cross_entropy", X, torch.ones(3, 4) / 4, {"ignore_index": 1},
                               ValueError, "ignore_index"),
    "unknown-reduction": ("focal_loss", X, Y, {"reduction": "avg"}, ValueError, "reduction"),
    "smoothing-above-one": ("focal_loss", X, Y, {"label_smoothing": 1.5}, ValueError,
                            "label_smoothing"),
    "weight-length": ("cross_entropy", X, Y, {"weight": torch.ones(3)}, ValueError, "weight"),
    "z-loss-negative": ("cross_entropy", X, Y, {"z_loss": -0.1}, ValueError, "z_loss"),
    "softcap-zero": ("cross_entropy", X, Y, {"softcap": 0.0}, ValueError, "softcap"),
    "softcap-string": ("cross_entropy", X, Y, {"softcap": "4"}, ValueError, "softcap"),
    "return-z-loss-not-bool": ("cross_entropy", X, Y, {"return_z_loss": 1}, ValueError,
                               "return_z_loss"),
    "gamma-negative": ("focal_loss", X, Y, {"gamma": -1.0}, ValueError, "gamma"),
    "gamma-bool": ("focal_loss", X, Y, {"gamma": True}, ValueError, "gamma"),
    "temperature-zero": ("kl_distillation", X, T, {"temperature": 0.0}, ValueError,
                         "temperature"),
    "teacher-shape": ("kl_distillation", X, T[:, :3], {}, ValueError, "teacher"),
    "teacher-integer": ("kl_distillation", X, Y, {}, ValueError, "teacher"),
    "mask-length": ("kl_distillation", X, T, {"mask": torch.ones(2, dtype=torch.bool)},
                    ValueError, "mask"),
    "mask-not-bool": ("kl_distillation", X, T, {"mask": torch.ones(3)}, ValueError, "mask"),
    "kl-unknown-reduction": ("kl_distillation", X, T, {"reduction": "avg"}, ValueError,
                             "reduction"),
    "integer-input": ("focal_loss", torch.zeros(3, 4, dtype=torch.int64), Y, {}, ValueError,
                      "float"),
    "scalar-input": ("kl_distillation", torch.tensor(1.0), torch.tensor(0.0), {}, ValueError,
                     "class dimension"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_clear_error(name):
    loss, x, target, options, error, fragment = BAD[name]
    with pytest.raises(error, match=fragment):
        getattr(MODULES[loss], loss)(x, target, **options)


@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss"])
def test_target_and_weight_gradients_after_an_inplace_forward_are_refused(loss):
    """They read the logits that ``inplace=True`` overwrites (their values:
    tests/test_autograd.py); class indices with weights that require grad: PyTorch's error."""
    fn = getattr(MODULES[loss], loss)
    x = torch.randn(3, 4, requires_grad=True)
    p = torch.softmax(torch.randn(3, 4), 1)
    with pytest.raises(ValueError, match="inplace=True"):
        fn(x.clone(), p, weight=torch.ones(4, requires_grad=True), inplace=True)
    with pytest.raises(ValueError, match="inplace=True"):
        fn(x.clone(), p.requires_grad_(), inplace=True)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        fn(x, Y, weight=torch.ones(4, requires_grad=True))


# -- the nn.Modules ------------------------------------------------------------------------
def test_cross_entropy_module_takes_pytorch_arguments():
    ce = MODULES["cross_entropy"]
    ours = list(inspect.signature(ce.CrossEntropyLoss).parameters)
    theirs = list(inspect.signature(torch.nn.CrossEntropyLoss).parameters)
    assert ours[:len(theirs)] == theirs
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    module = ce.CrossEntropyLoss(weight, None, 2, None, "sum", 0.1)  # positionally, as torch's
    assert module.weight is weight and "weight" in dict(module.named_buffers())
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 4, 1])
    torch.testing.assert_close(module(x, y), torch.nn.CrossEntropyLoss(
        weight, ignore_index=2, reduction="sum", label_smoothing=0.1)(x, y))
    legacy = ce.CrossEntropyLoss(size_average=False)  # PyTorch's legacy spelling of "sum"
    assert legacy.reduction == "sum"


def test_focal_and_distillation_modules():
    focal = MODULES["focal_loss"].FocalLoss(gamma=1.5, label_smoothing=0.1)
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 2, 4, 1])
    torch.testing.assert_close(focal(x, y), REFERENCES["focal_loss"](
        x, y, gamma=1.5, label_smoothing=0.1))
    kl = MODULES["kl_distillation"].KLDistillationLoss(temperature=2.0, reduction="sum")
    assert "mask" in inspect.signature(kl.forward).parameters  # per-call data, not a setting
    t = torch.randn(4, 5, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True])
    torch.testing.assert_close(kl(x, t, mask=mask), REFERENCES["kl_distillation"](
        x, t, temperature=2.0, reduction="sum", mask=mask))


@pytest.mark.parametrize("loss", LOSSES)
def test_docstring_examples(loss):
    import doctest

    result = doctest.testmod(MODULES[loss])
    assert result.attempted > 0 and result.failed == 0


def test_focal_loss_gamma_zero_on_a_certain_row():
    """γ = 0 has its own kernels (γ is specialised, off at 0): cross-entropy's
    expressions, so a row whose q_y rounds to 1 has the gradient 0, as torch."""
    x = torch.tensor([[60.0, 0.0, -3.0]], dtype=torch.float64, requires_grad=True)
    MODULES["focal_loss"].focal_loss(x, torch.tensor([0]), gamma=0.0).backward()
    want = torch.tensor([[60.0, 0.0, -3.0]], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.cross_entropy(want, torch.tensor([0])).backward()
    assert torch.allclose(x.grad, want.grad, rtol=1e-12, atol=0)


def test_the_printers_functions_run_interpreted(tmp_path):
    """Every function of TritonPrinter's table (and exp2, log2, where) exists in
    triton.language under the interpreter: a kernel applying each, against NumPy.
    (tests/test_triton_compile.py compiles the same kernel for sm_90.)"""
    import importlib.util

    import numpy as np

    from symce.codegen.triton import TritonPrinter
    from tests.triton_cases import function_table_kernel

    path = tmp_path / "table_kernel.py"
    path.write_text(function_table_kernel(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("table_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a = torch.linspace(0.1, 3.0, 16, dtype=torch.float64)
    out = torch.empty(len(module.NAMES), 16, dtype=torch.float64)
    module.apply_all[(1,)](a, out, N=16)
    b = a.numpy() * 0.5
    numpy = {"log": np.log, "sqrt": np.sqrt, "Abs": np.abs, "floor": np.floor,
             "ceiling": np.ceil, "sin": np.sin, "cos": np.cos, "exp2": np.exp2,
             "log2": np.log2, "erf": np.vectorize(__import__("math").erf),
             "Max": lambda v: np.maximum(v, b), "Min": lambda v: np.minimum(v, b),
             "where": lambda v: np.where(v > 1, v, b)}
    assert set(module.NAMES) == set(TritonPrinter.functions) | {"exp2", "log2", "where"}
    for i, name in enumerate(module.NAMES):
        np.testing.assert_allclose(out[i].numpy(), numpy[name](a.numpy()), rtol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck_in_float64(loss):
    """First derivatives by finite differences (a retained graph backpropagated again
    for every column gradcheck compares)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    if loss == "kl_distillation":
        target = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    else:
        target = torch.tensor([0, 3, 1])
    function = getattr(MODULES[loss], loss)
    for reduction in ("sum", "none"):
        assert torch.autograd.gradcheck(lambda x, r=reduction: function(x, target, reduction=r),
                                        (x,))


def test_z_term_off_costs_nothing_even_where_its_square_overflows():
    """At z_loss = 0 the kernels have no λ·ℓ² (z_loss is specialised): ℓ² = inf costs no NaN."""
    x = torch.tensor([[1e20, -1e20, 0.0]], requires_grad=True)
    loss = MODULES["cross_entropy"].cross_entropy(x, torch.tensor([1]))
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.tensor([[1.0, -1.0, 0.0]]))
