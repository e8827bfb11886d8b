"""Adversarial tests of the partition decision procedure: false identities refused.

Each case is false for some values of its symbols (named in the comment);
``PartitionContext.equal`` must refuse it.  The true ones beside them keep the
procedure from passing by refusing everything.
"""

from __future__ import annotations

import pytest
import sympy as sp

from symce.engine.partition import PartitionContext
from symce.errors import ProofError
from symce.proof import Derivation, Step

n = sp.Symbol("n", integer=True, positive=True)
j = sp.Symbol("j", integer=True)
r = sp.Symbol("r", integer=True)
m = sp.Symbol("m", integer=True)
R = sp.Symbol("R", integer=True, positive=True)
b = sp.IndexedBase("b", integer=True)
x = sp.IndexedBase("x", real=True)
f = sp.IndexedBase("f", real=True)
g = sp.IndexedBase("g")  # complex
z = sp.IndexedBase("z")  # complex
y = sp.Symbol("y", real=True)
h = sp.Symbol("h", real=True)


def total(body, lo=1, hi=n):
    return sp.Sum(body, (j, lo, hi))


SYMBOLIC = PartitionContext(n, R, b)
CONCRETE = PartitionContext(6, None, None)

FALSE = {
    # g_1 = i, n = 1
    "a sum of complex terms is not real": (sp.im(total(g[j])), 0),
    # z_1 = i*pi, n = 1: the sum is -1
    "a sum of e^{z_j}, z complex, is not positive": (sp.Abs(total(sp.exp(z[j]))),
                                                      total(sp.exp(z[j]))),
    "sqrt(S^2) = S needs S >= 0": (sp.sqrt(total(sp.exp(z[j])) ** 2), total(sp.exp(z[j]))),
    # z_1 = i*pi, n = 1: log(1) = 0, 2 log(-1) = 2 i pi
    "log(S^2) = 2 log S needs S > 0": (sp.log(total(sp.exp(z[j])) ** 2),
                                       2 * sp.log(total(sp.exp(z[j])))),
    # g_1 = 2 i pi, n = 1
    "log(e^T) = T needs T real": (sp.log(sp.exp(total(g[j]))), total(g[j])),
    # m = -1: Karr's convention counts the r-sum negatively
    "a sum of exponentials with a second limit may be negative": (
        sp.Abs(sp.Sum(sp.exp(x[j]), (j, 1, n), (r, 1, m), (y, 1, 1))),
        sp.Sum(sp.exp(x[j]), (j, 1, n), (r, 1, m), (y, 1, 1))),
    # d/dy sum e^{y x_j} = sum x_j e^{y x_j}
    "a derivative of a sum is not 0": (sp.Derivative(total(sp.exp(y * x[j])), y), 0),
    # R = 2: (f_1)(f_1 + f_2) against (f_1 + ... + f_r)^2
    "a product over r of sums over 1..r": (sp.Product(total(f[j], 1, r), (r, 1, R)),
                                           total(f[j], 1, r) ** R),
    # x_j = 1: the integral is (e - 1) n, the sum e^y n
    "an integral of a sum": (sp.Integral(total(sp.exp(y * x[j])), (y, 0, 1)),
                             total(sp.exp(y * x[j]))),
}


@pytest.mark.parametrize("name", sorted(FALSE))
def test_false_identity_refused(name):
    lhs, rhs = FALSE[name]
    assert not SYMBOLIC.equal(lhs, rhs, ())
    assert not SYMBOLIC.equal(lhs, rhs, ("partition",))


def test_false_identities_in_the_concrete_context():
    # d/dy sum_{j=1}^{6} e^{y x_j} = sum x_j e^{y x_j}, not 0
    assert not CONCRETE.equal(sp.Derivative(total(sp.exp(y * x[j]), 1, 6), y), 0, ())
    assert not CONCRETE.equal(sp.im(total(g[j], 1, 6)), 0, ())


def test_sums_with_non_integer_limits_are_not_rewritten():
    # the prefix form Σ_h^n = Σ_1^n − Σ_1^{h−1} is Karr's for integer h only
    assert not SYMBOLIC.equal(total(f[j], h, n), total(f[j]) - total(f[j], 1, h - 1), ())
    # for an integer m of unknown sign the counts of Σ_m^n and Σ_1^{m−1} are unknown: a
    # reader's sums (no term below the bottom) and SymPy's (Karr's) differ, refused
    assert not SYMBOLIC.equal(total(f[j], m, n), total(f[j]) - total(f[j], 1, m - 1), ())
    # with every count known >= 0 (m >= 1, t >= 0) the prefix form is proved
    m1 = sp.Symbol("m1", integer=True, positive=True)
    t = sp.Symbol("t", integer=True, nonnegative=True)
    assert SYMBOLIC.equal(total(f[j], m1, m1 + t),
                          total(f[j], 1, m1 + t) - total(f[j], 1, m1 - 1), ())


def test_true_identities_still_proved():
    ex = total(sp.exp(x[j]))
    assert SYMBOLIC.equal(sp.sqrt(ex ** 2), ex, ())
    assert SYMBOLIC.equal(sp.log(total(sp.exp(x[j] - y))), sp.log(ex) - y, ())
    assert SYMBOLIC.equal(sp.im(total(f[j])), 0, ())
    sliced = sp.Sum(sp.Sum(f[j], (j, b[r - 1] + 1, b[r])), (r, 1, R))
    assert SYMBOLIC.equal(total(f[j]), sliced, ("partition",))
    assert not SYMBOLIC.equal(total(f[j]), sliced, ())


@pytest.mark.parametrize("lo, hi, rs", [
    (b[r - 1], b[r], (r, 1, R)),              # slices overlap at their boundaries
    (b[r - 1] + 1, b[r] - 1, (r, 1, R)),      # the last class of each slice left out
    (b[r - 1] + 1, b[r] + 1, (r, 1, R)),
    (b[r - 1] + 1, b[r], (r, 1, R - 1)),      # the last slice left out
    (b[r - 1] + 1, b[r], (r, 0, R)),          # a slice b_{-1}+1..b_0 added
    (b[r] + 1, b[r + 1], (r, 1, R)),          # shifted by one slice
])
def test_wrong_slices_refused(lo, hi, rs):
    sliced = sp.Sum(sp.Sum(f[j], (j, lo, hi)), rs)
    assert not SYMBOLIC.equal(total(f[j]), sliced, ("partition",))


def test_the_same_slices_shifted_in_r_are_proved():
    sliced = sp.Sum(sp.Sum(f[j], (j, b[r] + 1, b[r + 1])), (r, 0, R - 1))
    assert SYMBOLIC.equal(total(f[j]), sliced, ("partition",))


def test_a_step_stating_partition_without_needing_it_is_refused():
    step = Step("s", "s", total(f[j]), total(f[j]), "reflexive", ("partition",))
    with pytest.raises(ProofError, match="proved without it"):
        Derivation("cross_entropy", "", None, (step,), SYMBOLIC).check()
