"""An in-place schedule of one kernel's block: statement order, storage, gradient assembly.

The array backends compute a block of rows with whole-array operations.  A
naive rendering of a kernel allocates a new block-sized array for every
element (``x``, ``z``, ``e`` …) and every product in the gradient; the
torch module instead writes each element into a *slot* (a scratch block or
the gradient block itself) and, where the array it is computed from is not
read again, in place: ``z = x − m`` overwrites the copied logits, ``e = exp z``
overwrites ``z``, and the gradient is formed from ``e`` where ``e`` lies.  For
cross-entropy that is the old module's one-buffer design; for any other
loss it is whatever the kernel's reads allow.  Nothing here is mathematics:
every expression is the kernel's (:mod:`symce.codegen.ir`), printed by the
backend's printer; this module decides only *order and storage*.

:func:`schedule` gives, for one kernel:

* ``steps``: gathers first (they read the raw data before anything is
  overwritten), then per stream its logits, maximum, shifted logits and
  exponentials, each class sum as soon as what it reads exists (so a sum of
  ``z`` is taken before ``e`` overwrites ``z``);
* ``slots``: where each element lives (``buf`` / ``tbuf``: the gradient
  blocks of the input and the teacher; else a scratch block by name);
* ``gradients``: for each gradient, in the order they are finished, the
  operations that assemble it: the term whose factor is the element lying
  in the gradient block scales it in place; terms that read an element in a
  gradient block finished before (or at) theirs are accumulated in a scratch
  block first; the rest are added after; the target term last.

An element definition that is a chain of one array through unary
functions and operations with per-row values (``s·tanh(u/s)``, ``x − m``,
``2^(z·log₂e)``) is printed as in-place operations from :data:`TORCH_OPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from symce.codegen.ir import STUDENT, TEACHER, K, Kernel
from symce.codegen.printers import ELEMENT_NAMES, exp2_form

#: the operations an element chain is printed with: SymPy node → torch function
#: (``torch.<name>(a, …, out=slot)``, then ``slot.<name>_(…)`` in place)
TORCH_OPS: dict[type, str] = {
    sp.Mul: "mul",
    sp.Add: "add",
    sp.Pow: "pow",
    sp.tanh: "tanh",
    sp.exp: "exp",
    sp.log: "log",
}
#: ``2**a`` (the IR's exp2 rewrite of ``exp``)
TORCH_EXP2 = "exp2"
#: the largest integer power of an array a product is expanded into factors for
#: (``x**2`` → ``x, x``: multiplied in place instead of a new array)
MAX_REPEAT = 4
#: arrays of one value per class: never the first factor of a product formed in
#: a block-sized scratch (the product would have their shape)
PER_CLASS = ("w",)


@dataclass(frozen=True)
class Step:
    """One statement of a block.

    ``kind``: ``gather`` (``name`` = ``source`` at the target class),
    ``max`` (``name`` = the class-axis maximum of ``source``), ``element``
    (``name`` computed from ``source`` into ``slot``: ``ops`` in place, or
    ``code`` evaluated and copied in when ``ops`` is None; ``ops == ()`` with
    no slot: ``name`` is ``source``), ``sum`` (``name = code``).
    """

    kind: str
    name: str
    source: str | None = None
    slot: str | None = None
    ops: tuple[tuple[str, str | None], ...] | None = None
    code: str | None = None


@dataclass(frozen=True)
class Term:
    """``coefficient · Π factors`` (``factors``: printed arrays; empty: the coefficient alone)."""

    coefficient: str
    factors: tuple[str, ...]


@dataclass(frozen=True)
class GradientPlan:
    """How one gradient block is assembled.

    ``flag``: the block parameter saying whether it is wanted; ``buffer``:
    ``buf`` or ``tbuf``; ``early``: terms accumulated into ``accumulator``
    before any gradient block is finished; ``scale``: the coefficient of the
    element already lying in the block (None: the block holds no element);
    ``late``: terms added after; ``target``: added at the target class.
    """

    flag: str
    buffer: str
    accumulator: str
    early: tuple[Term, ...]
    scale: str | None
    late: tuple[Term, ...]
    target: str | None


@dataclass(frozen=True)
class Schedule:
    steps: tuple[Step, ...]
    #: scratch slots the block takes (besides ``buf`` / ``tbuf``)
    scratch: tuple[str, ...]
    #: where a copy of the raw logits (and the teacher's) is made when needed
    input_slots: dict[str, str]
    gradients: tuple[GradientPlan, ...]
    #: the block forms products of several arrays in the scratch ``tmp``
    needs_tmp: bool


def _name(t: sp.Indexed) -> str:
    return ELEMENT_NAMES[t.base]


def array_reads(expr: sp.Expr) -> set[str]:
    """The element arrays ``expr`` reads (at the element ``K`` or a sum's dummy)."""
    return {_name(t) for t in expr.atoms(sp.Indexed) if t.base in ELEMENT_NAMES}


def chain_ops(expr: sp.Expr, leaf: sp.Expr,
              code: Callable[[sp.Expr], str]) -> tuple[tuple[str, str | None], ...] | None:
    """``expr`` as ``leaf`` put through operations one after another, or None.

    Each operation is ``(torch function, printed operand or None)``: a product
    or sum with terms free of ``leaf``, a constant power, a unary function, or
    ``2**(…)`` (exp2).
    """
    if expr == leaf:
        return ()
    if isinstance(expr, (sp.Mul, sp.Add)):
        inside = [a for a in expr.args if a.has(leaf)]
        if len(inside) != 1:
            return None
        ops = chain_ops(inside[0], leaf, code)
        rest = expr.func(*[a for a in expr.args if not a.has(leaf)])
        return None if ops is None else (*ops, (TORCH_OPS[type(expr)], code(rest)))
    if isinstance(expr, sp.Pow):
        if expr.base == 2 and expr.exp.has(leaf):
            ops = chain_ops(expr.exp, leaf, code)
            return None if ops is None else (*ops, (TORCH_EXP2, None))
        if expr.base.has(leaf) and not expr.exp.has(leaf):
            ops = chain_ops(expr.base, leaf, code)
            return None if ops is None else (*ops, (TORCH_OPS[sp.Pow], code(expr.exp)))
        return None
    if type(expr) in TORCH_OPS and len(expr.args) == 1:
        ops = chain_ops(expr.args[0], leaf, code)
        return None if ops is None else (*ops, (TORCH_OPS[type(expr)], None))
    return None


def factor_arrays(factor: sp.Expr, code: Callable[[sp.Expr], str]) -> tuple[str, ...]:
    """An element factor as the arrays to multiply (``e·x²`` → ``e, x, x``), or its code."""
    if factor == 1:
        return ()
    names = []
    for f in sp.Mul.make_args(factor):
        base, power = f.as_base_exp()
        if not (isinstance(base, sp.Indexed) and base.base in ELEMENT_NAMES
                and power.is_Integer and 1 <= power <= MAX_REPEAT):
            return (code(factor),)
        names += [_name(base)] * int(power)
    names.sort(key=lambda n: n in PER_CLASS)  # a block-shaped array first
    if all(n in PER_CLASS for n in names) and len(names) > 1:
        return (code(factor),)
    return tuple(names)


def schedule(kernel: Kernel, code: Callable[[sp.Expr], str]) -> Schedule:
    """The in-place schedule of ``kernel``'s block (``code`` prints an expression)."""
    gathers = kernel.values("gather")
    maxima = {v.definition.base: v for v in kernel.values("max")}
    sums = list(kernel.values("sum"))
    row_symbols = {v.symbol for v in kernel.row_values}

    alias: dict[str, str] = {}  # an element that *is* another array (x = u)
    steps: list[Step] = []
    reads: list[set[str]] = []  # per step: arrays read (aliases resolved)
    available: set = set()

    def resolve(names):
        return {alias.get(n, n) for n in names}

    def emit(step, read):
        steps.append(step)
        reads.append(resolve(read))
        available.add(step.name)

    for v in gathers:
        emit(Step("gather", str(v.symbol), source=_name(v.definition)),
             {_name(v.definition)})
    available.update(["u", "tu", "p", "w"])
    available.update(str(v.symbol) for v in kernel.values("constant"))

    def ready_sums():
        for v in list(sums):
            needs = array_reads(v.definition) | {str(s) for s in
                                                  v.definition.free_symbols & row_symbols}
            if needs <= available:
                sums.remove(v)
                emit(Step("sum", str(v.symbol), code=code(v.definition)),
                     array_reads(v.definition))
                ready_sums()
                return

    element_defs = dict(kernel.elements)
    for stream in kernel.streams:
        for base in (stream.logit, stream.shifted, stream.exp):
            symbol = base[K]
            definition = element_defs[symbol]
            if base is stream.exp:
                definition = exp2_form(definition)
            name = _name(symbol)
            (source,) = array_reads(definition)
            ops = chain_ops(definition, next(t for t in definition.atoms(sp.Indexed)
                                             if _name(t) == source), code)
            if ops == ():
                alias[name] = alias.get(source, source)
                emit(Step("element", name, source=source, ops=()), {source})
            else:
                emit(Step("element", name, source=source, ops=ops,
                          code=None if ops is not None else code(definition)), {source})
            if base is stream.logit:
                m = maxima[stream.logit]
                emit(Step("max", str(m.symbol), source=name), {name})
            ready_sums()
    if sums:
        raise ValueError(f"{kernel.name}: class sums that no walk can compute: {sums}")

    # everything the losses and gradients read is read after the last step
    end = len(steps)
    final_reads = set()
    for _, e in kernel.losses:
        final_reads |= array_reads(e)
    for g in (kernel.grad, kernel.grad_teacher):
        if g is not None:
            final_reads |= array_reads(g.element) | array_reads(g.target)
    last: dict[str, int] = {}
    for i, read in enumerate(reads):
        for n in read:
            last[n] = i
    for n in resolve(final_reads):
        last[n] = end

    # buffer preferences: an exponential the gradient is a multiple of lies in
    # the gradient block, which the gradient then overwrites in place
    gradients = [("need_grad", "buf", "acc", kernel.grad, STUDENT)]
    if kernel.grad_teacher is not None:
        gradients.append(("need_grad_teacher", "tbuf", "tacc", kernel.grad_teacher, TEACHER))
    prefer = {}
    for _, buffer, _, g, stream in gradients:
        if any(f == stream.exp[K] for _, f in g.terms):
            prefer[_name(stream.exp[K])] = buffer

    # slots: an element takes the slot of the array it is computed from when
    # that array is not read after it (in place); a group of such elements
    # lies in its preferred gradient block, else in a scratch block
    group = {"u": "u", "tu": "tu"}
    members: dict[str, list[str]] = {"u": ["u"], "tu": ["tu"]}
    for i, step in enumerate(steps):
        if step.kind != "element" or step.ops == ():
            continue
        source = alias.get(step.source, step.source)
        if last.get(source, -1) <= i and source in group:
            group[step.name] = group[source]
            members[group[source]].append(step.name)
        else:
            group[step.name] = step.name
            members[step.name] = [step.name]
    slot_of_group = {}
    for root, names in members.items():
        buffers = {prefer[n] for n in names if n in prefer}
        slot_of_group[root] = buffers.pop() if buffers else root
    slot = {n: slot_of_group[g] for n, g in group.items()}
    steps = [Step(s.kind, s.name, s.source, slot[s.name], s.ops, s.code)
             if s.kind == "element" and s.ops != () else s for s in steps]

    held = {slot[n]: n for n in slot if slot[n] in ("buf", "tbuf") and last.get(n, -1) == end}
    plans = []
    tmp = False
    finished: list[str] = []
    for flag, buffer, accumulator, g, _ in gradients:
        finished.append(buffer)
        # elements whose block is finished before or with this one: read them first
        overwritten = {held[b] for b in finished if b in held}
        element = held.get(buffer)
        scale, early, late = None, [], []
        for coefficient, factor in g.terms:
            term = Term(code(coefficient), factor_arrays(factor, code))
            tmp |= len(term.factors) > 1
            if element is not None and scale is None and factor_arrays(factor, code) == (element,):
                scale = term.coefficient
            elif resolve(array_reads(factor)) & overwritten:
                early.append(term)
            else:
                late.append(term)
        target = code(g.target) if g.target != 0 else None
        plans.append(GradientPlan(flag, buffer, accumulator, tuple(early), scale, tuple(late),
                                  target))
    used_slots = {s.slot for s in steps if s.slot} | {slot["u"]}
    if len(kernel.streams) > 1:
        used_slots.add(slot["tu"])
    scratch = tuple(sorted(used_slots - {"buf", "tbuf"}))
    inputs = {"u": slot["u"]}
    if len(kernel.streams) > 1:
        inputs["tu"] = slot["tu"]
    return Schedule(tuple(steps), scratch, inputs, tuple(plans), tmp)


__all__ = ["GradientPlan", "Schedule", "Step", "TORCH_OPS", "Term", "array_reads",
           "chain_ops", "factor_arrays", "schedule"]
