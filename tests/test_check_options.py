"""Every option of nn.CrossEntropyLoss in symce check: the reference against torch, the
calling convention, torch itself passing, and the usual mistakes caught and named."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from symce.checker import CheckUsageError, check_implementation, load
from symce.checker.battery import Options, battery, build
from symce.checker.reference import cross_entropy
from symce.cli import main
from symce.testing import assert_cross_entropy

GALLERY = Path(__file__).parent / "gallery"

SHAPES = [(5,), (1, 1), (4, 5), (3, 5, 2), (2, 4, 3, 2), (2, 3, 1)]


# -- the reference, against torch.nn.functional.cross_entropy in float64 ------
def _inputs(rng, shape, kind, ignore_index):
    classes = shape[1] if len(shape) > 1 else shape[0]
    positions = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    logits = rng.normal(size=shape) * 3
    if kind == "index":
        target = rng.integers(0, classes, positions)
        if ignore_index is not None and target.ndim:
            target.reshape(-1)[1::3] = ignore_index
        return logits, target
    rows = rng.dirichlet(np.ones(classes), int(np.prod(positions, dtype=int)))
    rows *= rng.uniform(0.2, 3.0, (len(rows), 1))  # not normalised: the general form
    target = rows.reshape(*positions, classes)
    return logits, np.moveaxis(target, -1, 1) if len(shape) > 1 else target


def _torch(logits, target, weight, ignore_index, smoothing, reduction):
    x = torch.tensor(logits, requires_grad=True)
    options = {"label_smoothing": smoothing, "reduction": reduction}
    if weight is not None:
        options["weight"] = torch.tensor(weight)
    if ignore_index is not None:
        options["ignore_index"] = ignore_index
    loss = F.cross_entropy(x, torch.tensor(target), **options)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach().numpy(), grad.numpy()


def _assert_reference_is_torch(logits, target, kind, weight, ignore_index, smoothing, reduction):
    loss, grad = cross_entropy(logits, target, kind, weight, ignore_index, smoothing, reduction)
    want_loss, want_grad = _torch(logits, target, weight, ignore_index, smoothing, reduction)
    assert loss.shape == want_loss.shape and grad.shape == want_grad.shape
    scale = 1 + np.abs(logits).max()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-13)


GRID = [
    (shape, kind, weighted, ignore_index, smoothing, reduction)
    for shape, kind, weighted, ignore_index, smoothing, reduction in itertools.product(
        SHAPES, ["index", "probs"], [False, True], [None, -100, 1], [0.0, 0.1, 0.35],
        ["mean", "sum", "none"],
    )
    # torch refuses ignore_index with probabilities; an unbatched target of 1 is all ignored
    if not (kind == "probs" and ignore_index is not None)
    and not (len(shape) == 1 and ignore_index == 1)
    and not (shape == (1, 1) and ignore_index == 1)
]


@pytest.mark.parametrize(("shape", "kind", "weighted", "ignore_index", "smoothing", "reduction"),
                         GRID)
def test_reference_is_torch_for_every_option(shape, kind, weighted, ignore_index, smoothing,
                                             reduction):
    rng = np.random.default_rng(len(shape) * 1000 + shape[0])
    logits, target = _inputs(rng, shape, kind, ignore_index)
    classes = shape[1] if len(shape) > 1 else shape[0]
    weight = np.round(rng.uniform(0.1, 3.0, classes), 1) if weighted else None
    _assert_reference_is_torch(logits, target, kind, weight, ignore_index, smoothing, reduction)


@given(
    shape=st.sampled_from(SHAPES),
    kind=st.sampled_from(["index", "probs"]),
    weighted=st.booleans(),
    ignore=st.booleans(),
    smoothing=st.floats(0.0, 1.0),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    scale=st.sampled_from([1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_reference_is_torch_random(shape, kind, weighted, ignore, smoothing, reduction, scale,
                                   seed):
    rng = np.random.default_rng(seed)
    ignore_index = -100 if ignore and kind == "index" else None
    logits, target = _inputs(rng, shape, kind, ignore_index)
    classes = shape[1] if len(shape) > 1 else shape[0]
    weight = rng.uniform(0.1, 3.0, classes) if weighted else None
    _assert_reference_is_torch(logits * scale, target, kind, weight, ignore_index, smoothing,
                               reduction)


def test_reference_mean_over_no_rows_is_nan_like_torch():
    logits, target = np.array([[1.0, 2.0], [0.5, -1.0]]), np.array([-100, -100])
    loss, grad = cross_entropy(logits, target, "index", ignore_index=-100)
    want_loss, want_grad = _torch(logits, target, None, -100, 0.0, "mean")
    assert np.isnan(loss) and np.isnan(want_loss)
    np.testing.assert_array_equal(grad, want_grad)  # zeros


def test_battery_cases_are_what_torch_computes_with_every_option():
    options = Options(weight=True, ignore_index=2, label_smoothing=0.25)
    for spec in battery("index", options=options, shapes=("2d", "kdim", "unbatched")):
        case = build(spec)
        assert case.weight is not None and case.weight.shape == (spec.classes,)
        loss, grad = case.expected("mean")
        want = _torch(case.logits, case.target, case.weight, 2, 0.25, "mean")
        np.testing.assert_allclose(loss, want[0], rtol=1e-12, atol=1e-12 * (1 + spec.scale))
        np.testing.assert_allclose(grad, want[1], rtol=1e-10, atol=1e-13)


def test_ignored_rows_are_in_the_cases_and_one_row_always_counts():
    options = Options(ignore_index=0)
    specs = battery("index", options=options, shapes=("2d", "kdim"))
    ignored = [build(s).ignored for s in specs]
    assert sum(ignored) > len(specs)  # several per case where there are rows to spare
    for spec in specs:
        case = build(spec)
        if spec.classes > 1:
            assert case.ignored < spec.row_count, spec.name


# -- the calling convention ---------------------------------------------------
def test_options_are_passed_as_keywords_only_when_given():
    seen = []

    def recording(logits, target, **options):
        seen.append({k: (type(v).__name__, getattr(v, "dtype", None)) for k, v in options.items()})
        return F.cross_entropy(logits, target, **options)

    assert check_implementation(recording, target="index", timeout=None).passed
    assert all(s == {} for s in seen)
    seen.clear()
    report = check_implementation(
        recording, target="index", weight="random", ignore_index=-1, label_smoothing=0.1,
        timeout=None,
    )
    assert report.passed, str(report)
    float32 = {"weight": ("Tensor", torch.float32), "ignore_index": ("int", None),
               "label_smoothing": ("float", None)}
    assert float32 in seen  # the weight comes in the logits' dtype
    assert {**float32, "weight": ("Tensor", torch.float64)} in seen
    assert "called as f(logits, target, weight=w, ignore_index=-1, label_smoothing=0.1)" in str(
        report
    )


def test_numpy_backend_gets_the_weight_as_an_array():
    def numpy_every_option(logits, target, weight):
        assert isinstance(weight, np.ndarray) and weight.dtype == logits.dtype
        x = torch.tensor(logits)
        return F.cross_entropy(x, torch.tensor(target), weight=torch.tensor(weight)).numpy()

    report = check_implementation(numpy_every_option, target="index", backend="numpy",
                                  weight="random", timeout=None)
    assert report.passed, str(report)


OPTIONS = {
    "weight": {"weight": "random"},
    "smoothing": {"label_smoothing": 0.15},
    "weight-smoothing": {"weight": "random", "label_smoothing": 0.3},
    "all": {"weight": "random", "ignore_index": -100, "label_smoothing": 0.2},
    "ignore-1": {"ignore_index": 1},
}
#: (options, target): ignore_index applies to class indices only
OPTION_TARGETS = [
    (name, target)
    for name, options in OPTIONS.items()
    for target in ("index", "probs")
    if target == "index" or "ignore_index" not in options
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("name", "target"), OPTION_TARGETS)
def test_torch_itself_passes_with_every_option_and_shape(name, target, reduction):
    options = OPTIONS[name]

    def torch_builtin(logits, target, **kw):
        return F.cross_entropy(logits, target, reduction=reduction, **kw)

    report = check_implementation(torch_builtin, target=target, reduction=reduction,
                                  shapes="all", **options)
    assert report.passed, str(report)
    assert report.planned == len(report.results) > 25


@pytest.mark.parametrize(
    ("options", "target"),
    [
        ({}, "index"),
        ({}, "probs"),
        ({"weight": "random"}, "index"),
        ({"weight": "random", "label_smoothing": 0.4}, "probs"),
        ({"weight": "random", "ignore_index": 2, "label_smoothing": 0.4}, "index"),
    ],
)
def test_a_hand_written_implementation_of_every_option_passes(options, target):
    report = check_implementation(load(f"{GALLERY}/correct.py:every_option"), target=target,
                                  shapes="all", **options)
    assert report.passed, str(report)


def test_ignore_index_with_probability_targets_is_refused():
    with pytest.raises(CheckUsageError, match="class-index targets only"):
        check_implementation(F.cross_entropy, target="probs", ignore_index=3)

    def probs_only(logits, target, **options):
        if target.dtype == torch.int64:
            raise TypeError("probabilities only")
        return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

    with pytest.raises(CheckUsageError, match=r"the target is probs \(assumed: class-index"):
        check_implementation(probs_only, ignore_index=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight": "heavy"}, "weight must be None or 'random'"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\]"),
        ({"ignore_index": 1.5}, "ignore_index must be an integer"),
        ({"shapes": "3d"}, "shapes must be"),
        ({"timeout": 0}, "timeout must be a positive number"),
    ],
)
def test_bad_option_values_are_value_errors(options, message):
    with pytest.raises(ValueError, match=message):
        check_implementation(F.cross_entropy, **options)


def test_command_line_options_reach_the_battery(capsys):
    code = main(["check", f"{GALLERY}/correct.py:every_option", "--weight", "random",
                 "--ignore-index", "-100", "--label-smoothing", "0.1", "--shapes", "all"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "called as f(logits, target, weight=w, ignore_index=-100, label_smoothing=0.1); " \
           "inputs (N, C), (N, C, d1, ...), (C,)" in out
    assert "kdim 2 dims" in out and "C=5 unbatched" in out and "ignored" in out
    assert "PASS: all 27 cases agree" in out


def test_check_help_explains_the_options_and_the_calling_convention(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("f(logits, target, weight=w, ignore_index=N, label_smoothing=EPS)",
                   "--weight {random}", "--ignore-index N", "--label-smoothing EPS",
                   "--shapes LIST", "--timeout SECONDS", "(default: 60)",
                   "sum(w[target]) over the rows not ignored", "kdim (N, C, d1, ...)"):
        assert phrase in text, phrase


# -- the usual mistakes with the options --------------------------------------
#: implementation, the options it gets wrong, a phrase its diagnosis must contain
OPTION_BUGS = [
    ("smoothing_ignores_weights", {"weight": "random", "label_smoothing": 0.2},
     "the label-smoothing term is not multiplied by the class weights"),
    ("weighted_mean_over_rows", {"weight": "random"},
     "the weighted mean divides by the number of rows; PyTorch divides by sum(w[y])"),
    ("ignored_rows_pay_smoothing", {"ignore_index": -100, "label_smoothing": 0.1},
     "ignored rows still pay the label-smoothing term"),
    ("ignored_rows_pay_smoothing", {"ignore_index": 1, "label_smoothing": 0.3},
     "ignored rows still pay the label-smoothing term"),
    ("mean_counts_ignored_rows", {"ignore_index": -100},
     "the mean divides by all rows, ignored ones included"),
    ("kdim_reshape_without_movedim", {"shapes": "2d,kdim"},
     "logits.reshape(-1, C) without moving the class axis last"),
    ("kdim_softmax_last_axis", {"shapes": "kdim"}, "a softmax over the last axis"),
]


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(("name", "options", "phrase"), OPTION_BUGS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(OPTION_BUGS)])
def test_option_mistakes_are_caught_and_named(name, options, phrase, seed):
    fn = load(f"{GALLERY}/buggy.py:{name}")
    report = check_implementation(fn, target="index", seed=seed, **options)
    assert not report.passed
    assert report.counterexample is not None and not report.counterexample.passed
    assert any(phrase in d for d in report.diagnosis), str(report)
    # said precisely: no rule blames the rows or the batch axis for an option's mistake
    assert not any("N = 1" in d or "permuted" in d for d in report.diagnosis), report.diagnosis


@pytest.mark.parametrize("name", sorted({b[0] for b in OPTION_BUGS} - {"kdim_softmax_last_axis"}))
def test_option_mistakes_are_right_without_the_option(name):
    """Each buggy implementation is right on what its mistake does not touch."""
    assert check_implementation(load(f"{GALLERY}/buggy.py:{name}"), target="index").passed


def test_assert_cross_entropy_takes_the_options():
    assert_cross_entropy(F.cross_entropy, weight="random", label_smoothing=0.1, shapes="all")
    with pytest.raises(AssertionError, match="not multiplied by the class weights"):
        assert_cross_entropy(load(f"{GALLERY}/buggy.py:smoothing_ignores_weights"),
                             weight="random", label_smoothing=0.2)
