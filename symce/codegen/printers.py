"""Printers: kernel expressions → array code, one subclass per backend on SymPy's.

The array kernels work on a block of logits laid out ``(rows, classes,
positions)`` with the class axis at 1 (a ``(N, C)`` input is ``(N, C, 1)``): an
element array (``u``, ``z``, ``e``, ``p`` …) has the block's shape, a per-row
value ``(rows, 1, positions)``, the class weights ``(1, C, 1)``, so every
printed expression broadcasts without reshaping.

What differs between backends is data (:attr:`ArrayPrinterMixin.templates`):
how a class-axis ``Sum`` reduces, module aliases, and the name table (a
parameter is always printed as its argument name, from
:attr:`~symce.codegen.ir.Kernel.names`).  The mixin adds ``_print_*`` for
``Sum``, ``Indexed`` and ``Symbol`` on top of SymPy's NumPy / PyTorch
printers (which already print ``exp``, ``log``, ``tanh``, powers …).

>>> import sympy as sp
>>> from symce.codegen.ir import J, STUDENT
>>> from symce.losses.targets import N_CLASSES
>>> NumpyArrayPrinter().doprint(sp.log(sp.Sum(STUDENT.exp[J], (J, 1, N_CLASSES))))
'np.log(np.sum(e, axis=1, keepdims=True))'
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pytorch import TorchPrinter

from symce.codegen.ir import LOG2_E, STUDENT, TEACHER, J, K, Kernel
from symce.losses.targets import EPS, MASK, N_CLASSES, P, W, Y

#: element arrays by IR base (shared by every array backend)
ELEMENT_NAMES: Mapping[sp.IndexedBase, str] = {
    STUDENT.raw: "u", STUDENT.logit: "x", STUDENT.shifted: "z", STUDENT.exp: "e",
    TEACHER.raw: "tu", TEACHER.logit: "tx", TEACHER.shifted: "tz", TEACHER.exp: "te",
    P: "p", W: "w",
}

#: what every array kernel calls the target model's symbols
NAMES: Mapping[sp.Basic, str] = {
    EPS: "label_smoothing", N_CLASSES: "n_classes", MASK: "valid",
}


def exp2_form(expr: sp.Expr) -> sp.Expr:
    """``exp(a) = 2^(a·log₂e)``: the kernels' exponential (a cheaper machine operation).

    >>> exp2_form(sp.exp(sp.Symbol("a")))
    2**(1.442695040888963407359924681*a)
    """
    return expr.replace(lambda t: isinstance(t, sp.exp), lambda t: 2 ** (LOG2_E * t.args[0]))


class ArrayPrinterMixin:
    """Class-axis sums, element arrays and names for the block layout described above."""

    templates: Mapping[str, str] = {}
    module_aliases: Mapping[str, str] = {}

    def __init__(self, names: Mapping[sp.Basic, str] | None = None, **settings):
        super().__init__(settings or None)
        self.names = {**NAMES, **(names or {})}

    def _module_format(self, fqn: str, register: bool = True) -> str:
        for module, alias in self.module_aliases.items():
            if fqn.startswith(module + "."):
                fqn = alias + fqn[len(module):]
        return super()._module_format(fqn, register)

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        (index,) = expr.indices
        name = ELEMENT_NAMES.get(expr.base)
        if name is None or index == Y or not index.is_Symbol:
            raise ValueError(f"no array form for {expr} (gathers are row values)")
        return name

    def _print_Sum(self, expr: sp.Sum) -> str:
        (_, lo, _hi), = expr.limits
        if lo != 1:
            raise ValueError(f"only sums over all classes can be printed, not {expr}")
        factors = sp.Mul.make_args(expr.function)
        if len(factors) > 1 and all(isinstance(f, sp.Indexed) for f in factors) and \
                "class_dot" in self.templates:
            # Σ_j a_j b_j (c_j …) as a batched dot product of the factors: the
            # module's helper forms no temporary of the block's size
            return self.templates["class_dot"].format(
                factors=", ".join(self._print(f) for f in factors))
        return self.templates["class_sum"].format(body=self._print(expr.function))

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self.names.get(expr) or super()._print_Symbol(expr)

    def _print_KroneckerDelta(self, expr) -> str:
        raise ValueError(f"a Kronecker delta is a kernel's target term, not printed: {expr}")

    def _print_Pow(self, expr: sp.Pow, **kwargs) -> str:
        if expr.exp == -1:  # print 1/x, not x**(-1.0) / torch.pow(x, -1)
            return f"1/{self.parenthesize(expr.base, sp.printing.precedence.PRECEDENCE['Pow'])}"
        if expr.base == 2 and "exp2" in self.templates:
            return self.templates["exp2"].format(arg=self._print(expr.exp))
        return super()._print_Pow(expr, **kwargs)


class NumpyArrayPrinter(ArrayPrinterMixin, NumPyPrinter):
    """NumPy: ``np.sum(…, axis=1, keepdims=True)``; products summed by ``_class_dot``."""

    module_aliases = {"numpy": "np"}
    templates = {
        "class_sum": "np.sum({body}, axis=1, keepdims=True)",
        # Σ_j a_j b_j: the module's helper picks a dot per row or einsum by layout
        "class_dot": "_class_dot({factors})",
        "exp2": "np.exp2({arg})",
    }


class TorchArrayPrinter(ArrayPrinterMixin, TorchPrinter):
    """PyTorch: ``torch.sum(…, dim=1, keepdim=True)``; powers as ``a**b``.

    SymPy's ``torch.pow(a, b)`` fails where both are Python numbers (a
    parameter squared: ``temperature**2``); Python's ``**`` serves tensors and
    numbers alike.
    """

    templates = {
        "class_sum": "torch.sum({body}, dim=1, keepdim=True)",
        "class_dot": "_class_dot({factors})",
        "exp2": "torch.exp2({arg})",
    }

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        if expr.exp == -1 or (expr.base == 2 and "exp2" in self.templates):
            return super()._print_Pow(expr)
        return self._hprint_Pow(expr, rational=rational, sqrt=self._module_format("torch.sqrt"))


PRINTERS: dict[str, type[ArrayPrinterMixin]] = {
    "numpy": NumpyArrayPrinter,
    "torch": TorchArrayPrinter,
}


def array_code(expr: sp.Expr, backend: str, names: Mapping[sp.Basic, str] | None = None) -> str:
    """``expr`` printed for ``backend`` ("numpy" or "torch")."""
    try:
        printer = PRINTERS[backend]
    except KeyError:
        known = sorted(PRINTERS)
        raise ValueError(f"unknown backend {backend!r}; expected one of {known}") from None
    return printer(names).doprint(expr)


def kernel_names(kernel: Kernel) -> dict[sp.Basic, str]:
    """Symbol → name for a kernel: parameters by argument name, row values by theirs."""
    names = dict(kernel.names)
    for v in kernel.row_values:
        names[v.symbol] = str(v.symbol)
    return names


def array_kernel_context(kernel: Kernel, backend: str) -> dict[str, object]:
    """What an array template renders for one kernel, every expression printed."""
    names = kernel_names(kernel)

    def code(expr):
        return array_code(expr, backend, names)

    elements = {}
    for symbol, definition in kernel.elements:
        if symbol.base in (STUDENT.exp, TEACHER.exp):
            definition = exp2_form(definition)
        elements[ELEMENT_NAMES[symbol.base]] = code(definition)
    gathers = []
    for v in kernel.values("gather"):
        base = ELEMENT_NAMES[v.definition.base]
        gathers.append((str(v.symbol), base))

    def gradient(g):
        if g is None:
            return None
        return {"terms": [(code(c), code(f)) for c, f in g.terms],
                "target": code(g.target) if g.target != 0 else None}

    return {
        "name": kernel.name,
        "key": kernel.key,
        "kind": kernel.kind,
        "flags": dict(kernel.flags),
        "teacher": len(kernel.streams) > 1,
        "transformed": kernel.transformed,
        "elements": elements,
        "maxima": [(str(v.symbol), ELEMENT_NAMES[v.definition.base]) for v in
                   kernel.values("max")],
        "constants": [(str(v.symbol), code(v.definition)) for v in kernel.values("constant")],
        "gathers": gathers,
        "levels": [[(str(v.symbol), code(v.definition)) for v in kernel.values("sum", level)]
                   for level in range(1, kernel.levels + 1)],
        "losses": [(name, code(e)) for name, e in kernel.losses],
        "grad": gradient(kernel.grad),
        "grad_teacher": gradient(kernel.grad_teacher),
        "scalars": list(kernel.scalars),
        "uses": sorted(_element_uses(kernel)),
    }


def _element_uses(kernel: Kernel) -> set[str]:
    """The element arrays a kernel's expressions read (the template forms only those)."""
    exprs = [v.definition for v in kernel.row_values if v.kind in ("sum", "constant")]
    exprs += [e for _, e in kernel.losses]
    for g in (kernel.grad, kernel.grad_teacher):
        if g is not None:
            exprs += [g.element, g.target]
    found = set()
    for e in exprs:
        for t in e.atoms(sp.Indexed):
            if t.base in ELEMENT_NAMES and t.indices[0] in (J, K):
                found.add(ELEMENT_NAMES[t.base])
    return found
