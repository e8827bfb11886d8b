"""symce check for every registered loss: focal loss, distillation, cross-entropy's z-loss and
soft-capping.

The reference (the derivation's, :mod:`symce.checker.reference`) is compared with torch
float64 autograd of the definitions written here by hand; hand-written implementations
(tests/gallery/losses.py) pass, and the usual mistakes fail with a report that names them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from symce.checker import CheckUsageError, check_implementation, load
from symce.checker.battery import Options, battery, build
from symce.checker.reference import LossSpec, reduced, reference
from symce.cli import main
from symce.testing import assert_loss

GALLERY = Path(__file__).parent / "gallery"
LOSSES = GALLERY / "losses.py"


# -- independent references: torch float64 autograd of the definitions ------------------
def _class_coefficients(x, target, weight, ignore_index, smoothing):
    """``(c [rows, C], kept [rows], divisor)`` with PyTorch's cross-entropy conventions."""
    classes = x.shape[-1]
    w = torch.ones(classes, dtype=x.dtype) if weight is None else weight
    if target.dtype == torch.int64:
        kept = target != ignore_index
        y = torch.where(kept, target, torch.zeros_like(target))
        onehot = F.one_hot(y, classes).to(x.dtype)
        c = ((1 - smoothing) * w[y, None] * onehot + smoothing / classes * w) * kept[:, None]
        return c, kept.to(x.dtype), (w[y] * kept).sum()
    c = w * ((1 - smoothing) * target + smoothing / classes)
    return c, torch.ones(len(c), dtype=x.dtype), torch.tensor(float(len(c)), dtype=x.dtype)


def _rows(logits, target):
    """Tensors ``(N, C, d…)`` / ``(C,)`` as rows, the classes last."""
    if logits.dim() == 1:
        return logits[None], target[None]
    classes = logits.shape[1]
    x = logits.movedim(1, -1).reshape(-1, classes)
    t = target.reshape(-1) if target.dtype == torch.int64 else (
        target.movedim(1, -1).reshape(-1, classes))
    return x, t


def _positions(logits):
    return () if logits.dim() == 1 else (logits.shape[0], *logits.shape[2:])


def torch_focal(logits, target, gamma=2.0, weight=None, ignore_index=-100, smoothing=0.0,
                reduction="mean"):
    """-sum_i c_i (1 - q_i)**gamma log q_i per row."""
    x, t = _rows(logits, target)
    c, _, divisor = _class_coefficients(x, t, weight, ignore_index, smoothing)
    logq = torch.log_softmax(x, dim=1)
    rows = -(c * (1 - logq.exp()) ** gamma * logq).sum(dim=1)
    if reduction == "none":
        return rows.reshape(_positions(logits))
    return rows.sum() if reduction == "sum" else rows.sum() / divisor


def torch_z_softcap(logits, target, z_loss=0.0, softcap=None, weight=None, ignore_index=-100,
                    smoothing=0.0, reduction="mean"):
    """Cross-entropy of s*tanh(x/s), plus z_loss * LSE**2 on every row that counts (divided by
    the rows that count for mean, Liger-Kernel's convention)."""
    capped = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    x, t = _rows(capped, target)
    c, kept, divisor = _class_coefficients(x, t, weight, ignore_index, smoothing)
    logq = torch.log_softmax(x, dim=1)
    ce = -(c * logq).sum(dim=1)
    z = z_loss * torch.logsumexp(x, dim=1) ** 2 * kept
    if reduction == "none":
        return (ce + z).reshape(_positions(logits))
    if reduction == "sum":
        return ce.sum() + z.sum()
    return ce.sum() / divisor + z.sum() / kept.sum()


def torch_kl(logits, teacher, temperature=1.0, mask=None, reduction="batchmean"):
    """T**2 KL(softmax(t/T) || softmax(x/T)) with torch's own kl_div, per row."""
    T = temperature
    x, t = _rows(logits / T, teacher / T)
    rows = T**2 * F.kl_div(torch.log_softmax(x, 1), torch.log_softmax(t, 1),
                           reduction="none", log_target=True).sum(dim=1)
    keep = torch.ones_like(rows) if mask is None else mask.reshape(-1).to(rows.dtype)
    rows = rows * keep
    if reduction == "none":
        return rows.reshape(_positions(logits))
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (keep.sum() * (x.shape[1] if reduction == "mean" else 1))


def _autograd(definition, logits, target, **options):
    x = torch.tensor(logits, requires_grad=True)
    t = torch.tensor(target)
    for key, value in list(options.items()):
        if isinstance(value, np.ndarray):
            options[key] = torch.tensor(value)
    loss = definition(x, t, **options)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach().numpy(), grad.numpy()


def _close(got, want, scale=1.0):
    assert np.shape(got[0]) == np.shape(want[0]) and np.shape(got[1]) == np.shape(want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-11, atol=1e-12 * scale)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-12 * scale)


def _inputs(rng, shape, kind):
    classes = shape[1] if len(shape) > 1 else shape[0]
    positions = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    logits = rng.normal(size=shape) * 3
    if kind == "index":
        target = rng.integers(0, classes, positions)
        if target.ndim:
            target.reshape(-1)[1::3] = -100
        return logits, target
    if kind == "teacher":
        return logits, rng.normal(size=shape) * 2
    probs = rng.dirichlet(np.ones(classes), int(np.prod(positions, dtype=int)))
    probs = probs * rng.uniform(0.2, 3.0, (len(probs), 1))  # not normalised: the general form
    target = probs.reshape(*positions, classes)
    return logits, np.moveaxis(target, -1, 1) if len(shape) > 1 else target


SHAPES = [(5,), (4, 5), (3, 4, 2), (2, 1)]


@pytest.mark.parametrize(("shape", "kind", "gamma", "weighted", "smoothing", "reduction"), [
    case for case in itertools.product(SHAPES, ["index", "probs"], [0.0, 0.5, 2.0, 3.5],
                                       [False, True], [0.0, 0.2], ["mean", "sum", "none"])
])
def test_focal_reference_is_torch_autograd_of_the_definition(shape, kind, gamma, weighted,
                                                             smoothing, reduction):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    logits, target = _inputs(rng, shape, kind)
    classes = shape[1] if len(shape) > 1 else shape[0]
    weight = rng.uniform(0.1, 3.0, classes) if weighted else None
    options = {"weight": weight, "label_smoothing": smoothing,
               "ignore_index": -100 if kind == "index" else None}
    got = reference(LossSpec("focal_loss", (("gamma", gamma),)), logits, target, reduction,
                    options)
    want = _autograd(torch_focal, logits, target, gamma=gamma, weight=weight,
                     smoothing=smoothing, reduction=reduction)
    _close(got, want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_with_gamma_zero_is_torchs_cross_entropy(reduction):
    rng = np.random.default_rng(5)
    logits, target = _inputs(rng, (6, 4), "index")
    got = reference(LossSpec("focal_loss", (("gamma", 0.0),)), logits, target, reduction,
                    {"ignore_index": -100})
    want = _autograd(lambda x, t: F.cross_entropy(x, t, reduction=reduction), logits, target)
    _close(got, want)


@pytest.mark.parametrize(("shape", "temperature", "masked", "reduction"), [
    case for case in itertools.product([(5,), (4, 5), (3, 4, 2)], [0.5, 1.0, 2.0, 4.0],
                                       [False, True], ["batchmean", "sum", "none", "mean"])
])
def test_distillation_reference_is_torch_kl_div(shape, temperature, masked, reduction):
    rng = np.random.default_rng(len(shape) * 10 + int(temperature * 4))
    logits, teacher = _inputs(rng, shape, "teacher")
    positions = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    mask = None
    if masked:
        mask = np.ones(positions, dtype=bool)
        mask.reshape(-1)[1::2] = False
    spec = LossSpec("kl_distillation", (("temperature", temperature),))
    got = reference(spec, logits, teacher, reduction, {"mask": mask})
    want = _autograd(torch_kl, logits, teacher, temperature=temperature, mask=mask,
                     reduction=reduction)
    _close(got, want)


@pytest.mark.parametrize(("kind", "z_loss", "softcap", "options", "reduction"), [
    case for case in itertools.product(
        ["index", "probs"], [0.0, 0.3], [None, 2.5],
        [{}, {"weighted": True, "smoothing": 0.1}], ["mean", "sum", "none"])
])
def test_z_loss_and_softcap_reference_is_torch_autograd(kind, z_loss, softcap, options,
                                                         reduction):
    rng = np.random.default_rng(11)
    logits, target = _inputs(rng, (5, 4), kind)
    weight = rng.uniform(0.1, 3.0, 4) if options.get("weighted") else None
    smoothing = options.get("smoothing", 0.0)
    params = (("z_loss", z_loss),) + ((("softcap", softcap),) if softcap else ())
    got = reference(LossSpec("cross_entropy", params), logits * 4, target, reduction,
                    {"weight": weight, "label_smoothing": smoothing,
                     "ignore_index": -100 if kind == "index" else None})
    want = _autograd(torch_z_softcap, logits * 4, target, z_loss=z_loss, softcap=softcap,
                     weight=weight, smoothing=smoothing, reduction=reduction)
    _close(got, want, scale=10.0)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 5), classes=st.integers(1, 6), gamma=st.sampled_from([0.0, 1.0, 2.5]),
       scale=st.sampled_from([1.0, 20.0]), seed=st.integers(0, 2**16))
def test_the_core_takes_any_coefficients(rows, classes, gamma, scale, seed):
    """The diagnoses feed altered c to the core: any c must give the definition's value."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, classes)) * scale
    c = rng.uniform(0, 2, size=(rows, classes))
    c[rng.random(c.shape) < 0.3] = 0.0
    got = reduced(LossSpec("focal_loss", (("gamma", gamma),)), x, c, "sum")
    xt = torch.tensor(x, requires_grad=True)
    logq = torch.log_softmax(xt, dim=1)
    loss = -(torch.tensor(c) * (1 - logq.exp()) ** gamma * logq).sum()
    (grad,) = torch.autograd.grad(loss, xt)
    np.testing.assert_allclose(got[0], loss.item(), rtol=1e-11, atol=1e-11 * scale)
    np.testing.assert_allclose(got[1], grad.numpy(), rtol=1e-9, atol=1e-12 * scale)


def test_focal_reference_is_finite_where_a_softmax_saturates():
    """q = 1 exactly: (1-q)**gamma/(1-q) is folded to (1-q)**(gamma-1) once gamma is known."""
    x = np.array([[1e4, 0.0, -1e4], [0.0, 60.0, 0.0]])
    target = np.array([0, 0])
    loss, grad = reference(LossSpec("focal_loss"), x, target, "sum")
    want = _autograd(torch_focal, x, target, reduction="sum")
    assert np.all(np.isfinite(grad))
    _close((loss, grad), want, scale=1e4)


# -- the battery: a teacher's cases, the calling convention ------------------------------
def test_a_teacher_battery_has_masked_and_unmasked_cases():
    options = Options(params=(("temperature", 2.0),), mask=True)
    specs = battery("teacher", options=options, shapes=("2d", "kdim", "unbatched"),
                    loss="kl_distillation")
    cases = [build(s) for s in specs]
    masked = [c for c in cases if c.mask is not None]
    assert masked and len(masked) < len(cases)
    for case in masked:
        assert case.mask.shape == case.logits.shape[:1] + case.logits.shape[2:]
        assert case.mask.reshape(-1)[0] and not case.mask.all()
        assert case.options["mask"] is case.mask and case.options["temperature"] == 2.0
    assert all(c.target.shape == c.logits.shape and c.kind == "teacher" for c in cases)
    assert all("mask" not in c.options for c in cases if c.mask is None)


def test_the_implementation_is_called_as_the_generated_functions_are():
    seen = []

    def recording(logits, teacher, **kwargs):
        seen.append({k: (type(v).__name__, getattr(v, "dtype", v)) for k, v in kwargs.items()})
        assert teacher.dtype == logits.dtype and teacher.shape == logits.shape
        return torch_kl(logits, teacher, **kwargs)

    report = check_implementation(recording, loss="kl_distillation",
                                  params={"temperature": 2.0}, timeout=None)
    assert report.passed, str(report)
    assert {"temperature": ("float", 2.0)} in seen
    assert {"temperature": ("float", 2.0), "mask": ("Tensor", torch.bool)} in seen
    assert "called as f(logits, teacher, temperature=2, mask=m (some cases))" in str(report)
    seen.clear()
    assert check_implementation(recording, loss="kl_distillation", mask=False,
                                timeout=None).passed
    assert seen and all(s == {} for s in seen)  # nothing given: nothing passed


# -- hand-written implementations: right ones pass ---------------------------------------
CORRECT = [
    ("focal_gather", {"loss": "focal_loss"}),
    ("focal_gather", {"loss": "focal_loss", "params": {"gamma": 0.5}}),
    ("focal_gather", {"loss": "focal_loss", "params": {"gamma": 0.0}}),
    ("focal_every_option", {"loss": "focal_loss", "weight": "random", "ignore_index": -100,
                            "label_smoothing": 0.1, "shapes": "all"}),
    ("focal_every_option", {"loss": "focal_loss", "target": "probs", "weight": "random",
                            "label_smoothing": 0.2, "params": {"gamma": 1.5}, "shapes": "all"}),
    ("focal_sum", {"loss": "focal_loss", "reduction": "sum", "params": {"gamma": 3.0}}),
    ("focal_none", {"loss": "focal_loss", "reduction": "none", "shapes": "all"}),
    ("kl_masked", {"loss": "kl_distillation", "shapes": "all"}),
    ("kl_masked", {"loss": "kl_distillation", "params": {"temperature": 2.0}, "shapes": "all"}),
    ("kl_masked", {"loss": "kl_distillation", "params": {"temperature": 0.5}}),
    ("kl_div_builtin", {"loss": "kl_distillation", "params": {"temperature": 3.0},
                        "mask": False}),
    ("kl_sum", {"loss": "kl_distillation", "reduction": "sum", "params": {"temperature": 2.0}}),
    ("kl_none", {"loss": "kl_distillation", "reduction": "none",
                 "params": {"temperature": 2.0}, "shapes": "all"}),
    ("kl_mean", {"loss": "kl_distillation", "reduction": "mean",
                 "params": {"temperature": 2.0}}),
    ("kl_numpy_with_grad", {"loss": "kl_distillation", "backend": "numpy",
                            "params": {"temperature": 2.0}}),
]


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(("name", "options"), CORRECT,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CORRECT)])
def test_correct_implementations_of_other_losses_pass(name, options, seed):
    report = check_implementation(load(f"{LOSSES}:{name}"), timeout=None, seed=seed, **options)
    assert report.passed, str(report)
    assert report.counterexample is None and report.diagnosis == []


def test_cross_entropy_with_z_loss_and_softcap_passes_by_hand():
    def by_hand(logits, target, z_loss=0.0, softcap=None, weight=None, ignore_index=-100,
                label_smoothing=0.0):
        return torch_z_softcap(logits, target, z_loss, softcap, weight, ignore_index,
                               label_smoothing)

    report = check_implementation(by_hand, params={"z_loss": 1e-2, "softcap": 2.5},
                                  weight="random", ignore_index=-100, label_smoothing=0.1,
                                  shapes="2d,unbatched", timeout=None)
    assert report.passed, str(report)
    assert "loss cross_entropy: z_loss=0.01, softcap=2.5" in str(report)
    def z_loss_ignored(logits, target, z_loss=0.0):
        return F.cross_entropy(logits, target)

    plain = check_implementation(z_loss_ignored, params={"z_loss": 0.1}, timeout=None)
    assert not plain.passed
    assert any("it matches cross_entropy with z_loss=0, not z_loss=0.1" in d
               for d in plain.diagnosis), plain.diagnosis


# -- hand-written implementations: wrong ones fail, with the mistake named ---------------
#: implementation, options, a phrase its diagnosis must contain (None: no rule recognises it,
#: the report still shows the counterexample)
BUGGY = [
    ("bug_focal_factor_of_the_batch", {"loss": "focal_loss"},
     "it passes for N = 1 and fails for N > 1: the rows interact"),
    ("bug_focal_factor_of_the_top_class", {"loss": "focal_loss"}, None),
    ("bug_focal_factor_detached", {"loss": "focal_loss"},
     "the loss is correct but the gradient is not"),
    ("bug_focal_gamma_ignored", {"loss": "focal_loss"},
     "it matches focal_loss with gamma=0, not gamma=2: the value of gamma is not used"),
    ("bug_focal_gamma_ignored", {"loss": "focal_loss", "params": {"gamma": 0.5}},
     "it matches focal_loss with gamma=0, not gamma=0.5"),
    ("bug_focal_weight_ignored", {"loss": "focal_loss", "weight": "random"},
     "the class weights have no effect"),
    ("bug_kl_without_t_squared", {"loss": "kl_distillation", "params": {"temperature": 2.0}},
     "the loss and the gradient are 1/temperature**2 times the reference: a factor "
     "temperature**2 is missing (temperature = 2)"),
    ("bug_kl_mean_counts_masked_rows", {"loss": "kl_distillation",
                                        "params": {"temperature": 2.0}},
     "masked rows add nothing but are still counted by the mean"),
    ("bug_kl_mask_ignored", {"loss": "kl_distillation"}, "the mask has no effect"),
    ("bug_kl_teacher_without_temperature", {"loss": "kl_distillation",
                                            "params": {"temperature": 2.0}},
     "the teacher's logits are not transformed as the student's are"),
    ("bug_kl_mean_over_classes", {"loss": "kl_distillation", "params": {"temperature": 2.0}},
     "the loss and the gradient are 1/C times the reference"),
    ("kl_masked", {"loss": "kl_distillation", "reduction": "sum"},
     "the loss and the gradient are 1/N (the rows that count) times the reference"),
]


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(("name", "options", "phrase"), BUGGY,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BUGGY)])
def test_buggy_implementations_of_other_losses_fail_and_are_named(name, options, phrase, seed):
    report = check_implementation(load(f"{LOSSES}:{name}"), timeout=None, seed=seed, **options)
    assert not report.passed
    assert report.counterexample is not None and not report.counterexample.passed
    text = str(report)
    assert "first failure:" in text and "expected" in text and "got" in text
    if phrase is None:
        assert "diagnosis: none recognised" in text
    else:
        assert any(phrase in d for d in report.diagnosis), text


def test_cross_entropys_own_diagnoses_do_not_run_for_other_losses():
    def focal_softmax_over_the_batch(logits, target, gamma=2.0):
        logp = F.log_softmax(logits, dim=0).gather(1, target[:, None])[:, 0]
        return (-((1 - logp.exp()) ** gamma) * logp).mean()

    report = check_implementation(focal_softmax_over_the_batch, loss="focal_loss", timeout=None)
    assert not report.passed
    assert not any("what a softmax over the batch axis (dim=0) gives" in d
                   for d in report.diagnosis)  # cross-entropy's formula: not this loss's
    assert any("changing the logits of one row changes the result of the other rows" in d
               for d in report.diagnosis), report.diagnosis  # the generic probe says it
    header = str(report).splitlines()[:4]
    assert header[1] == "  loss focal_loss: gamma=2 (the default)"
    assert header[2] == ("  diagnoses: the generic ones and the class targets'; "
                         "cross-entropy's own do not apply")


def test_a_teacher_counterexample_shows_the_teacher_and_the_mask():
    report = check_implementation(load(f"{LOSSES}:bug_kl_mask_ignored"), loss="kl_distillation",
                                  timeout=None)
    text = str(report)
    assert "  teacher:" in text and "  mask:" in text, text
    assert "diagnoses: the generic ones and the teacher's; the class targets' and " \
           "cross-entropy's own do not apply" in text


# -- usage ------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"loss": "focal_loss", "params": {"gamma": -1.0}}, "gamma must be a number >= 0, got -1.0"),
    ({"loss": "focal_loss", "params": {"gama": 1.0}},
     "focal_loss has no parameter 'gama' (its parameters: gamma)"),
    ({"loss": "kl_distillation", "params": {"temperature": 0}},
     "temperature must be a number > 0, got 0"),
    ({"loss": "kl_distillation", "weight": "random"},
     "weight applies to class targets; the target of kl_distillation is a teacher's logits"),
    ({"loss": "focal_loss", "mask": True}, "mask applies to a teacher's logits"),
    ({"loss": "kl_distillation", "reduction": "avg"},
     "reduction must be one of batchmean, sum, none, mean for kl_distillation"),
    ({"reduction": "batchmean"}, "reduction must be one of none, mean, sum for cross_entropy"),
    ({"loss": "kl_distillation", "target": "probs"},
     "target must be one of teacher for kl_distillation"),
])
def test_bad_losses_parameters_and_options_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_implementation(F.cross_entropy, **kwargs)


def test_an_unknown_loss_is_refused():
    with pytest.raises(KeyError, match="unknown loss 'huber'"):
        check_implementation(F.cross_entropy, loss="huber")


def _cli(capsys, *argv):
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_command_line_checks_another_loss(capsys):
    code, out, _ = _cli(capsys, f"{LOSSES}:kl_masked", "--loss", "kl_distillation",
                        "--param", "temperature=2", "--shapes", "2d,kdim")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1] == "  loss kl_distillation: temperature=2"
    assert "  backend torch, target teacher, reduction batchmean" in lines
    assert any("masked" in line and "1 masked" in line for line in lines)
    assert lines[-1].startswith("PASS: all")
    code, out, _ = _cli(capsys, f"{LOSSES}:bug_kl_mean_counts_masked_rows", "--loss",
                        "kl_distillation")
    assert code == 1 and "still counted by the mean" in out
    code, out, _ = _cli(capsys, f"{LOSSES}:kl_div_builtin", "--loss", "kl_distillation",
                        "--no-mask", "--param", "temperature=3")
    assert code == 0 and "masked" not in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--loss", "focal_loss", "--param", "gamma=-1"],
     "--param: gamma must be a number >= 0, got -1.0"),
    (["--loss", "focal_loss", "--param", "gamma=lots"],
     "--param: gamma must be a number >= 0, got 'lots'"),
    (["--loss", "focal_loss", "--param", "gamma"], "--param expects NAME=VALUE, got 'gamma'"),
    (["--loss", "focal_loss", "--param", "temperature=2"],
     "--param: focal_loss has no parameter 'temperature' (its parameters: gamma)"),
    (["--loss", "kl_distillation", "--param", "temperature=0"],
     "--param: temperature must be a number > 0, got 0.0"),
    (["--loss", "huber"], "unknown loss 'huber' (registered: cross_entropy, focal_loss, "
                          "kl_distillation)"),
    (["--loss", "kl_distillation", "--weight", "random"], "weight applies to class targets"),
    (["--reduction", "batchmean"], "reduction must be one of none, mean, sum for cross_entropy"),
    (["--loss", "kl_distillation", "--target", "index"],
     "target must be one of teacher for kl_distillation"),
])
def test_command_line_usage_errors_are_one_line_exit_2(capsys, argv, message):
    code, out, err = _cli(capsys, f"{LOSSES}:kl_masked", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("symce check: error: ")
    assert message in err, err


def test_help_explains_every_loss(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--loss LOSS", "--param NAME=VALUE", "--no-mask",
                   "kl_distillation: f(logits, teacher, temperature=..., mask=...)",
                   "focal_loss: f(logits, target, gamma=..., weight=..., ignore_index=..., "
                   "label_smoothing=...)",
                   "gamma: a number >= 0, default 2", "temperature: a number > 0, default 1",
                   "reductions batchmean (default), sum, none, mean",
                   "cross-entropy's own do not apply"):
        assert phrase in text, phrase


# -- symce.testing ------------------------------------------------------------------------
def test_assert_loss_passes_and_fails_with_the_report():
    report = assert_loss(load(f"{LOSSES}:focal_every_option"), "focal_loss", gamma=0.5,
                         weight="random", label_smoothing=0.1, shapes="all")
    assert report.passed and report.loss == LossSpec("focal_loss", (("gamma", 0.5),))
    with pytest.raises(AssertionError, match="a factor temperature\\*\\*2 is missing"):
        assert_loss(load(f"{LOSSES}:bug_kl_without_t_squared"), "kl_distillation",
                    temperature=2.0)
    assert assert_loss(f"{LOSSES}:kl_div_builtin", "kl_distillation", mask=False,
                       temperature=2.0).passed  # a path: imported in a worker process


def test_assert_loss_refuses_what_the_loss_does_not_have():
    with pytest.raises(TypeError, match="unexpected keyword argument 'gama'"):
        assert_loss(F.cross_entropy, "focal_loss", gama=1.0)
    with pytest.raises(ValueError, match="gamma must be a number >= 0"):
        assert_loss(F.cross_entropy, "focal_loss", gamma=-2.0)


def test_ignore_index_with_a_teacher_is_refused():
    with pytest.raises((ValueError, CheckUsageError), match="ignore_index applies to class"):
        check_implementation(F.cross_entropy, loss="kl_distillation", ignore_index=3)


def test_two_mistakes_are_named_together():
    def no_t_squared_no_mask(logits, teacher, temperature=1.0, mask=None):
        return torch_kl(logits, teacher, temperature) / temperature**2

    report = check_implementation(no_t_squared_no_mask, loss="kl_distillation",
                                  params={"temperature": 2.0}, timeout=None)
    assert report.diagnosis[:2] == [
        "the mask has no effect: masked rows still count, in the sum and in the mean's "
        "divisor; multiply each row's loss by the mask and divide by mask.sum()",
        "a factor temperature**2 is missing (temperature = 2): the loss is "
        "1/temperature**2 times what it would be",
    ], report.diagnosis
