"""The C backend: a compiled CPU kernel per target kind, printed from the derivation.

The NumPy and torch modules reach the memory floor only if each row is read
from memory once and its gradient written once; a chain of array operations
streams the row through the cache once per operation.  The generated modules
therefore carry C source, printed here from the same
:class:`~symce.codegen.expressions.KernelExpressions` as their array code,
compile it on first use and fall back to their array code when no compiler
is present.

A kernel walks each row (the classes of one sample and position) three times
while it sits in the L2 cache:

1. the row maximum ``m``;
2. ``z = x − m``, ``e = exp(z)`` into the gradient buffer, and every hoisted
   class-axis sum (``before_exp`` sums of ``z``, ``after_exp`` sums of ``e``)
   as a running total: :func:`kernel_context` prints each sum's summand with
   the element's locals ``z``, ``e``, ``pv`` (the row's probability target)
   and ``wv`` (the class weight);
3. the gradient ``alpha·e + dense`` in place, then ``beta`` added at the
   target class; ``alpha``, ``beta`` and the coefficients of ``dense`` are per-row
   values printed (in double precision) from the derivation's pieces.

``exp`` is ``2^t`` with ``t = z·log₂e``: ``t = k + f`` with ``k`` an integer
and ``|f| ≤ ½``, ``2^k`` built from its exponent bits and ``2^f`` the degree-6
polynomial through the Chebyshev nodes that :func:`exp2_coefficients` takes
from SymPy (relative error below 4e-9, under float32's rounding), so the
compiler vectorises the loop without ``-ffast-math`` (on CPUs with FMA, which
the ``-march=native`` build uses; elsewhere ``fmaf`` is a library call).  The
rounding error of ``t`` is carried into ``f`` (:func:`log2e_split`, and the
product's exact error from an FMA), so ``e`` keeps float32 accuracy (a few
ulps; the tests bound it by 4) wherever it is a normal float; below
``2^-126.5`` (``z < −87.7``) it is 0 rather than a subnormal.  Class sums are
added in float32 within blocks of classes (at most 32 terms per vector lane)
and in double across blocks.

>>> import sympy as sp
>>> from symce.codegen.expressions import P, Y, Z
>>> j = sp.Symbol("j", integer=True)
>>> c_code(P[j] * Z[j])
'pv*z'
>>> c_code(sp.log(sp.Symbol("sum_e")) - Z[Y])
'log(sum_e) - ((double)xr[y * cs] - m)'
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sympy as sp
from sympy.printing.c import C99CodePrinter

from symce.codegen.expressions import EPS, E, KernelExpressions, P, W, Y, Z

#: the element's locals in the loops of walks 2 and 3
ELEMENT_LOCALS: Mapping[sp.IndexedBase, str] = {Z: "z", E: "e", P: "pv", W: "wv"}

#: a gather at the target class ``y`` of the row at ``xr`` / ``pr`` (class stride ``cs``)
GATHERS: Mapping[sp.IndexedBase, str] = {
    Z: "((double)xr[y * cs] - m)",
    P: "(double)pr[y * cs]",
    W: "(double)w[y]",
}

NAMES: Mapping[str, str] = {
    str(EPS): "label_smoothing",
    "n": "n_classes",
}


class CPrinter(C99CodePrinter):
    """C99 for one element (arrays are the element's locals) or one row (gathers).

    ``names`` renames symbols (a per-row value's name in a slab's per-position
    arrays, for example).
    """

    def __init__(self, names: Mapping[str, str] | None = None):
        super().__init__()
        self.names = {**NAMES, **(names or {})}

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        (index,) = expr.indices
        table = GATHERS if index == Y else ELEMENT_LOCALS
        try:
            return table[expr.base]
        except KeyError:
            raise ValueError(f"no C form for {expr}") from None

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self.names.get(str(expr)) or super()._print_Symbol(expr)

    def _print_Sum(self, expr: sp.Sum) -> str:
        raise ValueError(f"class-axis sums are accumulated by the loops, not printed: {expr}")

    def _print_KroneckerDelta(self, expr: sp.KroneckerDelta) -> str:
        raise ValueError(f"the target term is added by the kernel, not printed: {expr}")


def c_code(expr: sp.Expr, names: Mapping[str, str] | None = None) -> str:
    """``expr`` as a C99 expression (see :class:`CPrinter`)."""
    return CPrinter(names).doprint(expr)


def exp2_coefficients(degree: int = 6) -> list[float]:
    """Coefficients of the polynomial through ``2^f`` at the Chebyshev nodes of ``[-½, ½]``.

    Lowest power first, from SymPy's interpolation at 40 digits.  On ``|f| ≤ ½``
    the error of degree 6 is below ``(ln 2)^7·√2 / (2^13·7!)·/2^-½ ≈ 3.7e-9``
    relative (2.5e-9 measured), under float32's half ulp (6e-8) and below the
    degree-7 Taylor polynomial's 7e-9, one multiply-add fewer.

    >>> [round(c, 4) for c in exp2_coefficients(2)]
    [1.0, 0.7036, 0.242]
    """
    f = sp.Symbol("f", real=True)
    nodes = [sp.cos(sp.pi * (2 * i + 1) / (2 * (degree + 1))) / 2 for i in range(degree + 1)]
    points = [(sp.N(v, 40), sp.N(2**v, 40)) for v in nodes]
    poly = sp.Poly(sp.expand(sp.interpolate(points, f)), f)
    return [float(c) for c in reversed(poly.all_coeffs())]


def _float_literal(value: float) -> str:
    return f"{value!r}f"


def kernel_context(k: KernelExpressions, name: str) -> dict[str, object]:
    """What ``templates/c/cross_entropy.c.j2`` renders for one kernel.

    ``accumulators``: ``(symbol, summand)`` for every hoisted class-axis sum a
    row needs (walk 2); ``gathers``: ``(symbol, code)``; ``constants``: the
    per-call sums (computed by the caller, passed in as doubles);
    ``row_values``: ``(name, code)`` of the loss and the gradient's per-row
    factors, in double precision; ``gradient`` / ``gradient_slab``: walk 3's
    element for a row's scalars / a slab's per-position arrays.
    """
    accumulators, gathers = [], []
    for symbol, definition in (*k.before_exp, *k.after_exp):
        if isinstance(definition, sp.Sum):
            (_, lo, _hi), = definition.limits
            if lo != 1:
                raise ValueError(f"only sums over all classes can be accumulated: {definition}")
            accumulators.append((str(symbol), c_code(definition.function)))
        elif isinstance(definition, sp.Indexed):
            gathers.append((str(symbol), c_code(definition)))
        else:
            raise ValueError(f"no C form for the hoisted {symbol} = {definition}")
    if not any(code == ELEMENT_LOCALS[E] for _, code in accumulators):
        raise ValueError(f"kernel {name} has no sum of the exponentials")
    alpha = sp.Symbol("alpha", real=True)
    factors = [(f"d{i}", coef, arrays) for i, (coef, arrays) in enumerate(k.dense_terms)]
    gradient = alpha * E[sp.Symbol("k", integer=True)] + sp.Add(
        *[sp.Symbol(d, real=True) * sp.Mul(*arrays) for d, _, arrays in factors])
    per_row = ["alpha"] + [d for d, _, _ in factors]
    row_values = [("loss", c_code(k.loss)), ("alpha", c_code(k.alpha))]
    row_values += [(d, c_code(coef)) for d, coef, _ in factors]
    if k.beta != 0:
        row_values.append(("beta", c_code(k.beta)))
    return {
        "name": name,
        "kind": k.kind,
        "weighted": k.weighted,
        "smoothed": k.smoothed,
        "constants": [str(s) for s, _ in k.constants],
        "accumulators": accumulators,
        "gathers": gathers,
        "row_values": row_values,
        "per_row": per_row,
        "has_beta": k.beta != 0,
        "gradient": c_code(gradient, {p: f"{p}_f" for p in per_row}),
        "gradient_slab": c_code(gradient, {p: f"{p}_a[s]" for p in per_row}),
    }


def log2e_split() -> tuple[float, float]:
    """``log₂e = hi + lo`` with ``hi`` the nearest float32 and ``lo`` the float32 rest.

    >>> hi, lo = log2e_split()
    >>> hi, abs(lo) < 2**-24
    (1.4426950216293335, True)
    """
    exact = sp.N(1 / sp.log(2), 40)
    hi = float(np.float32(float(exact)))
    lo = float(np.float32(float(exact - sp.Float(hi, 40))))
    return hi, lo


def exp2_context() -> dict[str, object]:
    """The exponential's constants for the template (polynomial coefficients highest first)."""
    hi, lo = log2e_split()
    return {"exp2_horner": [_float_literal(c) for c in reversed(exp2_coefficients())],
            "log2e_hi": _float_literal(hi), "log2e_lo": _float_literal(lo)}


#: positions of a sample one unit of a slab holds: 16 float32 lanes, one
#: AVX-512 vector (two AVX2 ones), so each per-position value is a register
SLAB_POSITIONS = 16

#: below this many positions a sample is transposed to rows (classes contiguous)
#: in a thread's scratch: the position-wise loops are too short to vectorise
ROWS_BELOW = 16


def c_source(kernels: list[tuple[KernelExpressions, str]], header: list[str]) -> str:
    """The C source for ``kernels`` (``(expressions, name)`` pairs)."""
    from symce.render.env import render

    return render("c/cross_entropy.c.j2", header=header,
                  kernels=[kernel_context(k, name) for k, name in kernels],
                  slab_positions=SLAB_POSITIONS, rows_below=ROWS_BELOW, **exp2_context())


__all__ = ["CPrinter", "SLAB_POSITIONS", "c_code", "c_source", "exp2_coefficients",
           "kernel_context"]
