"""Printers: SymPy kernel expressions → array code, one subclass per backend.

The kernels work on a block of logits laid out ``(rows, classes, positions)``
with the class axis at 1 (a ``(N, C)`` input is ``(N, C, 1)``); a per-row
value has shape ``(rows, 1, positions)`` and a per-class array ``(1, C, 1)``,
so every printed expression broadcasts without reshaping.

What differs between backends is data (:attr:`ArrayPrinterMixin.templates`):
how a class-axis ``Sum`` reduces, how an array is gathered at the target
class ``y``, and module aliases.  The mixin adds the ``_print_*`` methods for
``Sum``, ``Indexed`` and ``Symbol`` on top of SymPy's NumPy / PyTorch printers
(which already print ``exp``, ``log``, ``Max`` …).  A new backend (Triton) is
a subclass with its own table.

>>> import sympy as sp
>>> from symce.codegen.expressions import E, Y
>>> j, n = sp.Symbol("j", integer=True), sp.Symbol("n", integer=True)
>>> NumpyArrayPrinter().doprint(sp.log(sp.Sum(E[j], (j, 1, n))))
'np.log(np.sum(buf, axis=1, keepdims=True))'
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pytorch import TorchPrinter

from symce.codegen.expressions import EPS, E, P, W, Y, Z

#: what the kernels call each SymPy name (shared by every backend)
NAMES: Mapping[sp.Basic, str] = {
    Z: "buf",  # the shifted logits live in the gradient buffer ...
    E: "buf",  # ... and are exponentiated there in place
    P: "p",
    W: "w",
    EPS: "label_smoothing",
    sp.Symbol("n", integer=True, positive=True): "n_classes",
}

#: bases that are per-class arrays (shape ``(1, C, 1)``); the rest vary by row
CLASS_BASES = frozenset({W})


class ArrayPrinterMixin:
    """Class-axis sums, arrays and gathers for the block layout described above."""

    templates: Mapping[str, str] = {}
    module_aliases: Mapping[str, str] = {}
    names: Mapping[sp.Basic, str] = NAMES

    def _module_format(self, fqn: str, register: bool = True) -> str:
        for module, alias in self.module_aliases.items():
            if fqn.startswith(module + "."):
                fqn = alias + fqn[len(module):]
        return super()._module_format(fqn, register)

    def _array(self, base: sp.IndexedBase) -> str:
        return self.names.get(base, str(base))

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        (index,) = expr.indices
        array = self._array(expr.base)
        if index == Y:
            key = "class_gather" if expr.base in CLASS_BASES else "row_gather"
            return self.templates[key].format(array=array, index=self._print(Y))
        return array  # the whole class axis: the array itself

    def _print_Sum(self, expr: sp.Sum) -> str:
        (_, lo, _hi), = expr.limits
        if lo != 1:
            raise ValueError(f"only sums over all classes can be printed, not {expr}")
        factors = sp.Mul.make_args(expr.function)
        if len(factors) > 1 and all(isinstance(f, sp.Indexed) for f in factors):
            # Σ_j a_j b_j (c_j …) as a batched dot product of the factors: the
            # module's helper forms no temporary of the block's size
            return self.templates["class_dot"].format(
                factors=", ".join(self._print(f) for f in factors))
        return self.templates["class_sum"].format(body=self._print(expr.function))

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self.names.get(expr) or super()._print_Symbol(expr)

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        if expr.exp == -1:  # print 1/x, not x**(-1.0) / torch.pow(x, -1)
            return f"1/{self.parenthesize(expr.base, sp.printing.precedence.PRECEDENCE['Pow'])}"
        return super()._print_Pow(expr, rational=rational)


class NumpyArrayPrinter(ArrayPrinterMixin, NumPyPrinter):
    """NumPy: ``np.sum(…, axis=1, keepdims=True)``; gathers by flat offsets ``y_at``."""

    module_aliases = {"numpy": "np"}
    templates = {
        "class_sum": "np.sum({body}, axis=1, keepdims=True)",
        # Σ_j a_j b_j: the module's helper picks a batched matmul or einsum by layout
        "class_dot": "_class_dot({factors})",
        # y_at: flat offsets row * C + y of the targets in the contiguous block
        "row_gather": "{array}.reshape(-1)[y_at]",
        "class_gather": "{array}.reshape(-1)[{index}]",
    }


class TorchArrayPrinter(ArrayPrinterMixin, TorchPrinter):
    """PyTorch: ``torch.sum(…, dim=1, keepdim=True)``, ``torch.gather``."""

    templates = {
        "class_sum": "torch.sum({body}, dim=1, keepdim=True)",
        "class_dot": "_class_dot({factors})",
        "row_gather": "torch.gather({array}, 1, {index})",
        "class_gather": "{array}.reshape(-1)[{index}]",
    }


PRINTERS: dict[str, type[ArrayPrinterMixin]] = {
    "numpy": NumpyArrayPrinter,
    "torch": TorchArrayPrinter,
}


def array_code(expr: sp.Expr, backend: str) -> str:
    """``expr`` printed for ``backend`` ("numpy" or "torch")."""
    try:
        printer = PRINTERS[backend]
    except KeyError:
        known = sorted(PRINTERS)
        raise ValueError(f"unknown backend {backend!r}; expected one of {known}") from None
    return printer().doprint(expr)
