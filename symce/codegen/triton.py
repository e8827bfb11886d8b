"""The Triton backend: one fused kernel per target kind, printed from the derivation.

A Triton program holds a tile of ``BLOCK_R`` rows × ``BLOCK_C`` classes and
walks the class axis twice.  The first walk reads the logits once: an online
log-sum-exp (running max ``m``, running ``Σ exp(x − m)``) and every other
class-axis sum of :mod:`symce.codegen.expressions`.  The second walk (from L2
on a GPU) writes the gradient ``alpha·e + beta·δ_y + dense``.

The derivation's hoisted sums are over the *shifted* logits ``z = x − m``,
but ``m`` is only known after the first walk.  Every such sum is linear in
``z``, so :func:`unshifted` rewrites it with ``z = x − m`` into sums over the
raw logits (``Σ p z = Σ p x − m Σ p``) that a single walk accumulates block by
block; the rewrite is checked by substituting back.  ``Σ e`` is the one sum
that is not linear in the logits; the template keeps it online (the proved
``shift_sum`` step rescales it when the running max grows).

>>> import sympy as sp
>>> from symce.codegen.expressions import P, Z
>>> j, n = sp.Symbol("j", integer=True), sp.Symbol("n", integer=True, positive=True)
>>> unshifted(sp.Sum(P[j] * Z[j], (j, 1, n)))
-m*Sum(p[j], (j, 1, n)) + Sum(p[j]*x[j], (j, 1, n))
>>> TritonPrinter().doprint(sp.log(sp.Sum(P[j] * X[j], (j, 1, n))))
'tl.log(tl.sum(p*x, axis=1, keep_dims=True))'
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from symce.codegen.expressions import (
    E,
    KernelExpressions,
    Y,
    Z,
    _linear_sums,
)
from symce.codegen.printers import NAMES, ArrayPrinterMixin
from symce.errors import ProofError

X = sp.IndexedBase("x", real=True)  # the raw logits of the tile
M = sp.Symbol("m", real=True)  # the row maximum after the first walk
K = sp.Symbol("k", integer=True)  # the class of a gradient entry


class TritonPrinter(ArrayPrinterMixin, NumPyPrinter):
    """``triton.language``: ``tl.sum(…, axis=1, keep_dims=True)``, gathers by loads.

    A tile is ``[BLOCK_R, BLOCK_C]``; a per-row value ``[BLOCK_R, 1]``; a class
    weight block ``[1, BLOCK_C]``.  A gather at the target class is one load
    per row (``rows_at`` is the row's offset, ``class_stride`` the distance
    between classes, ``live`` the rows whose logits are read).
    """

    module_aliases = {"numpy": "tl"}
    names = {**NAMES, Z: "z", E: "e", X: "x", M: "m"}
    templates = {
        "class_sum": "tl.sum({body}, axis=1, keep_dims=True)",
        "row_gather": ("tl.load({array}_ptr + rows_at + {index} * class_stride, "
                       "mask=live, other=0.0).to(ACC)"),
        "class_gather": "tl.load({array}_ptr + {index}).to(ACC)",
    }

    def _print_Sum(self, expr: sp.Sum) -> str:
        # a tile's products are registers: a dot product is just a product summed
        (_, lo, _hi), = expr.limits
        if lo != 1:
            raise ValueError(f"only sums over all classes can be printed, not {expr}")
        return self.templates["class_sum"].format(body=self._print(expr.function))

    def _print_KroneckerDelta(self, expr: sp.KroneckerDelta) -> str:
        if K not in expr.args:
            raise ValueError(f"only deltas against the tile's class k can be printed: {expr}")
        (other,) = set(expr.args) - {K}
        return f"tl.where(cols == {self._print(other)}, 1.0, 0.0)"

    def _print_Max(self, expr: sp.Max) -> str:
        first, *rest = (self._print(a) for a in expr.args)
        for other in rest:
            first = f"tl.maximum({first}, {other})"
        return first


def triton_code(expr: sp.Expr) -> str:
    """``expr`` printed for a Triton tile."""
    return TritonPrinter().doprint(expr)


def unshifted(expr: sp.Expr) -> sp.Expr:
    """``expr`` with ``z = x − m`` and every class-axis sum made linear."""
    raw = _linear_sums(expr.replace(lambda t: isinstance(t, sp.Indexed) and t.base == Z,
                                    lambda t: X[t.indices] - M))
    back = _linear_sums(raw.replace(lambda t: isinstance(t, sp.Indexed) and t.base == X,
                                    lambda t: Z[t.indices] + M))
    if sp.expand(back - _linear_sums(expr)) != 0:
        raise ProofError(f"unshifting {expr} gave {raw}, which does not substitute back")
    return raw


def _accumulator_name(term: sp.Sum) -> str:
    letters = "".join(sorted(str(b.base) for b in term.atoms(sp.Indexed)))
    return f"acc_{letters}"


def _is_online_sum(expr: sp.Expr) -> bool:
    return isinstance(expr, sp.Sum) and expr.function == E[expr.limits[0][0]]


def kernel_context(k: KernelExpressions, name: str) -> dict[str, object]:
    """What ``templates/triton/cross_entropy.py.j2`` renders for one kernel.

    ``accumulators``: ``(name, block code)`` summed over the class blocks of the
    first walk; ``online``: the symbol that holds ``Σ e``; ``row_values``:
    ``(symbol, code)`` for each hoisted symbol once the walk is done;
    ``gradient``: the entry ``alpha·e + beta·δ_ky + dense`` of one tile.
    """
    definitions = [*k.constants, *k.before_exp, *k.after_exp]
    online = [s for s, d in definitions if _is_online_sum(d)]
    if len(online) != 1:
        raise ValueError(f"expected exactly one sum of e among {definitions}")
    accumulators: dict[sp.Sum, sp.Symbol] = {}
    row_values = []
    for symbol, definition in definitions:
        if symbol in online:
            continue
        raw = unshifted(definition)
        for term in sorted(raw.atoms(sp.Sum), key=sp.default_sort_key):
            accumulators.setdefault(term, sp.Symbol(_accumulator_name(term), real=True))
        row_values.append((str(symbol), triton_code(raw.xreplace(accumulators))))
    alpha, beta = sp.Symbol("alpha", real=True), sp.Symbol("beta", real=True)
    # alpha and beta are per-row values the template computes once per row
    gradient = (alpha * E[K] + (beta * sp.KroneckerDelta(K, Y) if k.beta != 0 else 0)
                + k.dense)
    return {
        "name": name,
        "kind": k.kind,
        "weighted": k.weighted,
        "smoothed": k.smoothed,
        "online": str(online[0]),
        "online_block": triton_code(dict(definitions)[online[0]]),
        "exp_z": triton_code(sp.exp(Z[K])),
        "accumulators": [(str(s), triton_code(t)) for t, s in accumulators.items()],
        "row_values": row_values,
        "loss": triton_code(k.loss),
        "alpha": triton_code(k.alpha),
        "beta": triton_code(k.beta),
        "gradient": triton_code(gradient),
    }


__all__ = ["M", "TritonPrinter", "X", "kernel_context", "triton_code", "unshifted"]
