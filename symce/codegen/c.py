"""The C backend: compiled CPU kernels printed from the kernel description.

Every :class:`~symce.codegen.ir.Kernel` of a loss becomes one C entry point
(``templates/c/module.c.j2``) that walks each row (the classes of one sample
and position) while it sits in the L2 cache:

0. the maxima: of the raw logits, then the transform applied once (for a
   transform SymPy proves increasing, ``max φ(u) = φ(max u)``); a teacher's
   alongside;
1. … L. one walk per level of the class sums (:attr:`RowValue.level`): walk 1
   computes ``z``, ``e = exp(z)`` (stored into the gradient buffer when a
   gradient is wanted, the teacher's ``te`` into its own) and the level-1
   sums; a later walk reads ``e`` back (or recomputes it for the loss alone);
   element values that are not stored (``z``, a teacher's ``tx``, ``tz``) are
   recomputed from the raw data, except a transformed logit whose transform
   calls a function (softcap's ``tanh``), which walk 1 keeps in a per-thread
   scratch for the walks after it.  Between walks the row's
   values are computed in double: gathers at the target, each level's values,
   then every term's loss and the gradient's per-row coefficients;
L+1. the gradient: ``Σ coefficient·factor`` per element in float32, the
   target term added at ``y``, the teacher's gradient into its own buffer.

What is printed: each walk's element code (float32, through
:class:`~symce.codegen.c_printer.ElementPrinter`, whose table holds only
functions the template's vectorisable library has: ``exp``, ``log``,
``tanh``, powers), each stage's row code (double, SymPy's C99 printer,
:class:`~symce.codegen.c_printer.RowPrinter`), the entry
point's parameter list, the ctypes argument table and the Python-side
argument names (:func:`entry_parameters`).  Row-invariant parts of element
expressions are hoisted into per-row values first, common subexpressions of
a walk shared (``sympy.cse``), ``b**a`` rewritten as ``exp(a·log b)`` so a
base's logarithm is shared by its powers.  Anything else is refused here, at
generation time, with a ``ValueError`` naming it.

>>> import sympy as sp
>>> from symce.codegen.ir import K, STUDENT
>>> element_code(sp.exp(STUDENT.shifted[K]) * STUDENT.logit[K] ** 2)
'symce_exp(z)*(x*x)'
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sympy as sp
from sympy.calculus.singularities import is_increasing, is_monotonic

from symce.codegen.c_numeric import TANH_SMALL, float_literal, numeric_context
from symce.codegen.c_printer import (
    ElementPrinter,
    ExpTimes,
    RowPrinter,
    SmallTanhPrinter,
    c_identifier,
    element_code,
    power_form,
)
from symce.codegen.ir import K, Kernel
from symce.codegen.printers import ELEMENT_NAMES
from symce.losses.targets import MASK, N_CLASSES, Y

#: positions of a sample one unit of a slab holds: 16 float32 lanes, one
#: AVX-512 vector (two AVX2 ones), so each per-position value is a register
SLAB_POSITIONS = 16

#: below this many positions a sample is transposed to rows (classes contiguous)
#: in a thread's scratch: the position-wise loops are too short to vectorise
ROWS_BELOW = 16

#: the arrays a C entry point may be given as NULL (``None``): no gradient
#: (the loss alone), every row counts, one scale per term, no teacher gradient
OPTIONAL_ARRAYS = ("g", "valid", "scales", "tg")

# -- the entry point's parameters ----------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """One parameter of a C entry point: ``role`` array | size | value."""

    name: str
    ctype: str
    role: str


def entry_parameters(kernel: Kernel) -> list[Parameter]:
    """The entry point's parameters in order (the calling convention of
    docs/architecture.md): arrays, sizes ``n, C, S``, values."""
    arrays = [Parameter("u", "const float *", "array"), Parameter("g", "float *", "array")]
    arrays += [Parameter(f"loss_{t}", "float *", "array") for t, _ in kernel.losses]
    if "y" in kernel.arrays:
        arrays.append(Parameter("y", "const int64_t *", "array"))
    for name in ("valid", "p", "w"):
        if name in kernel.arrays:
            arrays.append(Parameter(name, "const float *", "array"))
    arrays += [Parameter(c_identifier(str(v.symbol)), "const float *", "array")
               for v in kernel.values("input")]
    arrays.append(Parameter("scales", "const float *", "array"))
    if "teacher" in kernel.arrays:
        arrays += [Parameter("tu", "const float *", "array"), Parameter("tg", "float *", "array")]
    sizes = [Parameter(n, "int64_t", "size") for n in ("n", "C", "S")]
    values = [Parameter(f"scale_{t}", "double", "value") for t in kernel.scales]
    values += [Parameter(s, "double", "value") for s in kernel.scalars]
    values += [Parameter(c_identifier(str(v.symbol)), "double", "value")
               for v in kernel.values("constant")]
    for p in arrays + values:
        if p.role == "value":
            c_identifier(p.name)
    return arrays + sizes + values


# -- hoisting row invariants out of element expressions -----------------------------------
def _is_element(expr: sp.Expr) -> bool:
    return any(K in t.indices for t in expr.atoms(sp.Indexed))


def _trivial(expr: sp.Expr) -> bool:
    """Printed as it is in element code: a symbol, a number, or a negated one."""
    return expr.is_Atom or (expr.is_Mul and len(expr.args) == 2 and expr.args[0] == -1
                            and expr.args[1].is_Atom)


class _Invariants:
    """Row-invariant subexpressions of element code, each named ``h_<i>`` once."""

    def __init__(self):
        self.symbols: dict[sp.Expr, sp.Symbol] = {}

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        if not _is_element(expr):
            return expr if _trivial(expr) else self._name(expr)
        if isinstance(expr, sp.Indexed):
            return expr
        if expr.is_Add or expr.is_Mul:
            fixed = [a for a in expr.args if not _is_element(a)]
            varying = [self(a) for a in expr.args if _is_element(a)]
            if len(fixed) > 1 or (fixed and not _trivial(fixed[0])):
                fixed = [self._name(expr.func(*fixed))]
            return expr.func(*fixed, *varying)
        return expr.func(*[self(a) for a in expr.args])

    def _name(self, expr: sp.Expr) -> sp.Symbol:
        if expr not in self.symbols:
            self.symbols[expr] = sp.Symbol(f"h_{len(self.symbols)}", real=True)
        return self.symbols[expr]

    def definitions(self) -> dict[sp.Symbol, sp.Expr]:
        return {s: e for e, s in self.symbols.items()}


# -- layouts: how a walk's element code reads, stores and names --------------------------
@dataclass(frozen=True)
class _Layout:
    name: str
    row_float: str  # a per-row float
    gather: str  # a raw value at the target class
    #: element loads: raw array → (setup line or None, access)
    raw: Mapping[str, tuple[str | None, str]]
    #: the buffers that keep element values between walks: → (setup line or None, access)
    fixed: Mapping[str, tuple[str | None, str]]
    pointer: str  # a buffer's pointer (what a variant's condition tests)
    scratch: tuple[str, str]  # a scratch buffer's (setup line, access)

    def cache(self, buffer: str) -> tuple[str | None, str]:
        if buffer in self.fixed:
            return self.fixed[buffer]
        setup, access = self.scratch
        return (setup.format(b=buffer) if setup else None), access.format(b=buffer)


ROWS = _Layout(
    "rows", "{}_f", "(double){a}r[y]",
    raw={"u": (None, "ur[c]"), "p": (None, "pr[c]"), "tu": (None, "tur[c]"), "w": (None, "wr[c]")},
    fixed={"g": (None, "gr[c]"), "tg": (None, "tgr[c]")},
    pointer="{b}r", scratch=("", "{b}r[c]"),
)
SLAB = _Layout(
    "slab", "{}_a[s]", "(double){a}s[y * S + s]",
    raw={"u": ("const float *restrict uc = us + c * S;", "uc[s]"),
         "p": ("const float *restrict pc = ps + c * S;", "pc[s]"),
         "tu": ("const float *restrict tuc = tus + c * S;", "tuc[s]"),
         "w": (None, "wr[c]")},
    fixed={"g": ("float *ec = es ? es + c * SYMCE_SLAB : gs + c * S;", "ec[s]"),
           "tg": ("float *tgc = tgs + c * S;", "tgc[s]")},
    pointer="{b}s", scratch=("float *{b}c = {b}s + c * SYMCE_SLAB;", "{b}c[s]"),
)
LAYOUTS = (ROWS, SLAB)

#: a slab's gradient walk: the pointer of each output's class
_SLAB_OUTPUTS = {"g": "float *restrict gc = gs + c * S;", "tg": "float *tgc = tgs + c * S;"}

#: element bases: the raw array each is read from
_RAW = {"u": "u", "tu": "tu", "p": "p", "w": "w"}
#: the exponentials are kept between walks in the gradient buffers
_OUTPUT_OF = {"e": "g", "te": "tg"}


class _Names(dict):
    """Symbol → C text for one layout's element code, resolved on first use (walks
    create invariants and coefficients as they go); records the floats read."""

    def __init__(self, kp: _KernelPrinter, layout: _Layout):
        super().__init__({base[K]: name for base, name in ELEMENT_NAMES.items()})
        self.kp, self.layout = kp, layout

    def __missing__(self, symbol):
        if not isinstance(symbol, sp.Symbol):
            raise KeyError(symbol)
        name = self.kp.c_name(symbol)
        self.kp.float_uses.add(symbol)
        stage = self.kp.float_stage(symbol)
        return f"{name}_f" if stage == -1 else self.layout.row_float.format(name)


class _KernelPrinter:
    """Everything ``module.c.j2`` prints for one kernel (see :func:`kernel_context`)."""

    def __init__(self, kernel: Kernel):
        self.k = kernel
        self.streams = kernel.streams
        self.defs = {symbol.base: d for symbol, d in kernel.elements}
        self.order = [symbol.base for symbol, _ in kernel.elements]
        self.invariants = _Invariants()
        self.buffers = ["g"] + (["tg"] if len(self.streams) > 1 else [])
        #: per-row values the caller supplies (an array each) instead of the walks
        self.supplied = {v.symbol for v in kernel.values("input")}
        self.caches = {name: b for name, b in _OUTPUT_OF.items() if b in self.buffers}
        if kernel.levels < 1 and self.supplied:
            # no walk before the gradient keeps an element value: each is computed there
            self.caches, self.scratch = {}, []
        else:
            self.scratch = self._scratch()
        #: the C test that a row's tanh arguments are all small (set by :meth:`maxima`)
        self.small_test: str | None = None
        self.levels = kernel.levels
        if self.levels < 1 and not self.supplied:
            raise ValueError(
                f"the {kernel.name} kernel would have no sum over the classes to walk: the "
                "loss and its gradient are elementwise in the logits and targets, with no "
                "softmax q or log-sum-exp (a formula such as sum(p*x) or sum(p*exp(x))); "
                "the generated kernels do not support such a loss")
        #: per-row values computed after the last sums: losses, coefficients, targets
        self.row_code: dict[sp.Symbol, sp.Expr] = {
            sp.Symbol(f"loss_{t}", real=True): e for t, e in kernel.losses}
        self.float_uses: set[sp.Symbol] = set()
        self._inputs()

    def _scratch(self) -> list[str]:
        """A transformed logit that a later walk needs and whose transform calls a
        function (``s·tanh(u/s)``; not ``u/T``) is kept from walk 1 in a scratch
        buffer of the thread (a row, or a slab's positions): one more store and load
        in cache instead of computing the function twice (cross-entropy with
        softcap, 128×32000 on one thread: 3.3x plain cross-entropy's time
        recomputing it, 2.2x with the scratch)."""
        later = [v.summand for v in self.k.values("sum") if v.level > 1]
        later += [g.element for g in (self.k.grad, self.k.grad_teacher) if g is not None]
        wanted = _bases(later)
        found = []
        for s in self.streams:
            if s.logit in wanted and self.defs[s.logit].has(sp.Function):
                name = ELEMENT_NAMES[s.logit]
                self.caches[name] = f"{name}s"
                found.append(f"{name}s")
        return found

    def cached_base(self, buffer: str) -> sp.IndexedBase:
        name = next(n for n, b in self.caches.items() if b == buffer)
        return next(b for b, n in ELEMENT_NAMES.items() if n == name)

    # -- the kernel's inputs: per call (from the arguments) and per row ------------------
    def _inputs(self):
        k = self.k
        self.c_names: dict[sp.Symbol, str] = {Y: "y"}
        self.call_inputs: dict[sp.Symbol, str] = {N_CLASSES: "(double)A->C"}
        #: symbol → (stage, rows read, slab read): stage 0 before the sums, else its level
        self.row_inputs: dict[sp.Symbol, tuple[int, str, str]] = {}
        by_name = {name: symbol for symbol, name in k.names.items()}
        for symbol, name in k.names.items():
            self.c_names[symbol] = c_identifier(name)
        for name in k.scalars:
            self.call_inputs[by_name[name]] = f"A->{name}"
        for v in k.values("constant"):
            name = self.c_names[v.symbol] = c_identifier(str(v.symbol))
            self.call_inputs[v.symbol] = f"A->{name}"
        if k.masked:
            self.row_inputs[MASK] = (0, "A->valid ? (double)A->valid[r] : 1.0",
                                     "A->valid ? (double)A->valid[r0 + s] : 1.0")
        for t in k.scales:
            symbol = sp.Symbol(f"scale_{t}", real=True)
            name = self.c_names[symbol] = c_identifier(f"scale_{t}")
            self.row_inputs[symbol] = (0, f"A->scales ? (double)A->scales[r] : A->{name}",
                                       f"A->scales ? (double)A->scales[r0 + s] : A->{name}")
        for v in k.values("max"):
            name = self.c_names[v.symbol] = c_identifier(str(v.symbol))
            self.row_inputs[v.symbol] = (0, f"(double){name}_f", f"(double){name}_a[s]")
        for v in k.values("gather"):
            name = self.c_names[v.symbol] = c_identifier(str(v.symbol))
            base = _RAW[ELEMENT_NAMES[v.definition.base]]
            rows, slab = ("(double)wr[y]",) * 2 if base == "w" else (
                ROWS.gather.format(a=base), SLAB.gather.format(a=base))
            self.row_inputs[v.symbol] = (0, rows, slab)
        for v in k.values("sum"):
            name = self.c_names[v.symbol] = c_identifier(str(v.symbol))
            self.row_inputs[v.symbol] = (v.level, name, f"acc_{name}[s]")
        for v in k.values("input"):
            name = self.c_names[v.symbol] = c_identifier(str(v.symbol))
            self.row_inputs[v.symbol] = (0, f"(double)A->{name}[r]", f"(double)A->{name}[r0 + s]")

    def c_name(self, symbol: sp.Symbol) -> str:
        return self.c_names.get(symbol) or str(symbol)

    def stage_of(self, expr: sp.Expr) -> int:
        """-1: per call; 0: per row before the sums; l: after walk l."""
        return max((self.float_stage(s) for s in expr.free_symbols), default=-1)

    def float_stage(self, symbol: sp.Symbol) -> int:
        if symbol in self.call_inputs:
            return -1
        if symbol in self.row_inputs:
            return self.row_inputs[symbol][0]
        definition = self.invariants.definitions().get(symbol)
        if definition is not None:
            return self.stage_of(definition)
        if symbol in self.row_code:
            return self.levels
        raise ValueError(f"kernel {self.k.name}: the C kernels have no value {symbol}")

    def is_max(self, symbol: sp.Symbol) -> bool:
        """A maximum the kernel takes itself (walk 0), not one the caller supplies."""
        return any(symbol == s.max for s in self.streams) and symbol not in self.supplied

    # -- element code of one walk variant ---------------------------------------------
    def element_block(self, exprs: Sequence[sp.Expr], cached: Iterable[str],
                      stores: Iterable[str], layout: _Layout,
                      printer_class: type[ElementPrinter] = ElementPrinter) -> dict[str, object]:
        """The loop body computing ``exprs``: loads, element definitions (an
        exponential read from its buffer where ``cached`` names it), ``stores`` of
        exponentials, common subexpressions; and ``exprs`` printed."""
        cached, stores = set(cached), set(stores)
        stored = {b for b, name in ELEMENT_NAMES.items() if self.caches.get(name) in stores}
        needed: list[sp.IndexedBase] = []

        def need(base):
            if base in needed:
                return
            name = ELEMENT_NAMES[base]
            if name not in _RAW and self.caches.get(name) not in cached:
                for t in sorted(self.defs[base].atoms(sp.Indexed), key=str):
                    need(t.base)
            needed.append(base)

        for base in sorted(_bases(exprs) | stored, key=lambda b: ELEMENT_NAMES[b]):
            need(base)
        names = _Names(self, layout)
        printer = printer_class(names, [s.shifted for s in self.streams])
        setup, lines = [], []

        def use(line):
            if line and line not in setup:
                setup.append(line)

        raw = [b for b in needed if ELEMENT_NAMES[b] in _RAW]
        for base in raw + [b for b in self.order if b in needed and b not in raw]:
            name = ELEMENT_NAMES[base]
            if name in _RAW:
                line, code = layout.raw[_RAW[name]]
            elif self.caches.get(name) in cached:
                line, code = layout.cache(self.caches[name])
            else:
                line, code = None, printer.doprint(power_form(self.invariants(self.defs[base])))
            use(line)
            lines.append(f"const float {name} = {code};")
            if base in stored:
                line, access = layout.cache(self.caches[name])
                use(line)
                lines.append(f"{access} = {name};")
        hoisted = [power_form(self.invariants(e)) for e in exprs]
        temps, reduced = sp.cse(hoisted, symbols=sp.numbered_symbols("v_", real=True),
                                order="canonical")
        for symbol, e in temps:
            lines.append(f"const float {symbol} = {printer.doprint(e)};")
            names[symbol] = str(symbol)
        return {"setup": setup, "lines": lines, "exprs": [printer.doprint(e) for e in reduced]}

    def variants(self, exprs: Sequence[sp.Expr], relevant: Sequence[str], mode: str
                 ) -> list[dict[str, object]]:
        """One element block per subset of the ``relevant`` buffers present, for each
        layout, with the C condition that selects it.  ``mode``: ``store`` (walk 1
        stores the exponentials into the buffers present), ``read`` (later walks read
        them back), ``grad`` (``exprs`` per buffer: the buffers present are outputs)."""
        subsets = [frozenset(c) for n in range(len(relevant), -1, -1)
                   for c in itertools.combinations(relevant, n)]
        if "g" in relevant:  # a scratch buffer is there only with a gradient
            subsets = [s for s in subsets if "g" in s or not s & set(self.scratch)]
        if mode == "grad":
            subsets = [s for s in subsets if s & set(self.buffers)]
        found = []
        for i, subset in enumerate(subsets):
            entry = {"buffers": sorted(subset)}
            for layout in LAYOUTS:
                present = " && ".join(layout.pointer.format(b=b) if b in subset else
                                      "!" + layout.pointer.format(b=b) for b in relevant)
                if len(subsets) == 1:
                    opening = "{"
                elif i == 0:
                    opening = f"if ({present}) {{"
                elif i == len(subsets) - 1:
                    opening = "} else {"
                else:
                    opening = f"}} else if ({present}) {{"
                if mode == "grad":
                    chosen = [e for b, e in zip(self.buffers, exprs, strict=True) if b in subset]
                    block = self.element_block(chosen, cached=subset, stores=(), layout=layout)
                    block["outputs"] = dict(zip([b for b in self.buffers if b in subset],
                                                block["exprs"], strict=True))
                    if layout is SLAB:  # where the outputs go
                        block["setup"] += [line for b, line in _SLAB_OUTPUTS.items()
                                           if b in subset and line not in block["setup"]]
                elif mode == "store" and layout is ROWS and subset & set(self.scratch):
                    # the kept logits first, a block of the row in a loop of their own,
                    # then the walk reads them back: one loop holding the transform's
                    # function and exp at once spilled registers (softcap's walk 1, one
                    # thread, 32000 classes in L2: 1.98 -> 1.51 ns a class)
                    kept = subset & set(self.scratch)
                    first = self.element_block([], cached=(), stores=kept, layout=layout)
                    block = self.element_block(exprs, cached=kept, stores=subset - kept,
                                               layout=layout)
                    block["prefill"] = first["lines"]
                    if self.small_test is not None:  # the rows whose tanh is its polynomial
                        block["prefill_small"] = self.element_block(
                            [], cached=(), stores=kept, layout=layout,
                            printer_class=SmallTanhPrinter)["lines"]
                        block["small_test"] = self.small_test
                elif mode == "store":
                    block = self.element_block(exprs, cached=(), stores=subset, layout=layout)
                else:
                    block = self.element_block(exprs, cached=subset, stores=(), layout=layout)
                block.setdefault("prefill", [])
                block.setdefault("prefill_small", None)
                block["open"] = opening
                entry[layout.name] = block
            found.append(entry)
        return found

    # -- the walks --------------------------------------------------------------------------
    def maxima(self) -> list[dict[str, object]]:
        """Walk 0: each stream's maximum of the raw logits, then its transform."""
        found = []
        for s in self.streams:
            if s.max in self.supplied:
                continue
            definition = self.defs[s.logit]
            raw = s.raw[K]
            transformed = definition != raw
            if transformed and not _proved_increasing(definition, raw):
                raise ValueError(f"kernel {self.k.name}: the C kernels take the maximum of "
                                 f"the raw logits, which needs {definition} increasing in "
                                 f"{raw} (SymPy does not prove it)")
            name = self.c_name(s.max)
            entry = {"name": name, "raw": _RAW[ELEMENT_NAMES[s.raw]]}
            for layout in LAYOUTS:
                code = None
                if transformed:
                    names = _Names(self, layout)
                    names[raw] = layout.row_float.format(name)
                    code = ElementPrinter(names).doprint(power_form(self.invariants(definition)))
                entry[layout.name] = code
            entry["small"] = self._small_argument_test(definition, raw, name)
            found.append(entry)
        tests = [entry["small"] for entry in found]
        self.small_test = " && ".join(f"{entry['name']}_small" for entry in found
                                      if entry["small"]) \
            if any(tests) and all(t is not None for t in tests) else None
        return found

    def _small_argument_test(self, definition: sp.Expr, raw: sp.Indexed, name: str
                             ) -> str | None:
        """The C test (rows layout) that every ``tanh`` argument of a stream's
        transform lies below ``TANH_SMALL`` on the row, from the row's raw maximum
        ``{name}_f`` and minimum ``{name}_lo``: each argument must be monotonic in the
        raw logit (SymPy proves it), so its extremes are at those two; ``""`` where
        the transform has no ``tanh``, ``None`` where the test cannot be made.
        NaN or inf in the row fail it (the general ``tanh`` then runs)."""
        arguments = sorted({t.args[0] for t in definition.atoms(sp.tanh)}, key=str)
        if not arguments:
            return ""
        u = sp.Symbol("u_raw", real=True)
        clauses = []
        for argument in arguments:
            if {a for a in argument.atoms(sp.Indexed)} != {raw}:
                return None
            if not is_monotonic(argument.xreplace({raw: u}), sp.Reals, u):
                return None
            for end in (f"{name}_lo", f"{name}_f"):
                names = _Names(self, ROWS)
                names[raw] = end
                code = ElementPrinter(names).doprint(power_form(self.invariants(argument)))
                clauses.append(f"fabsf({code}) < {float_literal(TANH_SMALL)}")
        return " && ".join(clauses)

    def logit_gathers(self) -> None:
        """A transformed logit at the target class (``s·tanh(u_y/s)`` in a loss) is
        computed by the element code, in float32, as the walks compute it: the loss
        then agrees with the row's own exponentials (one class: exactly 0, never
        below), instead of differing from them by the rounding of ``x``."""
        self.logit_gather: dict[sp.Expr, sp.Symbol] = {}
        gathered = {v.definition: v.symbol for v in self.k.values("gather")}
        for s in self.streams:
            definition, raw = self.defs[s.logit], s.raw[K]
            if definition == raw or s.raw[Y] not in gathered:
                continue
            name = c_identifier(f"{ELEMENT_NAMES[s.logit]}_y")
            symbol = sp.Symbol(name, real=True)
            self.logit_gather[definition.xreplace({raw: gathered[s.raw[Y]]})] = symbol
            self.c_names[symbol] = name
            codes = []
            for layout in LAYOUTS:
                names = _Names(self, layout)
                names[raw] = layout.gather.format(a=_RAW[ELEMENT_NAMES[s.raw]])[len("(double)"):]
                code = ElementPrinter(names).doprint(power_form(self.invariants(definition)))
                codes.append(f"(double)({code})")
            self.row_inputs[symbol] = (0, *codes)

    def sum_walk(self, level: int) -> dict[str, object]:
        values = self.k.values("sum", level)
        summands = [v.summand for v in values]
        if level == 1:  # stores the exponentials later walks read
            later = [v.summand for v in self.k.values("sum") if v.level > 1]
            later += [g.element for g in (self.k.grad, self.k.grad_teacher) if g is not None]
            wanted, mode = _bases(later), "store"
        else:
            wanted, mode = _bases(summands), "read"
        relevant = [b for b in self.buffers + self.scratch if self.cached_base(b) in wanted]
        return {"level": level, "sums": [self.c_name(v.symbol) for v in values],
                "variants": self.variants(summands, relevant, mode)}

    def gradient(self) -> dict[str, object]:
        outputs, count = [], itertools.count()
        for prefix, g in (("coef", self.k.grad), ("tcoef", self.k.grad_teacher)):
            if g is None:
                continue
            element = sp.S.Zero
            for coefficient, factor in g.terms:
                symbol = sp.Symbol(f"{prefix}_{next(count)}", real=True)
                self.row_code[symbol] = coefficient
                element += symbol * factor
            outputs.append(element)
        targets = {}
        for buffer, g in zip(self.buffers, (self.k.grad, self.k.grad_teacher), strict=False):
            if g is not None and g.target != 0:
                if "y" not in self.k.arrays:
                    raise ValueError(f"kernel {self.k.name}: a target term without a class "
                                     "index")
                symbol = sp.Symbol("target" if buffer == "g" else "ttarget", real=True)
                self.row_code[symbol] = g.target
                self.float_uses.add(symbol)
                targets[buffer] = str(symbol)
        wanted = _bases(outputs)
        relevant = self.buffers + [b for b in self.scratch if self.cached_base(b) in wanted]
        return {"variants": self.variants(outputs, relevant, "grad"), "targets": targets}

    # -- row code between the walks ------------------------------------------------------
    def stages(self) -> list[dict[str, object]]:
        """Per stage (-1: per call, 0: after the maxima, l: after walk l): the reads of
        the row's inputs, the double statements (CSE'd), and the float casts of what
        the walks after it read."""
        statements: dict[int, list[tuple[sp.Symbol, sp.Expr]]] = {}
        for symbol, definition in self.invariants.definitions().items():
            statements.setdefault(self.stage_of(definition), []).append((symbol, definition))
        statements.setdefault(self.levels, []).extend(
            (symbol, e.subs(self.logit_gather)) for symbol, e in self.row_code.items())
        names = {s: self.c_name(s) for s in [*self.c_names, *self.call_inputs,
                                              *self.invariants.definitions(), *self.row_code]}
        found, read = [], set()
        for stage in range(-1, self.levels + 1):
            items = statements.get(stage, [])
            temps, reduced = sp.cse([e for _, e in items],
                                    symbols=sp.numbered_symbols(f"t_{stage + 1}_", real=True),
                                    order="canonical")
            local = {**names, **{s: str(s) for s, _ in temps}}
            printer = RowPrinter(local)
            body = [(str(s), printer.doprint(e)) for s, e in temps]
            body += [(local[s], printer.doprint(e)) for (s, _), e in zip(items, reduced,
                                                                          strict=True)]
            casts = sorted((s for s in self.float_uses if not self.is_max(s)
                            and self.float_stage(s) == stage), key=str)
            uses = set().union(set(casts), *(e.free_symbols for _, e in temps),
                               *(e.free_symbols for e in reduced))
            inputs = sorted((s for s in uses if s in self.row_inputs), key=str)
            entry = {"stage": stage}
            for layout in LAYOUTS:
                reads = [(names[s], self.row_inputs[s][2 if layout is SLAB else 1])
                         for s in inputs if layout is SLAB or s not in read]
                # a sum's double is the walk's result itself (rows)
                reads = [(n, code) for n, code in reads if n != code]
                entry[layout.name] = {
                    "reads": reads, "body": body,
                    "casts": [(self._float(s, layout, stage), names[s]) for s in casts]}
            if stage == -1:
                entry["call_inputs"] = [(names[s], code) for s, code in
                                        sorted(self.call_inputs.items(), key=lambda i: str(i[0]))]
            read |= set(inputs)
            found.append(entry)
        return found

    def _float(self, symbol: sp.Symbol, layout: _Layout, stage: int) -> str:
        name = self.c_name(symbol)
        return f"{name}_f" if stage == -1 else layout.row_float.format(name)

    def row_floats(self) -> list[str]:
        """The per-row floats a slab keeps per position (``name_a[SYMCE_SLAB]``)."""
        return sorted(self.c_name(s) for s in self.float_uses
                      if not self.is_max(s) and self.float_stage(s) >= 0)


def _bases(exprs: Iterable[sp.Expr]) -> set[sp.IndexedBase]:
    return {t.base for e in exprs for t in e.atoms(sp.Indexed)}


def _proved_increasing(definition: sp.Expr, raw: sp.Indexed) -> bool:
    """``definition`` (of ``raw``) increasing on the reals, by SymPy."""
    u = sp.Symbol("u_raw", real=True)
    return bool(is_increasing(definition.xreplace({raw: u}), sp.Reals, u))


def kernel_context(kernel: Kernel) -> dict[str, object]:
    """What ``templates/c/module.c.j2`` renders for one kernel."""
    kp = _KernelPrinter(kernel)
    maxima = kp.maxima()
    kp.logit_gathers()
    walks = [kp.sum_walk(level) for level in range(1, kp.levels + 1)]
    gradient = kp.gradient()
    stages = kp.stages()
    inputs = ["u"] + (["p"] if "p" in kernel.arrays else []) + \
        (["tu"] if "teacher" in kernel.arrays else [])
    params = entry_parameters(kernel)
    return {
        "name": kernel.name,
        "key": kernel.key,
        "function": f"symce_{kernel.name}",
        "parameters": [p.name for p in params],
        "declarations": [p.ctype + ("" if p.ctype.endswith("*") else " ") + p.name
                         for p in params],
        "arrays": [p.name for p in params if p.role == "array"],
        "values": [p.name for p in params if p.role == "value"],
        "losses": [f"loss_{t}" for t, _ in kernel.losses],
        "inputs": inputs,
        "outputs": kp.buffers,
        "scratch": kp.scratch,
        "weighted": "w" in kernel.arrays,
        "indexed": "y" in kernel.arrays,
        "maxima": maxima,
        "walks": walks,
        "gradient": gradient,
        "stages": stages,
        "row_floats": kp.row_floats(),
    }


def _render(contexts: list[dict[str, object]], header: list[str]) -> str:
    from symce.render.env import render

    return render("c/module.c.j2", header=header, kernels=contexts, **_common_context())


def _common_context() -> dict[str, object]:
    return {"slab_positions": SLAB_POSITIONS, "rows_below": ROWS_BELOW, **numeric_context()}


def c_source(kernels: Iterable[Kernel], header: list[str]) -> str:
    """The C source of every kernel of a module, as one file."""
    return _render([kernel_context(k) for k in kernels], header)


def c_header(loss: str, backend: str = "numpy") -> list[str]:
    """The provenance lines of a module's C source (the same for every backend of a
    shipped loss; a loss that says how it is regenerated, a formula's, names the
    command for ``backend``: ``symce generate NAME`` alone would not define it)."""
    from symce.losses import get_loss
    from symce.render.env import header_lines

    how = get_loss(loss).regenerate
    how = how.format(backend=backend) if how else f"symce generate {loss} (or symce build)"
    return header_lines(loss, "c/module.c.j2", how)


@functools.cache
def _kernel_entry(kernel: Kernel) -> dict[str, object]:
    """One kernel's row of ``c_kernels``, its source printed once a process (the
    NumPy and torch modules carry the same kernels)."""
    from symce.render.env import render

    c = kernel_context(kernel)
    return {"key": c["key"], "function": c["function"], "name": c["name"],
            "array_names": c["arrays"], "value_names": c["values"],
            "source": render("c/_kernel.c.j2", k=c, **_common_context())}


def named_kernel_entry(kernel: Kernel, name: str, key: tuple) -> dict[str, object]:
    """A row of ``c_kernels`` for ``kernel`` under its own entry-point ``name`` and table
    ``key`` (a module with more than one C kernel per option setting: the
    vocabulary-parallel module's per-slice forward and gradient)."""
    from symce.render.env import render

    c = {**kernel_context(kernel), "name": name, "function": f"symce_{name}", "key": key}
    return {"key": key, "function": c["function"], "name": name,
            "array_names": c["arrays"], "value_names": c["values"],
            "source": render("c/_kernel.c.j2", k=c, **_common_context())}


def c_context(kernels: Iterable[Kernel], header: list[str], openmp: bool = False
              ) -> dict[str, object]:
    """A module template's compiled part, in pieces that are compiled separately:
    ``c_source`` (what every library starts with: the header, definitions and the
    float32 library), ``c_vector_source`` (the float32 library's array entry
    points, for the tests: with ``c_source`` the library built first, which shows
    the compiler works), the kernel table ``c_kernels`` (key, entry point, array
    and value names in argument order, and the kernel's own ``source``: with
    ``c_source`` one library, built on the kernel's first use), ``c_optional``
    (the arrays that may be ``None``) and ``c_openmp`` (built with OpenMP: the
    torch module's kernels run on its team).  ``c/module.c.j2`` puts the same
    pieces in one file (:func:`c_source`)."""
    from symce.render.env import render

    common = _common_context()
    table = [dict(_kernel_entry(k)) for k in kernels]
    return {"c_source": render("c/_common.c.j2", header=header, **common),
            "c_vector_source": render("c/_vector.c.j2", **common),
            "c_kernels": table, "c_openmp": openmp, "c_optional": list(OPTIONAL_ARRAYS)}


__all__ = ["ElementPrinter", "ExpTimes", "OPTIONAL_ARRAYS", "Parameter", "ROWS_BELOW",
           "RowPrinter", "SLAB_POSITIONS", "c_context", "c_identifier", "c_source",
           "element_code", "entry_parameters", "kernel_context", "named_kernel_entry",
           "power_form"]
