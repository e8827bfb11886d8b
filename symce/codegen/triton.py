"""The Triton backend: fused GPU kernels for every loss, walks scheduled from the IR.

A program of a generated kernel owns a tile of ``BLOCK_R`` rows and walks
the class axis in tiles of ``BLOCK_C`` classes.  What each walk computes is
decided here, from the :class:`~symce.codegen.ir.Kernel`:

* **walk 1, online**: the maximum of every stream (running, ``m_new =
  max(m, tile max)``) together with every class sum that can be accumulated
  before the maximum is known.  :func:`split_online` rewrites a summand
  (``z = x − m``, sums made linear) into pieces ``coefficient · E · h``:
  ``E`` a product of a stream's exponentials ``e = exp(x − m)``, ``h``
  free of every maximum.  A piece with ``E = 1`` is a sum of the raw data,
  accumulated as it is (the coefficient, a polynomial in the final maxima,
  corrects it after the walk: ``Σ p z = Σ p x − m Σ p``); a piece with an
  ``E`` is accumulated online, the running total multiplied by
  ``exp(m_old − m_new)`` per exponential whenever the maximum grows.  That
  factor is taken from the derivation's proved ``shift_sum`` step
  (``Σ e^{x−m} = e^{−m} Σ e^x``, :func:`rescale_factor`), and every
  decomposition is checked by substituting ``x = z + m`` back.
* **walks 2, 3, …**: a sum that cannot be split so (one over ``q``, such as
  focal loss's ``Σ c_j (1 − q_j)^γ log q_j`` with label smoothing or
  probability targets, needs ``Σ e`` first) is accumulated in the first walk
  after the one that completes what it reads.
* **the gradient walk**: per-row coefficients once, then each tile's entries
  ``Σ coefficient · factor + target·δ_ky`` written in the input's dtype (and
  the teacher's gradient into its own buffer).  The walks alternate their
  direction, so each starts on the tiles the previous one read last (the
  likeliest still in L2 on a GPU).

Printing is :class:`TritonPrinter`: a table of the functions
``triton.language`` has under both its compiler and its interpreter
(``tl.extra.libdevice`` runs only compiled: ``tanh`` is rewritten into
exponentials instead, :func:`tanh_form`, checked by SymPy), ``exp`` as
``exp2(z·log₂e)`` (:func:`~symce.codegen.printers.exp2_form`), integer
powers as products, and a power with any other exponent only where its
base is proved positive (or proved non-negative, with ``0^0 = 1`` kept
exact); everything else is refused when the module is generated.

>>> import sympy as sp
>>> from symce.codegen.ir import J, STUDENT
>>> from symce.losses.targets import P
>>> split_online(P[J] * STUDENT.shifted[J], (STUDENT,))
[(1, 1, p[j]*x[j]), (-m, 1, p[j])]
>>> triton_code(sp.Symbol("a") ** 3)
'(a*a*a)'
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from symce.codegen.ir import TEACHER, J, K, Kernel, Stream, expand, linear_sums
from symce.codegen.module import arguments as module_arguments
from symce.codegen.printers import ELEMENT_NAMES, NAMES, ArrayPrinterMixin, exp2_form
from symce.errors import ProofError
from symce.losses import get_loss
from symce.losses.targets import MASK, N_CLASSES, W, Y

#: what the kernels call the target model's symbols: ``classes`` is the number
#: of classes in the accumulation dtype (``n_classes`` is the integer argument)
TRITON_NAMES: Mapping[sp.Basic, str] = {**NAMES, N_CLASSES: "classes"}

#: names the kernel template defines itself; no loss may print a symbol so named
RESERVED = frozenset({
    "ACC", "BLOCK_C", "BLOCK_R", "HAS_MASK", "NEED_GRAD", "NEED_TEACHER_GRAD", "at", "block",
    "c0", "classes", "col_mask", "cols", "grad", "in_range", "last", "live", "n_blocks",
    "n_classes", "n_rows", "positions", "r", "row_mask", "rows_at", "target", "tgrad", "tl",
    "triton", "valid", "y",
})

#: the kernel template's locals numbered per kernel (accumulators, coefficients, losses)
_LOCAL_PREFIXES = ("acc_", "coef_", "tcoef_", "loss_")

#: at most this many factors print an integer power as a product
_MAX_PRODUCT = 8


# -- rewrites before printing ------------------------------------------------------
def tanh_form(expr: sp.Expr) -> sp.Expr:
    """``tanh(a) = 1 − 2/(e^{2a} + 1)``: Triton's interpreter has no ``tanh``.

    The form has no ``∞/∞`` (``e^{2a}`` overflowing gives 1, underflowing −1).
    Each rewrite is checked by SymPy.

    >>> tanh_form(sp.tanh(sp.Symbol("a")))
    1 - 2/(exp(2*a) + 1)
    """
    def rewrite(t: sp.tanh) -> sp.Expr:
        (a,) = t.args
        out = 1 - 2 / (sp.exp(2 * a) + 1)
        if sp.simplify((out - t).rewrite(sp.exp)) != 0:
            raise ProofError(f"tanh({a}) = {out} is not proved")
        return out

    return expr.replace(lambda t: isinstance(t, sp.tanh), rewrite)


def triton_form(expr: sp.Expr) -> sp.Expr:
    """What the printer receives: ``tanh`` in exponentials, every ``exp`` as ``exp2``."""
    return exp2_form(tanh_form(expr))


# -- the printer -------------------------------------------------------------------
class TritonPrinter(ArrayPrinterMixin, PythonCodePrinter):
    """``triton.language`` on a tile: a row value is ``[BLOCK_R, 1]``, an element
    ``[BLOCK_R, BLOCK_C]``; a class sum (``walk=True`` only: it sums the tile's
    classes, masked by ``col_mask``) is ``[BLOCK_R, 1]``.

    ``parts``: what is known to be a part of a positive sum: ``{e: sum_e}``
    (an array, at any class) or an expression (``e`` gathered at ``y``): a
    power's base is proved non-negative with it (``1 − e_k/Σe ≥ 0``).
    """

    #: SymPy function → triton.language (all of them run compiled and interpreted)
    functions: Mapping[str, str] = {
        "log": "tl.log", "sqrt": "tl.sqrt", "Abs": "tl.abs", "floor": "tl.floor",
        "ceiling": "tl.ceil", "erf": "tl.erf", "sin": "tl.sin", "cos": "tl.cos",
        "Max": "tl.maximum", "Min": "tl.minimum",
    }
    #: expression classes printed as Python arithmetic (or by the methods below)
    arithmetic = (sp.Add, sp.Mul, sp.Pow, sp.Symbol, sp.Indexed, sp.Number, sp.NumberSymbol,
                  sp.Sum, sp.KroneckerDelta, sp.Tuple, sp.IndexedBase)
    templates = {"class_sum": "tl.sum(tl.where(col_mask, {body}, 0.0), axis=1, keep_dims=True)"}

    def __init__(self, names: Mapping[sp.Basic, str] | None = None, *, walk: bool = False,
                 parts: Mapping[sp.Basic, sp.Symbol] | None = None):
        super().__init__({**TRITON_NAMES, **(names or {})}, fully_qualified_modules=True)
        self.walk = walk
        self.parts = dict(parts or {})

    def _print(self, expr, **kwargs) -> str:
        if isinstance(expr, sp.Basic) and not isinstance(expr, self.arithmetic):
            name = type(expr).__name__
            if not (isinstance(expr, sp.Function) and name in self.functions):
                raise ValueError(f"Triton cannot print {name}: {expr}")
        return super()._print(expr, **kwargs)

    def _print_Function(self, expr: sp.Function) -> str:
        name = self.functions[type(expr).__name__]
        first, *rest = (self._print(a) for a in expr.args)
        for other in rest:  # tl.maximum / tl.minimum take two arguments
            first = f"{name}({first}, {other})"
        return first if rest else f"{name}({first})"

    _print_Max = _print_Min = _print_log = _print_sqrt = _print_Abs = _print_Function
    _print_floor = _print_ceiling = _print_erf = _print_sin = _print_cos = _print_Function

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        name = self.names.get(expr, expr.name)
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"{expr} has no name a kernel can use (got {name!r})")
        return name

    def _print_Sum(self, expr: sp.Sum) -> str:
        if not self.walk:
            raise ValueError(f"a class sum outside a walk over the classes: {expr}")
        return super()._print_Sum(expr)

    def _print_KroneckerDelta(self, expr: sp.KroneckerDelta) -> str:
        if K not in expr.args or not self.walk:
            raise ValueError(f"only δ(k, ·) in a walk over the classes can be printed: {expr}")
        (other,) = set(expr.args) - {K}
        return f"tl.where(cols == {self._print(other)}, 1.0, 0.0)"

    def _print_Infinity(self, expr) -> str:
        return 'float("inf")'

    def _print_NegativeInfinity(self, expr) -> str:
        return '-float("inf")'

    def _print_NaN(self, expr) -> str:
        return 'float("nan")'

    def _print_NumberSymbol(self, expr) -> str:
        return self._print(sp.Float(expr, 20))

    _print_Exp1 = _print_Pi = _print_NumberSymbol

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exponent = expr.base, expr.exp
        if base == 2:  # exp2_form's 2^t
            return f"tl.exp2({self._exp2_argument(exponent)})"
        if exponent.is_Integer and 0 < abs(int(exponent)) <= _MAX_PRODUCT:
            # Triton tensors have no **: an integer power is a product
            factor = self.parenthesize(base, PRECEDENCE["Mul"])
            product = "*".join([factor] * abs(int(exponent)))
            return f"({product})" if exponent > 0 else f"(1/({product}))"
        if exponent == sp.S.Half:
            return f"tl.sqrt({self._print(base)})"
        return self._general_power(base, exponent)

    def _exp2_argument(self, t: sp.Expr) -> str:
        """``log₂e·(a − b)``, not SymPy's distributed ``log₂e·a − log₂e·b``: the
        difference first keeps its accuracy where ``a ≈ b`` are large."""
        if t.is_Add:
            split = [a.as_coeff_Mul() for a in t.args]
            scale = abs(split[0][0])
            if scale not in (0, 1) and all(abs(c) == scale for c, _ in split):
                inner = sp.Add(*[sp.sign(c) * rest for c, rest in split])
                return f"{self._print(scale)}*({self._print(inner)})"
        return self._print(t)

    def _general_power(self, base: sp.Expr, exponent: sp.Expr) -> str:
        """``a^b = 2^(b·log₂ a)`` for ``a > 0``; for ``a ≥ 0`` also at ``a = 0``:
        ``log₂ 0 = −∞`` gives ``0^b = 0`` (``b > 0``) and ``∞`` (``b < 0``), and
        ``b = 0`` is 1 by a ``where`` (``0·∞`` would be NaN)."""
        sign = self._sign(base)
        if sign is None:
            raise ValueError(f"Triton tensors have no **: {base}**{exponent} needs a base "
                             "proved non-negative")
        a = self._print(base)
        if sign == "nonnegative":  # a rounding below 0 of a proved non-negative base
            a = f"tl.maximum({a}, 0.0)"
        power = f"tl.exp2({self.parenthesize(exponent, PRECEDENCE['Mul'])}*tl.log2({a}))"
        if exponent.is_zero is False:
            return power
        return f"tl.where({self._print(exponent)} == 0, 1.0, {power})"

    def _sign(self, base: sp.Expr) -> str | None:
        if base.is_positive:
            return "positive"
        if base.is_nonnegative:
            return "nonnegative"
        # a part of a positive sum is total/(1 + r) for some r ≥ 0 (one r per part)
        def is_part(t):
            if isinstance(t, sp.Indexed):
                return t.base in self.parts
            return not isinstance(t, sp.IndexedBase) and t in self.parts

        def bounded(t):
            total = self.parts[t.base] if isinstance(t, sp.Indexed) else self.parts[t]
            return total / (1 + sp.Dummy("r", nonnegative=True))

        # a total of positive parts is positive (the IR's row values are only real)
        totals = {t: sp.Dummy(t.name, positive=True) for t in set(self.parts.values())}
        bound = sp.together(base.replace(is_part, bounded).xreplace(totals))
        if bound.is_positive:
            return "positive"
        if bound.is_nonnegative:
            return "nonnegative"
        return None


def triton_code(expr: sp.Expr, names: Mapping[sp.Basic, str] | None = None, *,
                walk: bool = False, parts: Mapping[sp.Basic, sp.Symbol] | None = None) -> str:
    """``expr`` (after :func:`triton_form`) printed for a Triton tile."""
    return TritonPrinter(names, walk=walk, parts=parts).doprint(triton_form(expr))


# -- walk 1: sums accumulated while the maxima are found ------------------------------
def split_online(summand: sp.Expr, streams: Iterable[Stream]
                 ) -> list[tuple[sp.Expr, sp.Expr, sp.Expr]] | None:
    """``summand`` (at ``J``) as ``Σ coefficient · E · h``, or ``None``.

    ``E``: a product of the streams' exponentials at ``J`` (``1`` if none),
    ``h``: free of every maximum; the coefficient is free of ``J``.  ``None``
    when the summand has a maximum anywhere else (inside a power, a log …).
    """
    streams = tuple(streams)
    maxima = {s.max for s in streams}
    exps = {s.exp for s in streams}
    shifted = {s.shifted: s for s in streams}
    g = summand.replace(lambda t: isinstance(t, sp.Indexed) and t.base in shifted,
                        lambda t: shifted[t.base].logit[t.indices] - shifted[t.base].max)
    pieces: dict[tuple[sp.Expr, sp.Expr], sp.Expr] = {}
    for term in sp.Add.make_args(expand(g)):
        coefficient, exponential, data = [], [], []
        for f in sp.Mul.make_args(term):
            base, power = f.as_base_exp()
            if isinstance(base, sp.Indexed) and base.base in exps and power.is_Integer \
                    and power > 0:
                exponential.append(f)
            elif not f.has(J):
                coefficient.append(f)
            else:
                data.append(f)
        h = sp.Mul(*data)
        if h.free_symbols & maxima or any(t.base in exps for t in h.atoms(sp.Indexed)):
            return None
        key = (sp.Mul(*exponential), h)
        pieces[key] = pieces.get(key, sp.S.Zero) + sp.Mul(*coefficient)
    return [(c, e, h) for (e, h), c in pieces.items() if c != 0]


def _check_split(summand: sp.Expr, pieces, streams: Iterable[Stream]) -> None:
    """``Σ summand = Σ c · Σ(E h)`` after ``x = z + m``: the split substituted back."""
    logits = {s.logit: s for s in streams}
    total = sp.Add(*[c * sp.Sum(e * h, (J, 1, N_CLASSES)) for c, e, h in pieces])
    back = total.replace(lambda t: isinstance(t, sp.Indexed) and t.base in logits,
                         lambda t: logits[t.base].shifted[t.indices] + logits[t.base].max)
    want = sp.Sum(summand, (J, 1, N_CLASSES))
    if expand(linear_sums(back) - linear_sums(want)) != 0:
        raise ProofError(f"splitting Σ {summand} into {pieces} does not substitute back")


def running_max(stream: Stream) -> sp.Symbol:
    """The stream's maximum after the current tile (``m`` is the one before it)."""
    return sp.Symbol(f"{stream.max.name}_new", real=True)


def rescale_factor(stream: Stream, shift_sum) -> sp.Expr:
    """``Σ e^{x−m_new} h = F · Σ e^{x−m} h`` with ``F = exp(m − m_new)``: the running
    sum moves to the new maximum.  ``F`` is the quotient of the proved
    ``shift_sum`` step (``Σ e^{x−m} = e^{−m} Σ e^x``) at the two maxima (the
    ``Σ e^x`` cancels), checked on the exponential it rescales."""
    ctx_m = next(s for s in shift_sum.rhs.free_symbols if s.name == "m")
    old, new = stream.max, running_max(stream)
    factor = sp.powsimp(shift_sum.rhs.xreplace({ctx_m: new}) / shift_sum.rhs.xreplace({ctx_m: old}))
    a = sp.Symbol("a", real=True)
    if factor.has(sp.Sum) or sp.simplify(sp.exp(a - old) * factor - sp.exp(a - new)) != 0:
        raise ProofError(f"shift_sum does not give the online rescale: {factor}")
    return factor


@dataclass(frozen=True)
class Accumulator:
    """A running per-row sum: ``symbol = symbol · rescale + Σ_tile summand``."""

    symbol: sp.Symbol
    summand: sp.Expr  # at J
    rescale: sp.Expr = sp.S.One

    @property
    def update(self) -> sp.Expr:
        return self.symbol * self.rescale + sp.Sum(self.summand, (J, 1, N_CLASSES))


@dataclass(frozen=True)
class Walk:
    """One pass over the classes of a tile of rows.

    ``online``: walk 1, which also finds the maxima (its elements use the running
    maxima); ``after``: row values defined once the walk is done, from its
    accumulators; ``gradient``: the gradient walk (no accumulators).
    """

    number: int
    accumulators: tuple[Accumulator, ...]
    after: tuple[tuple[sp.Symbol, sp.Expr], ...] = ()
    online: bool = False
    gradient: bool = False


@dataclass(frozen=True)
class Schedule:
    walks: tuple[Walk, ...]
    #: row value → the walk that completes it (maxima: 1, gathers and constants of walk 1)
    walk_of: Mapping[sp.Symbol, int]

    def describe(self, kernel: Kernel) -> list[str]:
        """One line per walk: what it computes (for documents and tests)."""
        lines = []
        for w in self.walks:
            if w.gradient:
                what = ["gradient"] + (["teacher gradient"] if kernel.grad_teacher else [])
            else:
                what = ([f"max {s.max}" for s in kernel.streams] if w.online else [])
                what += [f"{v.symbol}" for v in kernel.row_values
                         if v.kind in ("sum", "constant") and self.walk_of[v.symbol] == w.number]
            lines.append(f"walk {w.number}{' (online)' if w.online else ''}: {', '.join(what)}")
        return lines


def schedule(kernel: Kernel, shift_sum) -> Schedule:
    """The walks of ``kernel`` (see the module docstring); ``shift_sum``: the step
    the online rescale rests on."""
    streams = kernel.streams
    walk_of: dict[sp.Symbol, int] = {s.max: 1 for s in streams}
    kinds = {v.symbol: v.kind for v in kernel.row_values}
    online: dict[sp.Expr, Accumulator] = {}
    after: list[tuple[sp.Symbol, sp.Expr]] = []
    plain: dict[int, list[Accumulator]] = {}
    factors = {s.exp: rescale_factor(s, shift_sum) for s in streams}

    def accumulator(summand: sp.Expr) -> sp.Symbol:
        if summand not in online:
            rescale = sp.S.One
            for f in sp.Mul.make_args(summand):
                base, power = f.as_base_exp()
                if isinstance(base, sp.Indexed) and base.base in factors:
                    rescale *= factors[base.base] ** power
            online[summand] = Accumulator(sp.Symbol(f"acc_{len(online)}", real=True), summand,
                                          rescale)
        return online[summand].symbol

    for v in kernel.row_values:
        if v.kind == "gather":
            walk_of[v.symbol] = 0
        if v.kind not in ("sum", "constant"):
            continue
        summand = v.definition.function.xreplace({v.definition.limits[0][0]: J})
        reads = [s for s in summand.free_symbols if s in kinds]
        pieces = None
        if not any(kinds[s] in ("sum", "constant") for s in reads):
            pieces = split_online(summand, streams)
        if pieces is not None:
            _check_split(summand, pieces, streams)
            value = sp.Add(*[c * (N_CLASSES if e * h == 1 else accumulator(e * h))
                             for c, e, h in pieces])
            after.append((v.symbol, value))
            walk_of[v.symbol] = 1
        else:
            # after the walk completing what it reads, and never in walk 1: a summand
            # that does not split reads the elements at the final maxima
            number = 1 + max([1, *(walk_of[s] for s in reads)])
            walk_of[v.symbol] = number
            plain.setdefault(number, []).append(Accumulator(v.symbol, summand))
    walks = [Walk(1, tuple(online.values()), tuple(after), online=True)]
    for number in sorted(plain):
        if number != walks[-1].number + 1:
            raise AssertionError(f"walk {walks[-1].number + 1} has nothing to do")
        walks.append(Walk(number, tuple(plain[number])))
    walks.append(Walk(walks[-1].number + 1, (), gradient=True))
    return Schedule(tuple(walks), walk_of)


# -- the kernel's context ----------------------------------------------------------------
#: the kernel parameters an array of :attr:`Kernel.arrays` brings (``valid`` comes
#: with ``y`` for class indices; otherwise from a mask)
ARRAY_PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "y": ("y_ptr", "ignore_index"), "p": ("p_ptr",), "w": ("w_ptr",),
    "teacher": ("tu_ptr", "tgrad_ptr"), "valid": ("mask_ptr",),
}


def kernel_parameters(kernel: Kernel) -> list[str]:
    """The runtime arguments of ``kernel``'s Triton function, in order (its
    ``tl.constexpr`` arguments follow: see the template)."""
    found = ["u_ptr", "grad_ptr"]
    for array in kernel.arrays:
        if array == "valid" and "y" in kernel.arrays:
            continue  # the class index says which rows count
        found += ARRAY_PARAMETERS[array]
    found += [f"loss_{t}_ptr" for t in kernel.scales]
    if kernel.scalars:
        found.append("values_ptr")
    return found + ["scales_ptr", "n_rows", "n_classes", "positions"]


def _stream_parts(kernel: Kernel) -> dict[sp.Basic, sp.Symbol]:
    """``e`` (any class, and gathered at ``y``) is a part of ``Σ e``: for proving signs."""
    sums = {v.definition.function.base: v.symbol for v in kernel.values("sum")
            if isinstance(v.definition.function, sp.Indexed)
            and v.definition.function.is_positive}
    parts: dict[sp.Basic, sp.Symbol] = {}
    gathers = {v.definition: v.symbol for v in kernel.values("gather")}
    elements = dict(kernel.elements)
    for s in kernel.streams:
        if s.exp not in sums:
            continue
        parts[s.exp] = sums[s.exp]
        if s.raw[Y] in gathers:  # e_y as the IR gathers it: exp(φ(u_y) − m)
            at_y = elements[s.logit[K]].xreplace({s.raw[K]: gathers[s.raw[Y]]})
            parts[triton_form(sp.exp(at_y - s.max))] = sums[s.exp]
    return parts


def _element_closure(exprs: Iterable[sp.Expr], kernel: Kernel) -> set[sp.IndexedBase]:
    definitions = {symbol.base: d for symbol, d in kernel.elements}
    needed: set[sp.IndexedBase] = set()
    stack = [t.base for e in exprs for t in sp.sympify(e).atoms(sp.Indexed)]
    while stack:
        base = stack.pop()
        if base in needed:
            continue
        needed.add(base)
        if base in definitions:
            stack += [t.base for t in definitions[base].atoms(sp.Indexed)]
    return needed


class _Context:
    """Prints one kernel's pieces into what ``templates/triton/module.py.j2`` renders."""

    def __init__(self, kernel: Kernel, shift_sum):
        self.k = kernel
        self.plan = schedule(kernel, shift_sum)
        self.names = {**kernel.names, **TRITON_NAMES}
        for v in kernel.row_values:
            self.names[v.symbol] = str(v.symbol)
        self.parts = _stream_parts(kernel)
        self._check_names()

    def _check_names(self) -> None:
        """No parameter or row value may be printed under a name the kernel uses itself."""
        own = {"valid", "classes"} | {s.max.name for s in self.k.streams}
        taken = (RESERVED | set(ELEMENT_NAMES.values())
                 | {running_max(s).name for s in self.k.streams})
        clash = sorted(name for name in self.names.values() if name not in own
                       and (name in taken or name.startswith(_LOCAL_PREFIXES)))
        if clash:
            raise ValueError(f"{self.k.loss}: {clash} would shadow the kernel's own names")

    def code(self, expr: sp.Expr, walk: bool = False) -> str:
        return triton_code(expr, self.names, walk=walk, parts=self.parts)

    def elements(self, exprs: list[sp.Expr], online: bool) -> dict[str, list]:
        """What a walk forms for ``exprs``: ``loads`` (array, per class?), then the
        streams' ``logits`` and the other ``elements`` as ``(name, code)`` in order
        (online: ``z`` and ``e`` at the running maxima, found between the two)."""
        needed = _element_closure(exprs, self.k)
        defined = {symbol.base for symbol, _ in self.k.elements}
        raw = [s.raw for s in self.k.streams]
        loads = [(ELEMENT_NAMES[b], b == W) for b in dict.fromkeys([*raw, *ELEMENT_NAMES])
                 if b in needed and b not in defined]
        shift = {s.max: running_max(s) for s in self.k.streams} if online else {}
        logit_bases = {s.logit for s in self.k.streams}
        found: dict[str, list] = {"loads": loads, "logits": [], "elements": []}
        for symbol, definition in self.k.elements:
            if symbol.base in needed:
                where = "logits" if symbol.base in logit_bases else "elements"
                found[where].append((ELEMENT_NAMES[symbol.base],
                                     self.code(definition.xreplace(shift))))
        return found

    def walk(self, w: Walk) -> dict[str, object]:
        summands = [a.summand for a in w.accumulators]
        if w.online:
            summands += [s.logit[K] for s in self.k.streams]
        return {
            "number": w.number,
            "online": w.online,
            **self.elements(summands, w.online),
            "maxima": [{"max": s.max.name, "new": running_max(s).name,
                        "logit": ELEMENT_NAMES[s.logit]} for s in self.k.streams] if w.online
            else [],
            "accumulators": [(a.symbol.name, self.code(a.update, walk=True))
                             for a in w.accumulators],
            "after": [(str(s), self.code(e)) for s, e in w.after],
            "forward": w.number % 2 == 1,
        }

    def gradient(self, g, prefix: str) -> dict[str, object] | None:
        if g is None:
            return None
        coefficients, entry = [], sp.S.Zero
        for i, (c, f) in enumerate(g.terms):
            symbol = sp.Symbol(f"{prefix}_{i}", real=True)
            coefficients.append((symbol.name, self.code(c)))
            entry += symbol * f
        if g.target != 0:
            symbol = sp.Symbol(f"{prefix}_y", real=True)
            coefficients.append((symbol.name, self.code(g.target)))
            entry += symbol * sp.KroneckerDelta(K, Y)
        return {"coefficients": coefficients, "entry": self.code(entry, walk=True)}

    def context(self) -> dict[str, object]:
        k = self.k
        grad = self.gradient(k.grad, "coef")
        grad_teacher = self.gradient(k.grad_teacher, "tcoef")
        factors = [f for g in (k.grad, k.grad_teacher) if g is not None for _, f in g.terms]
        walks = [self.walk(w) for w in self.plan.walks if not w.gradient]
        last = self.plan.walks[-1]
        gathers = []
        for v in k.values("gather"):
            name = ELEMENT_NAMES[v.definition.base]
            gathers.append((str(v.symbol), name, v.definition.base == W))
        return {
            "name": k.name,
            "key": k.key,
            "kind": k.kind,
            "arrays": list(k.arrays),
            "teacher": k.grad_teacher is not None or TEACHER in k.streams,
            "parameters": kernel_parameters(k),
            "scalars": list(k.scalars),
            "scales": [f"scale_{t}" for t in k.scales],
            "streams": [{"raw": ELEMENT_NAMES[s.raw], "max": s.max.name} for s in k.streams],
            "gathers": gathers,
            "walks": walks,
            "losses": [(name, self.code(e)) for name, e in k.losses],
            "grad": grad,
            "grad_teacher": grad_teacher,
            "grad_walk": {"number": last.number, "forward": last.number % 2 == 1,
                          **self.elements(factors, online=False)},
            "schedule": self.plan.describe(k),
        }


def kernel_context(kernel: Kernel, shift_sum) -> dict[str, object]:
    """What the template renders for one kernel, every expression printed."""
    return _Context(kernel, shift_sum).context()


# -- the module's context ------------------------------------------------------------------
def module_class_arguments(loss_name: str) -> dict[str, object]:
    """The ``nn.Module``'s constructor and ``forward`` arguments, PyTorch's way.

    The constructor takes the function's options except per-call data (a
    row mask: a ``forward`` argument), with PyTorch's legacy ``size_average``
    after ``weight`` (or after the leading parameters) and ``reduce`` before
    ``reduction``, as ``torch.nn.CrossEntropyLoss(weight, size_average,
    ignore_index, reduce, reduction, label_smoothing)``; tensors given to it
    (class weights) are buffers.
    """
    loss = get_loss(loss_name)
    model = loss.targets
    per_call = {o.name for o in model.options if o.per_call}
    args = [a for a in module_arguments(loss)[2:] if a.name not in per_call]
    names = [a.name for a in args]
    if "weight" in names:  # PyTorch's place for size_average
        at = names.index("weight") + 1
    else:
        at = sum(1 for a in args if a.role == "param" and loss.param(a.name).leading)
    constructor = []
    for i, a in enumerate(args):
        if i == at:
            constructor.append("size_average=None")
        if a.name == "reduction":
            constructor.append("reduce=None")
        constructor.append(a.source)
    if at == len(args):
        constructor.append("size_average=None")
    return {
        "module_signature": ", ".join([*constructor, "inplace=False"]),
        "module_attributes": [a.name for a in args if not (a.role == "option"
                                                           and a.default == "None")],
        "module_buffers": [a.name for a in args if a.role == "option" and a.default == "None"],
        "forward_arguments": [a for a in module_arguments(loss)[2:] if a.name in per_call],
    }


def triton_context(loss_name: str, ks: tuple[Kernel, ...]) -> dict[str, object]:
    """``templates/triton/module.py.j2``'s context beyond :func:`module_context`."""
    from symce.codegen.ir import derivation_of
    from symce.codegen.module import denominators
    from symce.codegen.second_order import second_order_context

    loss = get_loss(loss_name)
    shift_sum = derivation_of(loss_name).step("shift_sum")  # the online rescale rests on it
    kernels = [kernel_context(k, shift_sum) for k in ks]
    return {
        "kernels": kernels,
        "denominators": denominators(loss, {MASK: "valid", W[Y]: "w_y",
                                            N_CLASSES: "n_classes"}),
        "teacher_gradient": any(k["grad_teacher"] for k in kernels),
        **module_class_arguments(loss_name),
        # the dense path, shared with the torch module: double backward and target gradients
        **second_order_context(loss_name, ks),
    }


__all__ = ["Accumulator", "Schedule", "TritonPrinter", "Walk", "kernel_context",
           "kernel_parameters", "module_class_arguments", "rescale_factor", "schedule",
           "split_online", "tanh_form", "triton_code", "triton_context", "triton_form"]
