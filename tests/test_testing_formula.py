"""symce.testing: the assertions, and claimed gradient formulas proved or refuted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from symce.checker.adapter import load
from symce.checker.formula import check_gradient_formula
from symce.testing import assert_cross_entropy, assert_gradient_formula

GALLERY = Path(__file__).parent / "gallery"


# -- assert_cross_entropy ---------------------------------------------------
def test_assert_cross_entropy_passes_a_correct_module():
    assert_cross_entropy(load(f"{GALLERY}/correct.py:CrossEntropyModule"), target="probs")
    assert_cross_entropy(F.cross_entropy, reduction="mean")


def test_assert_cross_entropy_raises_with_the_report():
    buggy = load(f"{GALLERY}/buggy.py:softmax_wrong_axis")
    with pytest.raises(AssertionError) as info:
        assert_cross_entropy(buggy)
    text = str(info.value)
    assert "first failure:" in text and "softmax over the batch axis" in text


def test_assert_cross_entropy_takes_a_class():
    from torch import nn

    class Loss(nn.Module):
        def forward(self, logits, target):
            return F.cross_entropy(logits, target, reduction="sum")

    assert_cross_entropy(Loss, reduction="sum")
    with pytest.raises(AssertionError):
        assert_cross_entropy(Loss, reduction="mean")


# -- assert_gradient_formula: proved ----------------------------------------
@pytest.mark.parametrize(
    ("claim", "assume"),
    [
        ("q - p", "normalised"),
        ("q*sum(p) - p", ()),
        ("q*sum(c) - c", ()),
        ("softmax(x) - p", ["normalised"]),
        ("exp(x)/sum(exp(x))*sum(p) - p", ()),
    ],
)
@pytest.mark.parametrize("n", [None, 3])
def test_true_claims_are_proved(claim, assume, n):
    verdict = assert_gradient_formula(claim, n=n, assume=assume)
    assert verdict.status == "proved" and "PROVED by SymPy" in str(verdict)


def test_assumption_may_be_written_as_a_formula():
    assert assert_gradient_formula("q - p", assume="sum(p) = 1").status == "proved"


def test_the_derivations_own_results_are_proved():
    import symce

    d = symce.derive("cross_entropy")
    assert assert_gradient_formula(d.result).status == "proved"
    assert assert_gradient_formula(d.normalised_result, assume="normalised").status == "proved"
    with pytest.raises(AssertionError, match="REFUTED"):
        assert_gradient_formula(d.normalised_result)  # q - p needs sum(p) = 1


def test_sympy_expressions_are_accepted():
    q, p = sp.symbols("q p")
    assert assert_gradient_formula(q - p, assume="normalised").status == "proved"
    k = sp.Symbol("k")
    qk, ck = sp.IndexedBase("q")[k], sp.IndexedBase("c")[k]
    assert assert_gradient_formula(qk - ck, assume="normalised").status == "proved"
    j, n = sp.Symbol("j"), sp.Symbol("n")
    claim = qk * sp.Sum(sp.IndexedBase("p")[j], (j, 1, n)) - sp.IndexedBase("p")[k]
    assert assert_gradient_formula(claim).status == "proved"
    with pytest.raises(ValueError, match="documented entries"):
        assert_gradient_formula(sp.IndexedBase("q")[j])


# -- refuted, with a counterexample checked against torch -------------------
@pytest.mark.parametrize(
    ("claim", "assume"),
    [
        ("p - q", "normalised"),
        ("q - p", ()),
        ("(q - p)/C", "normalised"),
        ("(q - p)/n", ()),
        ("q - p/sum(p)", ()),
    ],
)
@pytest.mark.parametrize("n", [None, 3])
def test_wrong_claims_are_refuted_at_a_real_counterexample(claim, assume, n):
    with pytest.raises(AssertionError, match="REFUTED"):
        assert_gradient_formula(claim, n=n, assume=assume)
    verdict = check_gradient_formula(claim, n=n, assume=assume)
    point = verdict.point
    if assume:
        assert sum(point.c) == 1  # the counterexample respects the stated assumption
    # torch float64 autograd, on probability targets: the true gradient at that point
    x = torch.tensor([[float(v) for v in point.x]], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[float(v) for v in point.c]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(F.cross_entropy(x, c, reduction="sum"), x)
    truth = grad[0].tolist()
    assert [float(v) for v in verdict.derived_values] == pytest.approx(truth, rel=1e-12)
    claimed = [float(v) for v in verdict.claimed_values]
    assert max(abs(a - b) for a, b in zip(claimed, truth, strict=True)) > 1e-6
    # and the report shows those numbers
    text = str(verdict)
    assert re.search(r"x\s+= \(", text) and "derived" in text and "claimed" in text


def test_what_is_neither_proved_nor_refuted_is_not_called_proved():
    # true (sin² + cos² = 1) but beyond the engine's steering: SymPy does not prove it
    with pytest.raises(AssertionError, match="UNDECIDED"):
        assert_gradient_formula("q*sum(p) - p + sin(x)**2 + cos(x)**2 - 1")


def test_a_tiny_constant_offset_is_still_refuted():
    with pytest.raises(AssertionError, match=r"REFUTED(.|\n)*largest difference 1e-30"):
        assert_gradient_formula("q*sum(p) - p + 1e-30")


def test_bad_formulas_are_value_errors():
    with pytest.raises(ValueError, match="unknown symbol"):
        assert_gradient_formula("q - y")
    with pytest.raises(ValueError, match="cannot parse"):
        assert_gradient_formula("q -")
    with pytest.raises(ValueError, match="unknown assumption"):
        assert_gradient_formula("q - p", assume="sum_to_one")
