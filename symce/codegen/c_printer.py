"""The C printers: SymPy's C99 printer as two tables for the compiled kernels.

:class:`ElementPrinter` prints element math (one class of one row) in float32
with only what ``templates/c/_numeric.c.j2`` offers vectorised: ``exp`` (the
faster one for the shifted logits), ``log``, ``tanh``, powers (small integer
exponents multiplied out, ½ as ``sqrtf``, any other as ``exp(a·log b)``);
everything else is refused with a ``ValueError`` when the module is generated.
:class:`RowPrinter` prints per-row values in double with libm (SymPy's C99
printer, strict).  Both print symbols by the kernel's C names
(:func:`c_identifier` refuses names that would clash with the template's).

>>> import sympy as sp
>>> from symce.codegen.ir import K, STUDENT
>>> element_code(sp.exp(STUDENT.shifted[K]) * STUDENT.logit[K] ** 2)
'symce_exp(z)*(x*x)'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import sympy as sp
from sympy.codegen.ast import float32, real
from sympy.printing.c import C99CodePrinter
from sympy.printing.codeprinter import PrintMethodNotImplementedError

from symce.codegen.printers import ELEMENT_NAMES

#: names the template's C code uses itself: an IR name may not be one of them
_RESERVED = frozenset("""
    A C S P n r s c j c0 c1 s0 y at r0 un unit next units chunks threads scratch es
    ur gr pr tur tgr wr us gs ps tus tgs uc gc pc tuc tgc ec ys v un gn pn tun tgn
    u x z e tu tx tz te p w i first sample rn r1 ahead next_at next_first next_last
    xs txs xsr xss xsc txsr txss txsc
""".split()) | {f"{a}{end}" for a in ("u", "p", "tu", "g", "tg") for end in "rscn"}
_C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto
    if inline int long register restrict return short signed sizeof static struct switch
    typedef union unsigned void volatile while _Bool _Complex _Imaginary
""".split())
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GENERATED = re.compile(r"(t|v|h|coef|tcoef)_\d+\Z")


def c_identifier(name: str) -> str:
    """``name`` if the C code can use it as a variable, else ``ValueError``."""
    if (not _IDENTIFIER.match(name) or name in _C_KEYWORDS or name in _RESERVED
            or _GENERATED.match(name) or name.startswith(("symce", "acc_", "part_", "loss_"))
            or name.endswith(("_f", "_a"))):
        raise ValueError(f"the C kernels cannot name a value {name!r}: it is not a C "
                         "identifier or clashes with a name of the kernel template")
    return name


# -- element math: float32, vectorisable -------------------------------------------------
class ExpTimes(sp.Function):
    """``exp(a·l)`` with ``a = 0`` giving 1: ``b**a`` as ``ExpTimes(a, log b)``
    (``0**0 = 1`` where ``log 0 = −inf``), so one base's powers share its log."""

    nargs = 2


def power_form(expr: sp.Expr) -> sp.Expr:
    """Powers with exponents other than small integers and ½ as :class:`ExpTimes`.

    >>> b, a = sp.symbols("b a", positive=True)
    >>> power_form(b**a * b**2)
    b**2*ExpTimes(a, log(b))
    """
    def rewrite(t: sp.Pow) -> sp.Expr:
        return ExpTimes(t.exp, sp.log(t.base))

    return expr.replace(lambda t: t.is_Pow and not _printable_power(t.exp), rewrite)


def _printable_power(exponent: sp.Expr) -> bool:
    return (exponent.is_Integer and abs(int(exponent)) <= 16) or exponent == sp.S.Half


_ELEMENT_NODES = (sp.Add, sp.Mul, sp.Pow, sp.Symbol, sp.Indexed, sp.Number, sp.exp, sp.log,
                  sp.tanh, ExpTimes)


class ElementPrinter(C99CodePrinter):
    """float32 element math in the template's library: the table below, nothing else.

    ``names``: symbol or element (``Indexed`` at ``k``) → its C text.
    """

    #: SymPy function → the template's float32 function (``exp`` of a shifted
    #: logit, which is ≤ 0, has the faster ``symce_exp``)
    functions: Mapping[type, str] = {sp.exp: "symce_expx", sp.log: "symce_log",
                                     sp.tanh: "symce_tanh", ExpTimes: "symce_exp_times"}
    shifted_exp = "symce_exp"

    def __init__(self, names: Mapping[sp.Basic, str], shifted: Iterable[sp.IndexedBase] = ()):
        super().__init__({"type_aliases": {real: float32}, "strict": True})
        self.names = names
        self.shifted = frozenset(shifted)

    def doprint(self, expr, assign_to=None):
        _refuse_element_nodes(expr)
        return super().doprint(expr, assign_to)

    def _name(self, expr):
        try:
            return self.names[expr]
        except KeyError:
            raise ValueError(f"the C element code has no value {expr}") from None

    def _print_Symbol(self, expr):
        return self._name(expr)

    def _print_Indexed(self, expr):
        return self._name(expr)

    def _print_Function(self, expr):
        name = self.functions.get(type(expr))
        if name is None:
            raise ValueError(f"the C kernels have no vectorised {type(expr).__name__}: {expr}")
        if isinstance(expr, sp.exp) and isinstance(expr.args[0], sp.Indexed) \
                and expr.args[0].base in self.shifted:
            name = self.shifted_exp
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    _print_exp = _print_log = _print_tanh = _print_ExpTimes = _print_Function

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.base, expr.exp
        if exponent == sp.S.Half:
            return f"sqrtf({self._print(base)})"
        if not _printable_power(exponent):
            return self._print(ExpTimes(exponent, sp.log(base)))
        n = int(exponent)
        if n == 0:
            return "1.0f"
        product = "*".join([self.parenthesize(base, 50)] * abs(n))
        return f"({product})" if n > 0 else f"(1.0f/({product}))"

    def _print_Rational(self, expr):
        return f"{float(expr)!r}f"

    def _print_Integer(self, expr):
        return f"{int(expr)}.0f"

    def _print_Float(self, expr):
        return f"{float(expr)!r}f"


class SmallTanhPrinter(ElementPrinter):
    """:class:`ElementPrinter` for a row whose every ``tanh`` argument lies below
    ``c_numeric.TANH_SMALL`` (the kernel tests it per row): ``tanh`` is its
    polynomial alone, ``symce_tanh_small``, the same bits as ``symce_tanh`` there."""

    functions: Mapping[type, str] = {**ElementPrinter.functions, sp.tanh: "symce_tanh_small"}


def _refuse_element_nodes(expr: sp.Expr) -> None:
    if isinstance(expr, sp.Indexed):
        return
    if not isinstance(expr, _ELEMENT_NODES) or isinstance(expr, sp.Function) and \
            type(expr) not in ElementPrinter.functions:
        raise ValueError(f"the C kernels cannot compute {type(expr).__name__} element-wise "
                         f"(vectorised: + * powers exp log tanh): {expr}")
    for a in expr.args:
        _refuse_element_nodes(a)


def element_code(expr: sp.Expr, names: Mapping[sp.Basic, str] | None = None) -> str:
    """``expr`` as float32 C (elements by their local names, e.g. ``z``, ``e``)."""
    table = dict(names or {})
    for t in expr.atoms(sp.Indexed):
        table.setdefault(t, ELEMENT_NAMES[t.base])
    for s in expr.free_symbols - set(table):
        if isinstance(s, sp.Symbol):
            table[s] = f"{s}_f"
    shifted = [b for b, name in ELEMENT_NAMES.items() if name in ("z", "tz")]
    return ElementPrinter(table, shifted).doprint(power_form(expr))


# -- row math: double, libm --------------------------------------------------------------
class RowPrinter(C99CodePrinter):
    """double per-row math (SymPy's C99 printer), symbols by the kernel's C names."""

    def __init__(self, names: Mapping[sp.Basic, str]):
        super().__init__({"strict": True})
        self.names = names

    def doprint(self, expr, assign_to=None):
        try:
            return super().doprint(expr, assign_to)
        except PrintMethodNotImplementedError as exc:
            raise ValueError(f"the C kernels cannot compute {expr} per row: {exc}") from None

    def _print_Symbol(self, expr):
        try:
            return self.names[expr]
        except KeyError:
            raise ValueError(f"the C row code has no value {expr}") from None

    def _print_Indexed(self, expr):
        raise ValueError(f"an element {expr} in a per-row value (gathers are row values)")

    def _print_Sum(self, expr):
        raise ValueError(f"class sums are accumulated by the walks, not printed: {expr}")

    def _print_KroneckerDelta(self, expr):
        raise ValueError(f"the target term is added by the kernel, not printed: {expr}")


__all__ = ["ElementPrinter", "ExpTimes", "RowPrinter", "SmallTanhPrinter", "c_identifier",
           "element_code", "power_form"]
