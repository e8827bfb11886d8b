"""The generated torch modules of every loss against torch float64 autograd of its definition.

The references (``tests/torch_references.py``) are written independently of
symce; one helper compares a module with them on a table of cases (every
option, 1-D / 2-D / K-dim inputs, float64 to 1e-9 and float32 / float16 /
bfloat16 to their tolerances, random upstream gradients).  ``BACKENDS``
lists the generated modules with the torch API: the Triton modules (same
API) run the same tests by adding ``"triton"`` there.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.parity import load_generated
from tests.torch_references import TARGET_KINDS, Case, assert_matches, make_inputs

BACKENDS = ("torch",)
LOSSES = ("cross_entropy", "focal_loss", "kl_distillation")
MODULES = {(loss, backend): load_generated(f"{loss}_{backend}")
           for loss in LOSSES for backend in BACKENDS}
SHAPES = {"1d": (7,), "2d": (6, 5), "kdim": (3, 4, 2, 3)}


def _class_cases(loss, own):
    """Every target kind × option set × reduction × shape, for a class-target loss."""
    option_sets = [
        ({}, {}),
        ({"weight": True}, {}),
        ({}, {"label_smoothing": 0.1}),
        ({"weight": True}, {"label_smoothing": 0.2}),
        ({"weight": True, "ignore": True}, {"label_smoothing": 0.1}),
        ({"ignore": True}, {"ignore_index": 1}),  # ignore_index is a class
        *own,
    ]
    cases = []
    for shape in SHAPES.values():
        for target in ("index", "probability"):
            for flags, options in option_sets:
                if target == "probability" and ("ignore" in flags or "ignore_index" in options):
                    continue  # torch refuses ignore_index with probability targets
                for reduction in ("mean", "sum", "none"):
                    cases.append(Case(loss, shape, target, {**options, "reduction": reduction},
                                      **flags))
    return cases


CE_OWN = [
    ({"ignore": True}, {"z_loss": 0.01}),
    ({}, {"softcap": 2.0}),
    ({"weight": True, "ignore": True}, {"z_loss": 0.05, "softcap": 1.5, "label_smoothing": 0.1}),
    ({"ignore": True}, {"z_loss": 0.02, "return_z_loss": True}),
]
FOCAL_OWN = [
    ({}, {"gamma": 0.0}),
    ({"weight": True, "ignore": True}, {"gamma": 0.5, "label_smoothing": 0.1}),
    ({"weight": True}, {"gamma": 3.5}),
]


def _teacher_cases():
    cases = []
    for shape in SHAPES.values():
        for temperature in (1.0, 2.5):
            for mask in (False, True):
                for reduction in ("batchmean", "sum", "none", "mean"):
                    for teacher_grad in (False, True):
                        cases.append(Case("kl_distillation", shape, "teacher",
                                          {"temperature": temperature, "reduction": reduction},
                                          ignore=mask, teacher_grad=teacher_grad))
    return cases


def _low_precision_cases():
    cases = []
    for dtype in ("float32", "float16", "bfloat16"):
        magnitude = 3.0 if dtype == "float32" else 2.0
        for shape in (SHAPES["2d"], (3, 5, 40), SHAPES["kdim"]):
            for reduction in ("mean", "none"):
                common = {"shape": shape, "dtype": dtype, "magnitude": magnitude}
                cases += [
                    Case("cross_entropy", target="index", weight=True, ignore=True,
                         options={"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 3.0,
                                  "reduction": reduction}, **common),
                    Case("cross_entropy", target="probability", weight=True,
                         options={"label_smoothing": 0.1, "reduction": reduction}, **common),
                    Case("focal_loss", target="index", weight=True, ignore=True,
                         options={"gamma": 2.0, "label_smoothing": 0.1,
                                  "reduction": reduction}, **common),
                    Case("focal_loss", target="probability",
                         options={"gamma": 1.5, "reduction": reduction}, **common),
                    Case("kl_distillation", target="teacher", ignore=True, teacher_grad=True,
                         options={"temperature": 2.0,
                                  "reduction": "batchmean" if reduction == "mean" else "none"},
                         **common),
                ]
    return cases


CASES = (_class_cases("cross_entropy", CE_OWN) + _class_cases("focal_loss", FOCAL_OWN)
         + _teacher_cases())
LOW_PRECISION = _low_precision_cases()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _module(loss, backend):
    return MODULES[(loss, backend)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float64_against_the_definition(backend, case):
    assert_matches(_module(case.loss, backend), case)


@pytest.mark.parametrize("case", LOW_PRECISION, ids=lambda c: c.name)
def test_low_precision_against_the_definition(backend, case):
    assert_matches(_module(case.loss, backend), case)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    loss=st.sampled_from(LOSSES),
    shape=st.one_of(
        st.tuples(st.integers(1, 12)),
        st.tuples(st.integers(1, 6), st.integers(1, 12)),
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3)),
    ),
    kind=st.integers(0, 1),
    weight=st.booleans(),
    ignore=st.booleans(),
    reduction=st.integers(0, 3),
    label_smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    parameter=st.sampled_from([0.0, 0.5, 2.0]),
    dtype=st.sampled_from(["float64", "float32", "float16", "bfloat16"]),
    magnitude=st.sampled_from([1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_random_cases(loss, shape, kind, weight, ignore, reduction, label_smoothing, parameter,
                      dtype, magnitude, seed):
    kinds = TARGET_KINDS[loss]
    target = kinds[kind % len(kinds)]
    if dtype != "float64":
        magnitude = min(magnitude, 3.0)  # large logits in half precision are not detailed
    if loss == "kl_distillation":
        reductions = ("batchmean", "sum", "none", "mean")
        options = {"temperature": 0.5 + parameter}
        case = Case(loss, shape, target, {**options, "reduction": reductions[reduction]},
                    ignore=ignore, teacher_grad=weight, dtype=dtype, magnitude=magnitude,
                    seed=seed)
    else:
        if loss == "focal_loss" and parameter < 1:
            # away from rows whose q_y rounds to 1 (0 < gamma < 1: ill-conditioned there)
            shape, magnitude = (*shape[:1], max(2, shape[1]), *shape[2:]) if len(shape) > 1 \
                else (max(2, shape[0]),), 1.0
        options = {"label_smoothing": label_smoothing,
                   "reduction": ("mean", "sum", "none", "mean")[reduction]}
        options.update({"z_loss": parameter / 10, "softcap": None if parameter == 0 else
                        5 * parameter} if loss == "cross_entropy" else {"gamma": parameter})
        case = Case(loss, shape, target, options, weight=weight,
                    ignore=ignore and target == "index", dtype=dtype, magnitude=magnitude,
                    seed=seed)
    for backend in BACKENDS:
        assert_matches(_module(loss, backend), case)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_gradient_of_a_certain_row_is_finite(backend, gamma):
    """A row whose target probability rounds to 1: finite, as torch autograd of the
    definition (0 at gamma = 0, which has cross-entropy's kernels; at gamma < 1 the
    definition's own derivative is 0 * inf there, NaN in torch as in the modules)."""
    module = _module("focal_loss", backend)
    x = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(module.focal_loss(x, torch.tensor([0]), gamma=gamma), x)
    assert torch.isfinite(grad).all()
    if gamma == 0.0:
        want = x.detach().clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(F.cross_entropy(want, torch.tensor([0])), want)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-30)


# -- layouts: many tiles, partial tiles, transposed tiles, slabs ----------------------
BLOCK_CASES = [
    Case("cross_entropy", (13, 5), weight=True, ignore=True,
         options={"label_smoothing": 0.1, "z_loss": 0.01}),
    Case("cross_entropy", (3, 5, 7), "probability", weight=True,
         options={"label_smoothing": 0.2, "reduction": "none", "softcap": 2.0}),
    Case("cross_entropy", (2, 5, 150), weight=True, ignore=True, dtype="float16",
         options={"label_smoothing": 0.2, "reduction": "none"}),
    Case("focal_loss", (13, 5), weight=True, ignore=True, options={"label_smoothing": 0.1}),
    Case("focal_loss", (2, 5, 150), "probability", weight=True, options={"gamma": 1.5}),
    Case("kl_distillation", (13, 5), "teacher", ignore=True, teacher_grad=True,
         options={"temperature": 2.0}),
    Case("kl_distillation", (3, 5, 7), "teacher", teacher_grad=True, dtype="float32",
         options={"reduction": "none"}),
    Case("kl_distillation", (2, 5, 150), "teacher", ignore=True, teacher_grad=True,
         dtype="bfloat16", magnitude=2.0, options={"reduction": "sum"}),
]


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: c.name)
def test_tiny_blocks_cover_every_row(backend, case, monkeypatch):
    module = _module(case.loss, backend)
    if not hasattr(module, "_BLOCK_BYTES"):
        pytest.skip("module has no block size")
    monkeypatch.setattr(module, "_BLOCK_BYTES", 64)
    n, c, s = case.shape[0], case.shape[1], 1
    for d in case.shape[2:]:
        s *= d
    assert len(list(module._tiles(n, s, c, 8))) > 1  # the layout this case is for
    assert_matches(module, case)


# -- the nn.Modules -------------------------------------------------------------------
def test_module_signatures_follow_pytorch():
    ce = _module("cross_entropy", "torch")
    expected = {
        (ce, "CrossEntropyLoss"): ["weight", "size_average", "ignore_index", "reduce",
                                   "reduction", "label_smoothing", "z_loss", "softcap",
                                   "return_z_loss"],
        (_module("focal_loss", "torch"), "FocalLoss"): [
            "gamma", "weight", "size_average", "ignore_index", "reduce", "reduction",
            "label_smoothing"],
        (_module("kl_distillation", "torch"), "KLDistillationLoss"): ["temperature",
                                                                      "reduction"],
    }
    for (module, name), arguments in expected.items():
        parameters = inspect.signature(getattr(module, name)).parameters
        assert list(parameters) == arguments, name
    torch_ce = inspect.signature(torch.nn.CrossEntropyLoss).parameters
    ours = inspect.signature(ce.CrossEntropyLoss).parameters
    for name, parameter in torch_ce.items():  # PyTorch's own arguments: same order, defaults
        assert ours[name].default == parameter.default, name
    assert list(ours)[:len(torch_ce)] == list(torch_ce)
    forward = inspect.signature(_module("kl_distillation", "torch").KLDistillationLoss.forward)
    assert list(forward.parameters) == ["self", "input", "teacher", "mask"]
    assert forward.parameters["mask"].default is None


@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss"])
def test_class_module_keeps_weight_as_a_buffer(backend, loss):
    module = _module(loss, backend)
    cls = getattr(module, {"cross_entropy": "CrossEntropyLoss", "focal_loss": "FocalLoss"}[loss])
    w = torch.rand(6, dtype=torch.float64) + 0.1
    options = {"ignore_index": 2, "reduction": "sum", "label_smoothing": 0.2}
    loss_fn = cls(weight=w, **options)
    assert torch.equal(dict(loss_fn.named_buffers())["weight"], w)
    assert "weight" in loss_fn.state_dict()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 5, 1, 2])
    got = loss_fn(x, y)
    got.backward()
    x2 = x.detach().clone().requires_grad_()
    from tests.torch_references import REFERENCES
    want = REFERENCES[loss](x2, y, weight=w, **options)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-12)
    assert dict(cls().named_buffers()) == {}  # no weight: a None buffer, as PyTorch's


@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss"])
def test_legacy_reduction_arguments(backend, loss):
    module = _module(loss, backend)
    cls = getattr(module, {"cross_entropy": "CrossEntropyLoss", "focal_loss": "FocalLoss"}[loss])
    x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    function = getattr(module, loss)
    torch.testing.assert_close(cls(size_average=False)(x, y), function(x, y, reduction="sum"))
    torch.testing.assert_close(cls(reduce=False)(x, y), function(x, y, reduction="none"))


def test_cross_entropy_module_with_z_loss_returns_the_term(backend):
    module = _module("cross_entropy", backend)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1])
    loss, z = module.CrossEntropyLoss(z_loss=0.1, return_z_loss=True)(x, y)
    torch.testing.assert_close(z, 0.1 * (torch.logsumexp(x, 1) ** 2).mean())
    torch.testing.assert_close(loss, F.cross_entropy(x, y) + z)


def test_kl_module_takes_the_mask_per_call(backend):
    module = _module("kl_distillation", backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    t = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    mask = torch.tensor([True, False, True, True, False])
    loss_fn = module.KLDistillationLoss(temperature=2.0, reduction="sum")
    from tests.torch_references import kl_distillation
    torch.testing.assert_close(loss_fn(x, t, mask), kl_distillation(x, t, 2.0, "sum", mask))
    torch.testing.assert_close(loss_fn(x, t), kl_distillation(x, t, 2.0, "sum"))


# -- gradients: which ones, how often ---------------------------------------------------
def test_teacher_gradient_only_when_the_teacher_requires_grad(backend, monkeypatch):
    module = _module("kl_distillation", backend)
    from tests.torch_references import kl_distillation
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64, generator=gen)
    runs = []
    real = module._run
    monkeypatch.setattr(module, "_run", lambda *a, **k: runs.append(a[3:5]) or real(*a, **k))
    module.kl_distillation(x, t).backward()
    assert x.grad is not None and t.grad is None and runs == [(True, False)]
    t.requires_grad_()  # the teacher alone
    module.kl_distillation(x.detach(), t, temperature=2.0).backward()
    assert runs[1] == (False, True)
    t2 = t.detach().clone().requires_grad_()
    kl_distillation(x.detach(), t2, 2.0).backward()
    torch.testing.assert_close(t.grad, t2.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_no_grad_input_needs_no_gradient(backend, loss, monkeypatch):
    module = _module(loss, backend)
    case = Case(loss, (3, 4), TARGET_KINDS[loss][0])
    x, target, options = make_inputs(case)
    runs = []
    real = module._run
    monkeypatch.setattr(module, "_run", lambda *a, **k: runs.append(a[3:5]) or real(*a, **k))
    out = getattr(module, loss)(x, target, **options)
    assert not out.requires_grad and runs == [(False, False)]
    from tests.torch_references import REFERENCES
    torch.testing.assert_close(out, REFERENCES[loss](x, target, **options))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_returned_z_term_with_its_own_upstream_gradient(backend, reduction):
    """The gradient of ``a·loss + b·z_term`` (the term's own gradient recomputed)."""
    module = _module("cross_entropy", backend)
    case = Case("cross_entropy", (5, 4, 3), weight=True, ignore=True,
                options={"z_loss": 0.1, "label_smoothing": 0.1, "reduction": reduction,
                         "return_z_loss": True})
    x, target, options = make_inputs(case)
    from tests.torch_references import cross_entropy
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss, z = module.cross_entropy(got_x, target, **options)
    want_loss, want_z = cross_entropy(want_x, target, **options)
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(loss.shape, generator=gen, dtype=torch.float64)
    b = torch.rand(loss.shape, generator=gen, dtype=torch.float64)
    (a * loss + b * z).sum().backward()
    (a * want_loss + b * want_z).sum().backward()
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-9, atol=1e-12)
    # the z-term alone
    got_x.grad = want_x.grad = None
    _, z = module.cross_entropy(got_x, target, **options)
    _, want_z = cross_entropy(want_x, target, **options)
    z.sum().backward()
    want_z.sum().backward()
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-9, atol=1e-12)


def test_backward_scales_the_saved_gradient(backend):
    module = _module("focal_loss", backend)
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 4, 2, 1])
    (module.focal_loss(x, y) * 3.0).backward()
    x2 = x.detach().double().requires_grad_()
    from tests.torch_references import focal_loss
    (focal_loss(x2, y) * 3.0).backward()
    torch.testing.assert_close(x.grad, x2.grad.float(), rtol=2e-5, atol=1e-6)


# -- targets, edges -----------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss"])
@pytest.mark.parametrize("targets, ignore_index", [
    ([0, 2, 2, 1, 3], 2),    # ignore_index is a class, and present: those rows drop out
    ([0, 1, 1, 3, 0], 2),    # a class, absent: nothing is ignored
    ([0, 1, -100, 3, 0], -100),  # the default, present
    ([0, 1, 7, 3, 0], 7),    # outside the classes, present
])
def test_ignore_index_inside_and_outside_the_class_range(backend, loss, targets, ignore_index):
    module = _module(loss, backend)
    from tests.torch_references import REFERENCES
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for reduction in ("mean", "sum", "none"):
        got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        target = torch.tensor(targets)
        got = getattr(module, loss)(got_x, target, ignore_index=ignore_index,
                                    reduction=reduction)
        want = REFERENCES[loss](want_x, target, ignore_index=ignore_index, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss"])
@pytest.mark.parametrize("targets", [[0, 4, -100], [-1, 0, 1], [0, 1, -100, 5]])
def test_out_of_range_target_is_an_index_error(backend, loss, targets):
    x = torch.randn(len(targets), 4, dtype=torch.float64)
    with pytest.raises(IndexError, match="out of bounds"):
        getattr(_module(loss, backend), loss)(x, torch.tensor(targets))


def test_every_target_ignored_is_nan_with_zero_gradient_like_torch(backend):
    module = _module("cross_entropy", backend)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.full((3,), -100)
    loss = module.cross_entropy(x, y, z_loss=0.1)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, y))
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(0, 4), (2, 3, 0)], ids=["empty-batch", "zero-positions"])
def test_empty_inputs(backend, loss, shape):
    module = _module(loss, backend)
    from tests.torch_references import REFERENCES
    kind = TARGET_KINDS[loss][0]
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    batch = (shape[0], *shape[2:])
    target = torch.zeros(batch, dtype=torch.int64) if kind == "index" else torch.zeros(shape)
    reductions = ("sum", "none", "mean") if kind == "index" else ("sum", "none", "batchmean")
    for reduction in reductions:
        got = getattr(module, loss)(x, target.double() if kind != "index" else target,
                                    reduction=reduction)
        want = REFERENCES[loss](x.detach(), target.double() if kind != "index" else target,
                                reduction=reduction)
        torch.testing.assert_close(got, want, equal_nan=True)
        if got.dim() == 0 and not torch.isnan(got):
            (grad,) = torch.autograd.grad(got, x)
            assert grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_are_finite(backend, dtype):
    big = 3e4 if dtype == torch.float16 else 1e4  # a loss of 2·big: within float16's range
    x = torch.tensor([[big, -big, 0.0], [-big, -big, -big]], dtype=dtype, requires_grad=True)
    for loss in LOSSES:
        module = _module(loss, backend)
        target = torch.tensor([1, 2]) if loss != "kl_distillation" else x.detach().flip(1)
        out = getattr(module, loss)(x, target, reduction="none")
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all(), loss


def test_z_term_off_costs_nothing_even_where_its_square_overflows(backend):
    """z_loss is specialised (off at 0): its kernels drop λ·ℓ², so no 0·∞ where ℓ² overflows."""
    module = _module("cross_entropy", backend)
    for compiled in (True, False):
        module.use_compiled(compiled)
        try:
            x = torch.tensor([[1e20, -1e20, 0.0]], requires_grad=True)
            loss = module.cross_entropy(x, torch.tensor([1]))
            (grad,) = torch.autograd.grad(loss, x)
        finally:
            module.use_compiled(None)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), compiled
        torch.testing.assert_close(grad, torch.tensor([[1.0, -1.0, 0.0]]))


def test_large_logits_keep_their_precision_in_float32(backend):
    """The target is the largest of logits near 1000: the loss is small and must not be
    rounded at the logits' magnitude (``m - u_y`` is exact, ``m + log Σe`` is not)."""
    x = torch.tensor([[1000.0, 996.0, 995.0], [-500.0, -503.0, -501.5]])
    y = torch.tensor([0, 0])
    from tests.torch_references import REFERENCES
    for loss in ("cross_entropy", "focal_loss"):
        got = getattr(_module(loss, backend), loss)(x, y, reduction="none")
        want = REFERENCES[loss](x.double(), y, reduction="none")
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=0)


def test_input_and_targets_are_not_modified(backend):
    for loss in LOSSES:
        module = _module(loss, backend)
        for case in (Case(loss, (5, 7), TARGET_KINDS[loss][-1], dtype="float32",
                          weight=loss != "kl_distillation"),
                     Case(loss, (3, 5, 6), TARGET_KINDS[loss][-1], dtype="float16")):
            x, target, options = make_inputs(case)
            before = [t.clone() for t in (x, target, *options.values())
                      if isinstance(t, torch.Tensor)]
            x.requires_grad_()
            getattr(module, loss)(x, target, **options).sum().backward()
            after = [t for t in (x.detach(), target, *options.values())
                     if isinstance(t, torch.Tensor)]
            for b, a in zip(before, after, strict=True):
                assert torch.equal(b, a), case.name


@pytest.mark.parametrize("loss", LOSSES)
def test_docstring_example_runs(backend, loss):
    import doctest

    result = doctest.testmod(_module(loss, backend))
    assert result.attempted > 0 and result.failed == 0
