"""symce check on a gallery of implementations: correct ones pass, buggy ones are diagnosed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from symce.checker import check_implementation, load
from symce.checker.battery import battery, build
from symce.checker.reference import from_coefficients

GALLERY = Path(__file__).parent / "gallery"

CORRECT = [
    ("log_softmax_nll", {}),
    ("manual_stable", {}),
    ("torch_builtin", {}),
    ("torch_builtin", {"target": "index"}),
    ("torch_builtin_sum", {"reduction": "sum"}),
    ("torch_builtin_none", {"reduction": "none"}),
    ("CrossEntropyModule", {}),
    ("CrossEntropyModule", {"target": "onehot"}),
    ("soft_targets_logsumexp", {"target": "probs"}),
    ("manual_backward", {}),
    ("numpy_with_grad", {"backend": "numpy"}),
    ("numpy_probs_with_grad", {"backend": "numpy", "target": "probs", "reduction": "sum"}),
]

#: implementation, options, a phrase its diagnosis must contain
BUGGY = [
    ("sum_not_mean", {}, "the loss and the gradient are N times the reference"),
    ("broadcast_column", {"reduction": "sum"}, "[N, 1] tensor broadcast against a [N] one"),
    ("no_max_shift", {}, "only at large logits"),
    ("eps_in_log", {}, "-log(1e-12)"),
    ("softmax_wrong_axis", {}, "softmax over the batch axis (dim=0)"),
    ("mean_over_classes", {"target": "probs"}, "the loss and the gradient are 1/C times"),
    ("backward_off_by_n", {}, "the loss is correct but the gradient is not"),
    ("backward_off_by_n", {}, "gradient is N times the reference"),
    (
        "numpy_q_minus_p",
        {"backend": "numpy", "target": "probs", "reduction": "sum"},
        "the gradient is q - p",
    ),
    ("lse_assumes_normalised", {"target": "probs"}, "the loss is LSE(x) - sum(p*x)"),
    ("kl_not_ce", {"target": "probs"}, "KL(p||q)"),
    ("squeeze_bug", {}, "only when N = 1 or C = 1"),
    ("sign_flipped", {}, "the sign is flipped"),
    ("float32_accumulation", {}, "only as accurate as float32"),
    ("pairs_all_targets", {}, "passes for N = 1 and fails for N > 1"),
    ("naive_two_mistakes", {}, "at large logits (from |x| ~ 100) the result is nan/inf"),
    ("naive_two_mistakes", {}, "the loss and the gradient are N times the reference"),
    ("numpy_loss_only_naive", {"backend": "numpy"}, "the loss is N times the reference"),
    ("numpy_loss_only_naive", {"backend": "numpy"}, "the result is nan/inf"),
]


def _check(name, path="correct.py", **options):
    # in this process: these tests are about the verdicts (tests/test_check_timeout.py and
    # test_check_options.py run the default worker)
    return check_implementation(load(f"{GALLERY / path}:{name}"), timeout=None, **options)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(("name", "options"), CORRECT, ids=[c[0] for c in CORRECT])
def test_correct_implementations_pass(name, options, seed):
    report = _check(name, seed=seed, **options)
    assert report.passed, str(report)
    assert report.diagnosis == [] and report.counterexample is None


@pytest.mark.parametrize(
    ("name", "options", "phrase"), BUGGY, ids=[f"{b[0]}-{i}" for i, b in enumerate(BUGGY)]
)
@pytest.mark.parametrize("seed", [0, 7])
def test_buggy_implementations_are_diagnosed(name, options, phrase, seed):
    report = _check(name, "buggy.py", seed=seed, **options)
    assert not report.passed
    assert report.counterexample is not None and not report.counterexample.passed
    assert any(phrase in d for d in report.diagnosis), str(report)


@settings(max_examples=10)
@given(seed=st.integers(0, 10**6), target=st.sampled_from(["index", "probs"]))
def test_torch_itself_passes_whatever_the_seed(seed, target):
    assert check_implementation(F.cross_entropy, target=target, seed=seed).passed


def test_loss_only_implementation_is_not_said_to_have_a_correct_gradient():
    report = _check("numpy_loss_only_naive", "buggy.py", backend="numpy")
    assert not any("gradient" in d for d in report.diagnosis), report.diagnosis


def test_no_max_shift_is_not_blamed_on_anything_else():
    report = _check("no_max_shift", "buggy.py")
    assert len(report.diagnosis) == 1
    failing = {r.case.spec.name for r in report.results if not r.passed}
    assert failing and all(name.startswith("large") for name in failing)


def test_counterexample_is_shrunk_and_printed():
    report = _check("sum_not_mean", "buggy.py")
    cx = report.counterexample.case.spec
    assert cx.rows == 2  # N = 1 cannot show a sum-for-mean mistake; N = 2 can
    text = str(report)
    assert "first failure: case 'basic', shrunk from N=4 C=5; counterexample N=2 C=2" in text
    assert "expected" in text and "got" in text and "diagnosis:" in text
    # the printed numbers are the implementation's, against torch's own float64 result
    case = report.counterexample.case
    x = torch.tensor(case.logits)
    expected = F.cross_entropy(x, torch.tensor(case.target))
    assert report.counterexample.outcome.loss == pytest.approx(2 * expected.item(), rel=1e-12)


def test_tolerance_is_tight_enough_to_catch_a_tiny_error():
    def almost(logits, target):
        return F.cross_entropy(logits, target) * (1 + 1e-9)

    assert not check_implementation(almost).passed


def test_a_narrowing_cast_is_named():
    def narrowing(logits, target):
        return F.cross_entropy(logits.float(), target)

    report = check_implementation(narrowing)
    assert "for float64 inputs it returns float32" in report.diagnosis[0]


def test_target_kind_is_told_from_a_first_call_and_said():
    index = check_implementation(F.cross_entropy)
    assert index.target == "index" and "class-index" in index.target_note
    probs = _check("CrossEntropyModule")
    assert probs.target == "probs" and "probability targets" in probs.target_note
    assert "target probs (assumed" in str(probs)
    onehot = _check("onehot_argmax")
    assert onehot.passed and onehot.target == "onehot" and "only one-hot" in onehot.target_note
    assert not _check("onehot_argmax", target="probs").passed  # soft targets: it is wrong


def test_numpy_loss_only_checks_the_loss_and_says_so():
    def loss_only(logits, target):
        return _np_loss(logits, target)

    report = check_implementation(loss_only, backend="numpy")
    assert report.passed
    assert "only the loss was checked" in str(report)


def _np_loss(x, t):
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return (lse - x[np.arange(len(x)), t]).mean()


def test_torch_result_without_autograd_fails_on_the_gradient():
    def detached(logits, target):
        return F.cross_entropy(logits, target).detach()

    report = check_implementation(detached)
    assert not report.passed
    assert "not connected to the logits" in str(report)


# -- the reference itself, against torch float64 ----------------------------
@pytest.mark.parametrize("target", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reference_matches_torch_on_the_battery(target, reduction):
    for spec in battery(target):
        case = build(spec)
        _assert_reference_is_torch(case.logits, case.target, case.coeff, reduction)


@given(
    rows=st.integers(1, 5),
    classes=st.integers(1, 6),
    scale=st.sampled_from([1.0, 30.0, 1e3, 1e4]),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_reference_matches_torch_random(rows, classes, scale, seed, reduction):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, classes)) * scale
    c = rng.uniform(0, 2, size=(rows, classes))  # unnormalised probability targets
    _assert_reference_is_torch(x, c, c, reduction)


def _assert_reference_is_torch(logits, target, coeff, reduction):
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(target) if target.dtype.kind in "iu" else torch.tensor(target)
    loss = F.cross_entropy(x, t, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    ref_loss, ref_grad = from_coefficients(logits, coeff, reduction)
    scale = 1 + np.abs(logits).max()
    np.testing.assert_allclose(ref_loss, loss.detach().numpy(), rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(ref_grad, grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("path", "name", "options", "phrase"),
    [
        ("bad_usage.py", "wrong_shape", {}, "not summed over the class axis"),
        ("correct.py", "torch_builtin_none", {}, "one loss per row: no mean reduction"),
        ("correct.py", "torch_builtin", {"reduction": "none"}, "expects one per row"),
    ],
)
def test_wrong_shapes_are_named(path, name, options, phrase):
    report = _check(name, path, **options)
    assert not report.passed
    assert any(phrase in d for d in report.diagnosis), str(report)
    assert not any("permuted" in d or "N = 1" in d for d in report.diagnosis)


# -- what it returns is no loss: said as such --------------------------------
@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("returns_str", "it returns a str, not a loss on every case"),
        ("returns_float", "it returns a Python float, not a tensor on every case: .item()"),
        ("returns_none", "it returns None on every case: a missing return statement"),
        ("returns_list", "it returns a list on every case: .tolist()"),
    ],
)
def test_a_wrong_return_type_is_named_not_taken_for_a_raise(name, phrase):
    report = _check(name, "bad_usage.py")
    assert not report.passed
    assert report.target == "index"  # the call ran: class-index targets were accepted
    assert "raised" not in report.target_note and "were accepted" in report.target_note
    assert report.diagnosis and phrase in report.diagnosis[0], report.diagnosis
    assert not any("raised" in d for d in report.diagnosis)
    assert "none recognised" not in str(report)


def test_a_constant_integer_tensor_is_named_not_taken_for_a_clamp():
    report = _check("returns_int_tensor", "bad_usage.py")
    assert not report.passed
    assert report.diagnosis[0].startswith("it returns a constant int64 tensor (3 in every case)")
    assert not any("saturates" in d or "eps" in d for d in report.diagnosis), report.diagnosis


def test_an_integer_tensor_that_varies_is_named():
    def rounded(logits, target):
        return F.cross_entropy(logits, target).round().long()

    report = check_implementation(rounded)
    assert any("it returns an integer tensor (int64)" in d for d in report.diagnosis), str(report)
    assert not any("saturates" in d for d in report.diagnosis)


def test_numpy_backend_names_the_return_type_too():
    def returns_none(logits, target):
        pass

    report = check_implementation(returns_none, backend="numpy")
    assert "it returns None on every case" in report.diagnosis[0]
