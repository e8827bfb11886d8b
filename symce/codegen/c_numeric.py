"""The compiled kernels' float32 library: polynomial coefficients computed by SymPy.

The kernels must vectorise without ``-ffast-math`` (which would let the
compiler reorder the class sums and drop NaN and infinity handling), and a
call to libm's ``expf``/``logf``/``tanhf`` keeps a loop scalar.  So
``templates/c/module.c.j2`` carries its own ``exp``, ``log`` and ``tanh``
(and ``pow`` as ``exp(a·log b)``) as straight-line code, each a polynomial
whose coefficients come from here: SymPy interpolates the function at the
Chebyshev nodes of the reduced interval, at 40 digits, and the template
rounds them to float32.  Every function is checked against float64 in ulps
(``tests/test_compiled_kernels.py``); the bounds stated here are the ones
tested.

- ``exp(z)``, ``z ≤ 0`` (the shifted logits): ``2^t``, ``t = z·log₂e = k + f``,
  ``|f| ≤ ½``, ``2^f`` of degree 6 (relative error 2.5e-9), ``t``'s rounding
  error carried into ``f``: within 4 ulps (1.33 measured) where the result is
  a normal float; below ``2^-126.5`` it is 0.  ``exp`` of any argument is the
  same with the exponent clamped on both sides (``+inf`` past the float
  maximum, NaN kept).
- ``log(b) = k·ln 2 + log(1 + f)``, ``1 + f ∈ [√½, √2)``, ``log(1 + f) = f −
  f²/2 + f³·P(f)`` with ``P`` of degree 8: within 2 ulps (0.83 measured) for
  every positive ``b``, subnormals included; ``log 0 = −inf``, negative or
  NaN: NaN.
- ``tanh(x)``: ``x + x³·Q(x²)`` for ``|x| < 0.625`` (``Q`` of degree 5), else
  ``(1 − E)/(1 + E)``, ``E = exp(−2|x|)``, the sign copied: within 3 ulps
  (1.56 measured).
- ``pow(b, a) = exp(a·log b)`` (1 where ``a = 0``, so ``0^0 = 1``): the
  float32 product ``a·log b`` and ``log``'s own error scale with its size, so
  the bound is ``2 + 2·|a·ln b|`` ulps (``0.6 + 1.6·|a·ln b|`` measured), as
  for any float32 ``pow`` built on ``exp`` and ``log``.  Where the kernels use
  it, ``b = 1 − q`` is itself formed in float32, whose rounding (relative
  ``2^-24/b``) exceeds this.

>>> [round(c, 4) for c in exp2_coefficients(2)]
[1.0, 0.7036, 0.242]
"""

from __future__ import annotations

import numpy as np
import sympy as sp

DIGITS = 40

#: below this ``|x|`` tanh is its odd polynomial (Cephes' split point)
TANH_SMALL = 0.625

#: bound of each function's error in float32 ulps, as the tests check it
ULPS = {"exp": 4, "log": 2, "tanh": 3}
#: pow's bound: ``POW_ULPS[0] + POW_ULPS[1]·|a·ln b|`` ulps
POW_ULPS = (2, 2)


def chebyshev_fit(function, lo, hi, degree: int) -> list[float]:
    """Coefficients (lowest power first) of the polynomial through ``function``
    at the ``degree + 1`` Chebyshev nodes of ``[lo, hi]``, from SymPy at 40 digits."""
    v = sp.Symbol("v", real=True)
    lo, hi = sp.nsimplify(lo), sp.nsimplify(hi)
    nodes = [(lo + hi) / 2 + (hi - lo) / 2 * sp.cos(sp.pi * (2 * i + 1) / (2 * (degree + 1)))
             for i in range(degree + 1)]
    points = [(sp.N(t, DIGITS), sp.N(function(sp.N(t, DIGITS)), DIGITS)) for t in nodes]
    poly = sp.Poly(sp.expand(sp.interpolate(points, v)), v)
    coefficients = [float(c) for c in reversed(poly.all_coeffs())]
    return coefficients + [0.0] * (degree + 1 - len(coefficients))


def exp2_coefficients(degree: int = 6) -> list[float]:
    """``2^f`` on ``|f| ≤ ½`` (lowest power first).

    The error of degree 6 is below ``(ln 2)^7·√2 / (2^13·7!)·2^½ ≈ 3.7e-9``
    relative (2.5e-9 measured), under float32's half ulp (6e-8).
    """
    return chebyshev_fit(lambda f: 2**f, -sp.Rational(1, 2), sp.Rational(1, 2), degree)


def log_coefficients(degree: int = 8) -> list[float]:
    """``P`` of ``log(1 + f) = f − f²/2 + f³·P(f)`` on ``[√½ − 1, √2 − 1]``."""
    def p(f):
        return (sp.log(1 + f) - f + f**2 / 2) / f**3

    return chebyshev_fit(p, sp.sqrt(2) / 2 - 1, sp.sqrt(2) - 1, degree)


def tanh_coefficients(degree: int = 5) -> list[float]:
    """``Q`` of ``tanh(x) = x + x³·Q(x²)`` for ``|x| < 0.625`` (in ``v = x²``)."""
    def q(v):
        root = sp.sqrt(v)
        return (sp.tanh(root) / root - 1) / v

    return chebyshev_fit(q, 0, sp.Float(TANH_SMALL, DIGITS) ** 2, degree)


def float_split(value: sp.Expr) -> tuple[float, float]:
    """``value = hi + lo``: ``hi`` the nearest float32, ``lo`` the float32 of the rest.

    >>> hi, lo = float_split(1 / sp.log(2))
    >>> hi, abs(lo) < 2**-24
    (1.4426950216293335, True)
    """
    exact = sp.N(value, DIGITS)
    hi = float(np.float32(float(exact)))
    lo = float(np.float32(float(exact - sp.Float(hi, DIGITS))))
    return hi, lo


def log2e_split() -> tuple[float, float]:
    """``log₂e = hi + lo`` (see :func:`float_split`)."""
    return float_split(1 / sp.log(2))


def float_literal(value: float) -> str:
    """A C float literal: the double's shortest repr, rounded to float once by the compiler."""
    return f"{value!r}f"


def horner(coefficients: list[float]) -> list[str]:
    """Float literals, highest power first (the order Horner's scheme uses them)."""
    return [float_literal(c) for c in reversed(coefficients)]


def numeric_context() -> dict[str, object]:
    """What the template's float32 library needs: coefficients and split constants."""
    log2e_hi, log2e_lo = log2e_split()
    # ln 2 = hi + lo with hi short (9 bits), so k·hi is exact for every exponent k
    ln2_hi = 0.693359375
    ln2_lo = float(np.float32(float(sp.N(sp.log(2) - sp.Rational(355, 512), DIGITS))))
    return {
        "exp2_horner": horner(exp2_coefficients()),
        "log2e_hi": float_literal(log2e_hi), "log2e_lo": float_literal(log2e_lo),
        "log_horner": horner(log_coefficients()),
        "ln2_hi": float_literal(ln2_hi), "ln2_lo": float_literal(ln2_lo),
        "tanh_horner": horner(tanh_coefficients()),
        "tanh_small": float_literal(TANH_SMALL),
    }


__all__ = ["POW_ULPS", "ULPS", "chebyshev_fit", "exp2_coefficients", "float_split", "log2e_split",
           "log_coefficients", "numeric_context", "tanh_coefficients"]
