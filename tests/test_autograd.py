"""The generated torch modules as autograd citizens, against independent references.

* ``gradcheck`` / ``gradgradcheck`` (float64, finite differences) for every
  loss and option: the first backward and its own backward, the derived
  Hessian-vector product (``create_graph=True``);
* a gradient-penalty training step (``loss + λ‖∂loss/∂x‖²``) against the
  same step on the loss's definition in pure PyTorch (``torch_references``);
* a retained graph backpropagated twice;
* gradients with respect to probability targets and class weights against
  ``F.cross_entropy`` autograd, distillation with a teacher that requires
  grad, and the errors where PyTorch raises or where the module does not
  cover a case (never a silent ``None`` or a gradient without ``grad_fn``);
* ``torch.func.grad``, ``jacrev`` and ``vmap``.

The generated Triton modules share the torch modules' dense path (double
backward, target and weight gradients): the tests parametrised by ``backend``
run them too, on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``,
set here before triton is imported), with fewer and smaller cases (the
interpreter takes ~0.1 s per kernel launch) and ``gradcheck``'s fast mode.
"""

import functools
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.parity import load_generated
from tests.torch_references import REFERENCES

if "triton" not in sys.modules:
    # read when triton and the module's @triton.jit kernels are defined, and at launch
    os.environ["TRITON_INTERPRET"] = "1"

LOSSES = ("cross_entropy", "focal_loss", "kl_distillation")
MODULES = {loss: load_generated(f"{loss}_torch") for loss in LOSSES}
BACKENDS = ("torch", "triton")


@functools.cache
def _triton_module(loss):
    triton = pytest.importorskip("triton", reason="triton is not installed")
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton.language.cdiv, InterpretedFunction):
        pytest.skip("triton was imported for the GPU before TRITON_INTERPRET=1 could be set")
    return load_generated(f"{loss}_triton")


def _function(backend, loss):
    """The generated ``loss`` function of ``backend``'s module."""
    module = MODULES[loss] if backend == "torch" else _triton_module(loss)
    return getattr(module, loss)


@pytest.fixture(autouse=True)
def _quiet_interpreter(request):
    """The interpreter is NumPy-bound (one thread shares the machine), and a masked
    tile's discarded lanes may divide by zero or overflow (a GPU says nothing)."""
    if "triton" not in request.node.name:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(divide by zero|invalid value|overflow) encountered",
                                RuntimeWarning)
        yield
    torch.set_num_threads(threads)
REDUCTIONS = {"cross_entropy": ("mean", "sum", "none"), "focal_loss": ("mean", "sum", "none"),
              "kl_distillation": ("batchmean", "mean", "sum", "none")}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _logits(shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=_gen(seed)).requires_grad_()


def _classes(shape, seed=1, ignore=False):
    """Class indices for an input of ``shape`` (every third row ignored with ``ignore``)."""
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else (shape[0], *shape[2:])
    y = torch.randint(0, n_classes, batch, generator=_gen(seed))
    if ignore and y.dim() > 0:
        y.view(-1)[::3] = -100
    return y


def _probabilities(shape, seed=2):
    axis = 0 if len(shape) == 1 else 1
    return torch.softmax(torch.randn(*shape, dtype=torch.float64, generator=_gen(seed)), axis)


def _weight(n_classes, seed=3):
    return torch.rand(n_classes, dtype=torch.float64, generator=_gen(seed)) + 0.5


# (loss, shape, target kind, options): every option of every loss, each reduction below
CLASS_OPTIONS = [
    {}, {"label_smoothing": 0.2}, {"weight": True}, {"weight": True, "label_smoothing": 0.1},
    {"ignore": True}, {"ignore": True, "weight": True, "label_smoothing": 0.1},
]
CASES = (
    [("cross_entropy", shape, kind, o) for shape in ((3, 5), (2, 3, 2), (4,))
     for kind in ("index", "probability") for o in CLASS_OPTIONS
     if not (kind == "probability" and o.get("ignore"))]
    + [("cross_entropy", (3, 5), kind, o) for kind in ("index", "probability")
       for o in ({"z_loss": 0.1}, {"softcap": 2.0}, {"z_loss": 0.2, "softcap": 3.0,
                                                      "label_smoothing": 0.1})]
    + [("focal_loss", (3, 4), kind, {**o, "gamma": g}) for kind in ("index", "probability")
       for g in (0.0, 2.0) for o in ({}, {"weight": True, "label_smoothing": 0.1})]
    + [("focal_loss", (2, 3, 2), kind, {"gamma": 1.5}) for kind in ("index", "probability")]
    + [("kl_distillation", shape, "teacher", o) for shape in ((3, 5), (2, 3, 2), (5,))
       for o in ({}, {"temperature": 2.0}, {"mask": True, "temperature": 0.5})]
)


# the Triton modules' cases, one reduction each, two rows (the interpreter's time goes
# by the programs launched, one per row here): every option
TRITON_CASES = [
    ("cross_entropy", (2, 4), "index", {"ignore": True, "weight": True, "label_smoothing": 0.1,
                                        "z_loss": 0.2, "softcap": 3.0}, "mean"),
    ("cross_entropy", (2, 3, 2), "probability", {"weight": True, "label_smoothing": 0.2,
                                                 "z_loss": 0.1}, "none"),
    ("focal_loss", (2, 4), "probability", {"gamma": 2.0, "weight": True}, "sum"),
    ("kl_distillation", (2, 4), "teacher", {"mask": True, "temperature": 2.0}, "batchmean"),
]


def _inputs(loss, shape, kind, options, seed=0):
    """``(x, target, options)``: float64 logits that require grad, the target, the options."""
    x = _logits(shape, seed)
    options = dict(options)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    if options.pop("weight", False):
        options["weight"] = _weight(n_classes)
    ignore = options.pop("ignore", False)
    if options.pop("mask", False):
        batch = () if len(shape) == 1 else (shape[0], *shape[2:])
        mask = torch.ones(batch, dtype=torch.bool)
        if mask.dim():
            mask.view(-1)[0] = False
        options["mask"] = mask
    if kind == "index":
        target = _classes(shape, seed + 1, ignore)
    elif kind == "probability":
        target = _probabilities(shape, seed + 2)
    else:
        target = torch.randn(*shape, dtype=torch.float64, generator=_gen(seed + 3))
    return x, target, options


def _name(case):
    loss, shape, kind, options = case
    return f"{loss}-{'x'.join(map(str, shape))}-{kind}-" + (
        ",".join(f"{k}={v}" for k, v in options.items()) or "plain")


@pytest.mark.parametrize("backend, case, reductions", [
    *(pytest.param("torch", case, REDUCTIONS[case[0]], id=_name(case)) for case in CASES),
    *(pytest.param("triton", case[:4], case[4:], id=f"triton-{_name(case[:4])}-{case[4]}")
      for case in TRITON_CASES),
])
def test_gradcheck_and_gradgradcheck(backend, case, reductions):
    """First and second derivatives by finite differences, every reduction (the Triton
    module's: one each, fast mode); a probability target differentiated too (its
    gradient and the mixed terms), and its class weights."""
    loss, shape, kind, options = case
    function = _function(backend, loss)
    fast = backend == "triton"
    x, target, options = _inputs(loss, shape, kind, options)
    for reduction in reductions:
        if kind == "probability" and "weight" in options:
            target = target.detach().requires_grad_()
            weight = options["weight"].detach().requires_grad_()
            rest = {k: v for k, v in options.items() if k != "weight"}

            def f(x, t, w, reduction=reduction, rest=rest):
                return function(x, t, weight=w, reduction=reduction, **rest)

            inputs = (x, target, weight)
        elif kind in ("probability", "teacher"):
            target = target.detach().requires_grad_()

            def f(x, t, reduction=reduction):
                return function(x, t, reduction=reduction, **options)

            inputs = (x, target)
        else:
            def f(x, reduction=reduction, target=target):
                return function(x, target, reduction=reduction, **options)

            inputs = (x,)
        assert torch.autograd.gradcheck(f, inputs, fast_mode=fast)
        assert torch.autograd.gradgradcheck(f, inputs, fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_graph_gives_a_differentiable_gradient(backend):
    x, y = _logits((4, 6)), _classes((4, 6))
    (g,) = torch.autograd.grad(_function(backend, "cross_entropy")(x, y), x,
                               create_graph=True)
    assert g.grad_fn is not None
    (h,) = torch.autograd.grad((g**2).sum(), x)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(x, y), x, create_graph=True)
    (h_ref,) = torch.autograd.grad((g_ref**2).sum(), x)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)


PENALTY_CASES = [
    ("cross_entropy", "index", {"weight": True, "label_smoothing": 0.1, "ignore": True}),
    ("cross_entropy", "probability", {"z_loss": 0.05, "softcap": 4.0}),
    ("focal_loss", "index", {"gamma": 2.0, "label_smoothing": 0.1}),
    ("kl_distillation", "teacher", {"temperature": 2.0}),
]


@pytest.mark.parametrize("backend, loss, kind, options", [
    *(("torch", *case) for case in PENALTY_CASES),
    ("triton", *PENALTY_CASES[0]), ("triton", *PENALTY_CASES[3]),
])
def test_gradient_penalty_training_step_matches_pure_pytorch(backend, loss, kind, options):
    """One SGD step of a linear model on ``loss + λ‖∂loss/∂logits‖²``: the weight's
    gradient needs the loss's second derivative (the derived Hessian-vector product)."""
    torch.manual_seed(0)
    rows = 6 if backend == "torch" else 3  # the interpreter: a program per row
    h = torch.randn(rows, 5, dtype=torch.float64)
    _, target, options = _inputs(loss, (rows, 4), kind, options)
    steps = {}
    for name, function in (("module", _function(backend, loss)),
                           ("reference", REFERENCES[loss])):
        layer = torch.nn.Linear(5, 4, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(4, 5))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64))
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
        logits = layer(h)
        value = function(logits, target, **options)
        (g,) = torch.autograd.grad(value, logits, create_graph=True)
        (value + 3.0 * (g**2).sum()).backward()
        steps[name] = (layer.weight.grad.clone(), layer.bias.grad.clone())
        optimizer.step()
    for got, want in zip(steps["module"], steps["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert steps["module"][0].abs().sum() > 0


@pytest.mark.parametrize("backend, loss, reduction_index", [
    *(("torch", loss, index) for loss in LOSSES for index in (0, -1)),
    *(("triton", loss, -1) for loss in LOSSES),
])
def test_a_retained_graph_backpropagates_twice(backend, loss, reduction_index):
    kind = "teacher" if loss == "kl_distillation" else "index"
    x, target, options = _inputs(loss, (3, 5), kind, {})
    reduction = REDUCTIONS[loss][reduction_index]
    out = _function(backend, loss)(x, target, reduction=reduction, **options)
    upstream = torch.rand(out.shape, dtype=torch.float64, generator=_gen(9))
    out.backward(upstream, retain_graph=True)
    first = x.grad.clone()
    out.backward(upstream)
    torch.testing.assert_close(x.grad, 2 * first, rtol=1e-12, atol=0)
    x2 = x.detach().clone().requires_grad_()
    REFERENCES[loss](x2, target, reduction=reduction, **options).backward(upstream)
    torch.testing.assert_close(first, x2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend, shape, reduction, label_smoothing", [
    *(("torch", shape, reduction, label_smoothing) for shape in ((4, 5), (2, 5, 3), (5,))
      for reduction in ("mean", "sum", "none") for label_smoothing in (0.0, 0.15)),
    ("triton", (4, 5), "mean", 0.0), ("triton", (2, 5, 3), "none", 0.15),
    ("triton", (5,), "sum", 0.15),
])
def test_probability_target_and_weight_gradients_match_pytorch(backend, shape, reduction,
                                                              label_smoothing):
    x = _logits(shape)
    p = _probabilities(shape).requires_grad_()
    w = _weight(shape[0] if len(shape) == 1 else shape[1]).requires_grad_()
    out = _function(backend, "cross_entropy")(x, p, weight=w, reduction=reduction,
                                              label_smoothing=label_smoothing)
    upstream = torch.rand(out.shape, dtype=torch.float64, generator=_gen(7))
    got = torch.autograd.grad(out, (x, p, w), upstream)
    want = torch.autograd.grad(F.cross_entropy(x, p, weight=w, reduction=reduction,
                                               label_smoothing=label_smoothing),
                               (x, p, w), upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_focal_loss_probability_target_gradient_matches_its_definition():
    x, p = _logits((4, 5)), _probabilities((4, 5)).requires_grad_()
    w = _weight(5).requires_grad_()
    got = torch.autograd.grad(MODULES["focal_loss"].focal_loss(x, p, gamma=2.0, weight=w),
                              (x, p, w))
    want = torch.autograd.grad(REFERENCES["focal_loss"](x, p, gamma=2.0, weight=w), (x, p, w))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss"])
def test_weight_that_requires_grad_with_class_indices_raises_as_pytorch(backend, loss):
    x, y, w = _logits((3, 4)), _classes((3, 4)), _weight(4).requires_grad_()
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        F.cross_entropy(x, y, weight=w)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        _function(backend, loss)(x, y, weight=w)
    with torch.no_grad():  # nothing to differentiate: no error
        _function(backend, loss)(x, y, weight=w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distillation_with_a_learned_teacher_and_a_gradient_penalty(backend):
    """Student and teacher both linear layers; the penalty on the student's logit
    gradient reaches the teacher's weights through the derived mixed derivatives."""
    h = torch.randn(6, 5, dtype=torch.float64, generator=_gen(4))
    grads = {}
    for name, function in (("module", _function(backend, "kl_distillation")),
                           ("reference", REFERENCES["kl_distillation"])):
        student = torch.nn.Linear(5, 4, dtype=torch.float64)
        teacher = torch.nn.Linear(5, 4, dtype=torch.float64)
        with torch.no_grad():
            student.weight.copy_(torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(4, 5))
            teacher.weight.copy_(torch.linspace(1, -0.5, 20, dtype=torch.float64).reshape(4, 5))
            student.bias.zero_()
            teacher.bias.fill_(0.1)
        x, t = student(h), teacher(h)
        value = function(x, t, temperature=2.0)
        gx, gt = torch.autograd.grad(value, (x, t), create_graph=True)
        (value + 2.0 * (gx**2).sum() + 0.5 * (gt**2).sum()).backward()
        grads[name] = (student.weight.grad, teacher.weight.grad)
    for got, want in zip(grads["module"], grads["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_distillation_with_a_teacher_that_requires_grad():
    x = _logits((4, 6))
    t = torch.randn(4, 6, dtype=torch.float64, generator=_gen(5)).requires_grad_()
    got = torch.autograd.grad(MODULES["kl_distillation"].kl_distillation(x, t, temperature=2.0),
                              (x, t))
    want = torch.autograd.grad(REFERENCES["kl_distillation"](x, t, temperature=2.0), (x, t))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, t: MODULES["kl_distillation"].kl_distillation(x, t, temperature=2.0), (x, t))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_a_returned_term_with_its_own_upstream_gradient_differentiates_twice(reduction):
    """``return_z_loss``: the total and the z part each get their own upstream gradient;
    both flow into the differentiable gradient (probabilities and weights too)."""
    x = _logits((3, 5))
    p, w = _probabilities((3, 5)).requires_grad_(), _weight(5).requires_grad_()
    function = MODULES["cross_entropy"].cross_entropy

    def f(x, p, w):
        total, z = function(x, p, weight=w, z_loss=0.1, softcap=3.0, return_z_loss=True,
                            reduction=reduction, label_smoothing=0.1)
        return total + 2 * z

    assert torch.autograd.gradcheck(f, (x, p, w))
    assert torch.autograd.gradgradcheck(f, (x, p, w))
    y = _classes((3, 5), ignore=True)
    assert torch.autograd.gradgradcheck(
        lambda x: function(x, y, z_loss=0.1, return_z_loss=True, reduction=reduction)[1], (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_third_derivatives_are_autograd_of_the_printed_second_order(backend):
    x, y = _logits((3, 4)), _classes((3, 4))
    found = []
    for function in (_function(backend, "cross_entropy"), F.cross_entropy):
        (g,) = torch.autograd.grad(function(x, y), x, create_graph=True)
        (h,) = torch.autograd.grad((g**2).sum(), x, create_graph=True)
        found.append(torch.autograd.grad((h**2).sum(), x)[0])
    torch.testing.assert_close(*found, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend, loss", [*(("torch", loss) for loss in LOSSES),
                                           ("triton", "cross_entropy")])
def test_torch_func_grad_jacrev_and_vmap(backend, loss):
    kind = "teacher" if loss == "kl_distillation" else "index"
    x, target, options = _inputs(loss, (3, 5), kind, {})
    x = x.detach()
    function, reference = _function(backend, loss), REFERENCES[loss]
    torch.testing.assert_close(torch.func.grad(lambda x: function(x, target))(x),
                               torch.func.grad(lambda x: reference(x, target))(x))
    torch.testing.assert_close(
        torch.func.jacrev(lambda x: function(x, target, reduction="none"))(x),
        torch.func.jacrev(lambda x: reference(x, target, reduction="none"))(x))
    xs = torch.stack([x, 2 * x])
    torch.testing.assert_close(torch.func.vmap(lambda x: function(x, target))(xs),
                               torch.func.vmap(lambda x: reference(x, target))(xs))
    # per-sample gradients: vmap over grad
    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(lambda x: function(x, target)))(xs),
        torch.func.vmap(torch.func.grad(lambda x: reference(x, target)))(xs))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reduction_index", [0, -1])
def test_meta_tensors_give_shapes_and_dtypes_forward_and_backward(loss, reduction_index):
    """Meta tensors hold no values: nothing on the path reads one on the host."""
    reduction = REDUCTIONS[loss][reduction_index]
    kind = "teacher" if loss == "kl_distillation" else "index"
    x, target, options = _inputs(loss, (4, 5, 3), kind, {})
    x_meta = torch.empty(x.shape, device="meta", requires_grad=True)
    target_meta = torch.empty_like(target, device="meta")
    want = REFERENCES[loss](x.float(), target.float() if kind == "teacher" else target,
                            reduction=reduction)
    got = getattr(MODULES[loss], loss)(x_meta, target_meta, reduction=reduction)
    assert got.device.type == "meta" and got.shape == want.shape and got.dtype == torch.float32
    (g,) = torch.autograd.grad(got, x_meta, torch.ones_like(got), create_graph=True)
    assert g.device.type == "meta" and g.shape == x.shape and g.dtype == torch.float32


@pytest.mark.parametrize("loss", LOSSES)
def test_autocast_gives_pytorchs_dtypes(loss):
    """Autocast's policy for cross-entropy: a float32 loss from bfloat16 logits, and a
    bfloat16 gradient for them."""
    kind = "teacher" if loss == "kl_distillation" else "index"
    x, target, options = _inputs(loss, (4, 5), kind, {})
    x = x.detach().to(torch.bfloat16).requires_grad_()
    if kind == "teacher":
        target = target.to(torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        out = getattr(MODULES[loss], loss)(x, target)
        if loss == "cross_entropy":
            assert F.cross_entropy(x, target).dtype == torch.float32
    assert out.dtype == torch.float32
    out.backward()
    assert x.grad.dtype == torch.bfloat16
    want = REFERENCES[loss](x.detach().double(), target.double() if kind == "teacher" else target)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)


def test_class_index_out_of_range_still_raises_index_error():
    with pytest.raises(IndexError, match="out of bounds"):
        MODULES["cross_entropy"].cross_entropy(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(IndexError, match="out of bounds"):
        MODULES["cross_entropy"].cross_entropy(torch.randn(2, 3), torch.tensor([-1, -100]))


def test_class_targets_checked_off_the_cpu_path_without_a_host_read(monkeypatch):
    """The check that an accelerator takes (as under torch.compile): a device-side
    assert only.  It once went on to read the flag on the host and to fill names of
    its caller (a NameError for every valid target)."""
    module = MODULES["cross_entropy"]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    options = {"weight": None, "ignore_index": -100, "label_smoothing": 0.0}
    found = module._targets(torch.zeros(4, 3), torch.tensor([2, -100, 0, 1]), options, 3)
    assert found["y"].reshape(-1).tolist() == [2, 0, 0, 1]
    assert found["valid"].reshape(-1).tolist() == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(RuntimeError, match="out of bounds"):
        module._targets(torch.zeros(2, 3), torch.tensor([0, 3]), options, 3)


def _ulps(got, want, dtype):
    """``|got − want|`` in units of the last place of ``dtype`` at ``want``."""
    r = want.to(dtype).abs()
    ulp = (torch.nextafter(r, torch.tensor(float("inf"), dtype=dtype)) - r).double()
    return ((got.double() - want).abs() / ulp).max().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", LOSSES)
def test_half_precision_gradients_within_one_ulp_of_float64(dtype, loss):
    """Every reduction, a per-row (or scalar) upstream gradient that is not 1: the gradient
    is scaled in float32 and rounded once (PyTorch's CPU kernels are many ulps off)."""
    gen = _gen(11)
    function = getattr(MODULES[loss], loss)
    for reduction in REDUCTIONS[loss]:
        x = (3 * torch.randn(16, 33, generator=gen)).to(dtype).requires_grad_()
        if loss == "kl_distillation":
            target = (3 * torch.randn(16, 33, generator=gen)).to(dtype)
            options = {"temperature": 2.0}
        else:
            target, options = torch.randint(0, 33, (16,), generator=gen), {"label_smoothing": 0.1}
        out = function(x, target, reduction=reduction, **options)
        upstream = (torch.rand(out.shape, generator=gen) + 0.5).to(dtype)
        (got,) = torch.autograd.grad(out, x, upstream)
        x64 = x.detach().double().requires_grad_()
        t64 = target.double() if loss == "kl_distillation" else target
        (want,) = torch.autograd.grad(REFERENCES[loss](x64, t64, reduction=reduction, **options),
                                      x64, upstream.double())
        assert got.dtype == dtype
        assert _ulps(got, want, dtype) <= 1.0, reduction


def _import_as(name, loss):
    """The generated module loaded from its file under ``name``, as Python's recipe for
    importing a source file does (``sys.modules`` first: torch.compile imports a
    function's module by name for its guards)."""
    import importlib.util
    import sys

    from tests.parity import GENERATED
    spec = importlib.util.spec_from_file_location(name, GENERATED / f"{loss}_torch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


COMPILED = {loss: _import_as(f"compiled_{loss}_torch", loss) for loss in LOSSES}


@pytest.mark.parametrize("loss", LOSSES)
def test_torch_compile_fullgraph_without_graph_breaks(loss):
    """Under torch.compile the call is one custom operator (named per import): zero graph
    breaks by ``torch._dynamo.explain``, and the compiled loss and gradient as eager."""
    kind = "teacher" if loss == "kl_distillation" else "index"
    x, target, options = _inputs(loss, (4, 5), kind, {})
    x = x.detach().float().requires_grad_()
    target = target.float() if kind == "teacher" else target
    function = getattr(COMPILED[loss], loss)
    for reduction in (REDUCTIONS[loss][0], "none"):
        def f(x, t, reduction=reduction):
            return function(x, t, reduction=reduction)

        explained = torch._dynamo.explain(f)(x, target)
        assert explained.graph_break_count == 0, explained.break_reasons
        compiled = torch.compile(f, fullgraph=True)
        out = compiled(x, target)
        upstream = torch.rand(out.shape, generator=_gen(3))
        (got,) = torch.autograd.grad(out, x, upstream)
        eager = f(x, target)
        (want,) = torch.autograd.grad(eager, x, upstream)
        torch.testing.assert_close(out, eager)
        torch.testing.assert_close(got, want)


def test_the_same_file_imported_twice_registers_two_operators():
    again = _import_as("another_name_for_it", "cross_entropy")
    assert again._OP_NAMESPACE != COMPILED["cross_entropy"]._OP_NAMESPACE
    namespaces = {m._OP_NAMESPACE for m in (*COMPILED.values(), *MODULES.values(), again)}
    assert len(namespaces) == 2 * len(LOSSES) + 1
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 3])
    for module in (again, COMPILED["cross_entropy"]):
        torch.testing.assert_close(torch.compile(module.cross_entropy, fullgraph=True)(x, y),
                                   F.cross_entropy(x, y))


def test_targets_checked_on_the_device_under_torch_compile():
    """Compiled, the class-index check is a device-side assert (no host read): ignored
    rows and smoothing as eager, and a class out of range still stops the call."""
    function = COMPILED["cross_entropy"].cross_entropy
    x = torch.randn(5, 4, generator=_gen(2), requires_grad=True)
    y = torch.tensor([0, -100, 3, 1, -100])
    w = torch.rand(4, generator=_gen(3)) + 0.5

    def f(x, y):
        return function(x, y, weight=w, label_smoothing=0.1)

    out = torch.compile(f, fullgraph=True)(x, y)
    (got,) = torch.autograd.grad(out, x)
    want = F.cross_entropy(x, y, weight=w, label_smoothing=0.1)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(got, torch.autograd.grad(want, x)[0])
    with pytest.raises((RuntimeError, IndexError), match="out of bounds"):
        torch.compile(f, fullgraph=True)(x, torch.tensor([0, 1, 4, 1, 2]))
