"""``cross_entropy_vocab_parallel_torch.py``: the classes split across the ranks of a group.

Each rank holds a contiguous slice of the classes.  The module runs, per
rank, the cross-entropy kernels of :mod:`symce.codegen.ir` on its slice and
combines the per-row values across the ranks as the checked partition
derivation (:mod:`symce.engine.partition`) says:

* a row's maximum is the maximum of the slices' maxima (one ``MAX``
  all-reduce; the ``lse`` step holds for any shift, the maximum keeps every
  exponent ≤ 0);
* every class sum of the kernel (``Σe``, ``Σ w z``, ``Σ p w z``, the weights'
  total, …) is the sum of the slices' partial sums (``class_sums``), and a
  gather at the target class is the class sum ``Σ_j δ_jy u_j``, which only the
  slice owning ``y`` contributes to — all of them in one ``SUM`` all-reduce
  (with the slices' sizes, whose sum is the global class count ``n`` that
  label smoothing divides by, and the count of slices owning each row's
  target, which decides an out-of-range target on every rank alike);
* the gradient of a slice is the kernel's gradient printed on the slice from
  the combined per-row values (``slice_gradient``): no communication.

On the CPU (float32 work) each slice runs two compiled C kernels printed by
:mod:`symce.codegen.c` from kernel descriptions made here out of the
loss's own (:func:`partials_kernel`, :func:`gradient_kernel`): the forward one
walks the slice once for its maximum ``m_r`` and its class sums shifted by
``m_r``, which small per-row code moves to the combined maximum ``M``
(``rescale_exp``, ``rescale_linear``; :func:`rescaled_sums`, each rewrite
re-proved by SymPy) between the ``MAX`` and the ``SUM`` all-reduce; the
gradient one reads the combined per-row values and writes the slice's
gradient in one walk.  The same two kernel descriptions are printed as Triton
kernels by :mod:`symce.codegen.triton` (:func:`_triton`: the forward one the
single-device online walk, the gradient one its gradient walk alone), for CUDA
tensors (and CPU ones in Triton's interpreter), with the same per-row code and
collectives around them.  Elsewhere (float64 on the CPU, another device without
triton, an empty slice, a row of no finite logit, or no C compiler) the printed
torch code runs.

A kernel whose sums need more than one walk (a sum over ``q``) would need a
collective per walk; the generator refuses it, as a gradient term whose
coefficient reads an element or whose factor reads a per-row value (neither
would be local).  Every expression is printed by the torch printer from the
kernel description; the template holds the structure.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from symce.codegen.c import c_context, c_header, c_identifier, named_kernel_entry
from symce.codegen.ir import (
    STUDENT,
    Gradient,
    J,
    K,
    Kernel,
    RowValue,
    kernels,
    linear_sums,
    scale_symbol,
)
from symce.codegen.module import denominators, module_context
from symce.codegen.printers import array_code, array_kernel_context, kernel_names
from symce.codegen.products import register_product
from symce.engine.head import CLASSES as HEAD_CLASSES
from symce.engine.head import head_derivation
from symce.errors import ProofError
from symce.losses import get_loss
from symce.losses.targets import MASK, N_CLASSES, W, Y
from symce.render.env import header_lines, render

FILE_NAME = "cross_entropy_vocab_parallel_torch.py"
LOSS = "cross_entropy"
TEMPLATE = "torch/vocab_parallel.py.j2"

#: how a row value of each kind combines across the slices, and the step that says so
COMBINE = {"max": ("MAX", "max_of_maxima"), "sum": ("SUM", "class_sums"),
           "constant": ("SUM", "class_sums"), "gather": ("SUM", "class_sums")}


def _check_local(kernel: Kernel) -> None:
    """Refuse a kernel that the two collectives and a local gradient cannot serve."""
    if kernel.levels > 1:
        raise ProofError(f"kernel {kernel.name}: sums of {kernel.levels} walks need a "
                         "collective each; the vocabulary-parallel module has one")
    rows = {v.symbol for v in kernel.row_values}
    for coefficient, factor in kernel.grad.terms:
        elements = [t for t in coefficient.atoms(sp.Indexed) if K in t.indices]
        if elements or factor.free_symbols & rows:
            raise ProofError(f"kernel {kernel.name}: the gradient term {coefficient}·{factor} "
                             "does not split into per-row scalars times slice elements")
    if kernel.grad.target.atoms(sp.Indexed):
        raise ProofError(f"kernel {kernel.name}: the target term reads an element array")
    for v in kernel.row_values:
        if v.kind not in COMBINE:
            raise ProofError(f"kernel {kernel.name}: no combination rule for {v.kind} values")
        if v.kind == "gather" and v.definition.indices != (Y,):
            raise ProofError(f"kernel {kernel.name}: a gather at {v.definition.indices}")


#: a slice's own maximum, and its class count (the forward kernel's shift and its ``Σ 1``)
M_LOCAL = sp.Symbol("m_r", real=True)
N_LOCAL = sp.Symbol("n_r", integer=True, positive=True)
#: 1 where this slice holds the row's target class, else 0 (the gradient kernel's target term)
OWNED = sp.Symbol("owned", real=True)


def partials_kernel(kernel: Kernel) -> Kernel:
    """The per-slice forward kernel: ``kernel``'s walk over the slice, its outputs the
    row's maximum, gathers and class sums (each a "loss" row of the C kernel), shifted
    by the slice's own maximum; no gradient, no row mask (the combined values mask)."""
    values = tuple(v for v in kernel.row_values if v.kind in ("max", "gather", "sum"))
    used = set().union(*(d.free_symbols for _, d in kernel.elements))
    by_name = {name: symbol for symbol, name in kernel.names.items()}
    return dataclasses.replace(
        kernel, row_values=values, losses=tuple((str(v.symbol), v.symbol) for v in values),
        grad=Gradient(sp.S.Zero, (), sp.S.Zero), grad_teacher=None,
        scalars=tuple(n for n in kernel.scalars if by_name[n] in used),
        arrays=tuple(a for a in kernel.arrays if a != "valid"), masked=False, scales=())


def gradient_kernel(kernel: Kernel) -> Kernel:
    """The per-slice gradient kernel: ``kernel``'s gradient with every per-row value it
    reads supplied by the caller (``input`` row values: the combined maximum, sums and
    gathers, each term's scale, ``owned``), the global class count a value, and the
    target term only where the slice owns the target (``slice_gradient``)."""
    g = kernel.grad
    used = g.element.free_symbols | g.target.free_symbols
    inputs = [RowValue(v.symbol, "input", v.symbol, 0) for v in kernel.row_values
              if v.kind == "max" or (v.kind in ("sum", "gather") and v.symbol in used)]
    inputs += [RowValue(scale_symbol(t), "input", scale_symbol(t), 0) for t in kernel.scales
               if scale_symbol(t) in used]
    target = OWNED * g.target if g.target != 0 else g.target
    if target != 0:
        inputs.append(RowValue(OWNED, "input", OWNED, 0))
    constants = tuple(v for v in kernel.values("constant") if v.symbol in used)
    by_name = {name: symbol for symbol, name in kernel.names.items()}
    scalars = tuple(n for n in kernel.scalars if by_name[n] in used)
    if N_CLASSES in used:
        scalars += (kernel.names[N_CLASSES],)
    for v in inputs:
        if c_identifier(str(v.symbol)) != str(v.symbol):
            raise ProofError(f"kernel {kernel.name}: the row value {v.symbol} has no C name")
    return dataclasses.replace(
        kernel, row_values=(*constants, *inputs), losses=(),
        grad=Gradient(g.element, g.terms, target), grad_teacher=None, scalars=scalars,
        scales=())


def rescaled_sums(kernel: Kernel) -> list[tuple[str, sp.Expr]]:
    """Each class sum of the slice that the shift changes, from the slice's sums shifted
    by its own maximum ``m_r`` to the combined ``M`` (``rescale_exp``, ``rescale_linear``:
    ``z_j → z_j + (m_r − M)``, ``e_j → e^{m_r − M} e_j`` in the summand, the sums made
    linear, each resulting sum one of the slice's values); every rewrite is re-proved
    by SymPy (``ProofError`` otherwise)."""
    from symce.engine.partition import PartitionContext

    s = STUDENT
    shift = M_LOCAL - s.max
    known = {v.definition: v.symbol for v in kernel.row_values if v.kind in ("sum", "constant")}
    decide = PartitionContext(N_CLASSES, None, None)
    found = []
    for v in kernel.values("sum"):
        summand = v.definition.function
        if not summand.has(s.shifted, s.exp):
            continue
        moved = summand.replace(lambda t: isinstance(t, sp.Indexed) and t.base == s.shifted,
                                lambda t: t + shift)
        moved = moved.replace(lambda t: isinstance(t, sp.Indexed) and t.base == s.exp,
                              lambda t: sp.exp(shift) * t)
        expr = linear_sums(sp.Sum(moved, (J, 1, N_CLASSES)))
        left = [t for t in expr.atoms(sp.Sum) if t not in known]
        if left:
            raise ProofError(f"kernel {kernel.name}: moving {v.symbol} to the combined shift "
                             f"needs {left}, which the slice does not sum")
        expr = expr.xreplace(known).xreplace({N_CLASSES: N_LOCAL})
        # (m_r − M)·Σa: no two large products that cancel in float32
        expr = sp.collect(expr, sorted(expr.free_symbols - {M_LOCAL, s.max}, key=str))
        _check_rescaled(v, expr, known, decide)
        found.append((str(v.symbol), expr))
    return found


def _check_rescaled(value: RowValue, expr: sp.Expr, known: dict, decide) -> None:
    """``Σ f(x_j − M)`` equals ``expr`` with its sums written out at the shift ``m_r``."""
    s = STUDENT

    def at(shift, e):
        e = e.replace(lambda t: isinstance(t, sp.Indexed) and t.base == s.shifted,
                      lambda t: s.logit[t.indices[0]] - shift)
        return e.replace(lambda t: isinstance(t, sp.Indexed) and t.base == s.exp,
                         lambda t: sp.exp(s.logit[t.indices[0]] - shift))

    lhs = at(s.max, value.definition)
    rhs = expr.xreplace({N_LOCAL: N_CLASSES}).xreplace(
        {symbol: at(M_LOCAL, d) for d, symbol in known.items()})
    if not decide.equal(linear_sums(lhs), linear_sums(rhs), ()):
        raise ProofError(f"moving {value.symbol} to the combined shift as {expr} is not proved")


def _compiled(kernel: Kernel) -> dict[str, object]:
    """The kernel's two C entry points and what the template needs to call them."""
    partials, gradient = partials_kernel(kernel), gradient_kernel(kernel)
    names = kernel_names(kernel)
    forward = named_kernel_entry(partials, f"vp_forward_{kernel.name}", ("forward", *kernel.key))
    backward = named_kernel_entry(gradient, f"vp_gradient_{kernel.name}",
                                  ("gradient", *kernel.key))
    return {
        "entries": [forward, backward],
        "forward_key": forward["key"], "gradient_key": backward["key"],
        "outputs": [name for name, _ in partials.losses],
        "local_sums": [str(v.symbol) for v in kernel.values("sum")],
        "rescaled": [(name, array_code(e, "torch", {**names, M_LOCAL: "m_r", N_LOCAL: "n_r"}))
                     for name, e in rescaled_sums(kernel)],
        "gradient_inputs": [str(v.symbol) for v in gradient.values("input")],
    }


def _triton(kernel: Kernel, shift_sum) -> dict[str, object]:
    """The kernel's two Triton functions, printed by :mod:`symce.codegen.triton` from
    the same kernel descriptions as the C ones: the forward one is the single-device
    online walk (the slice's maximum ``m_r`` and its class sums at it, the gathers at
    the clamped local target), the gradient one the gradient walk alone, every per-row
    value it reads loaded from the caller's arrays (``classes``: the global count)."""
    from symce.codegen.triton import _Context

    partials, gradient = partials_kernel(kernel), gradient_kernel(kernel)
    if partials.levels > 1 or len(partials.streams) != 1:
        raise ProofError(f"kernel {kernel.name}: the Triton slice kernels take one stream "
                         "and one walk")
    forward = _Context(partials, shift_sum).context()
    (walk,) = forward["walks"]
    backward = _Context(gradient, shift_sum)
    g = gradient.grad
    factors = [f for _, f in g.terms]
    # the gradient kernel's class count is the group's (a value); its walk is the slice's
    values = [n for n in gradient.scalars if n != kernel.names[N_CLASSES]]
    values += [str(v.symbol) for v in gradient.values("constant")]
    rows = [str(v.symbol) for v in gradient.values("input")]
    if "valid" in gradient.arrays:
        rows.append("valid")
    return {
        "forward": {**forward, "walk": walk,
                    "loads": [name for name, per_class in walk["loads"] if not per_class],
                    "class_loads": [name for name, per_class in walk["loads"] if per_class]},
        "gradient": {"grad": backward.gradient(g, "coef"),
                     **backward.elements(factors, online=False),
                     "values": values, "classes": N_CLASSES in g.element.free_symbols
                     | g.target.free_symbols | set().union(
                         *(c.free_symbols for c, _ in g.terms)),
                     "rows": rows, "target": g.target != 0},
    }


def _kernel(kernel: Kernel, shift_sum=None) -> dict[str, object]:
    _check_local(kernel)
    ctx = array_kernel_context(kernel, "torch")
    # the exponential as the IR defines it: torch's exp is one pass over the slice, the
    # exp2(z·log2 e) form (for the compiled kernels' machine exp2) two in array code
    names = kernel_names(kernel)
    for symbol, definition in kernel.elements:
        if symbol.base == STUDENT.exp:
            ctx["elements"]["e"] = array_code(definition, "torch", names)
    sums = [*ctx["constants"], *(ctx["levels"][0] if ctx["levels"] else [])]
    combined = [name for name, _ in sums] + [name for name, _ in ctx["gathers"]]
    used = set().union(*(c.free_symbols | f.free_symbols for c, f in kernel.grad.terms),
                       kernel.grad.target.free_symbols)
    row_values = [str(v.symbol) for v in kernel.row_values if v.symbol in used]
    return {**ctx, "partials": sums, "combined": combined,
            "gradient_reads": row_values + (["n_classes"] if N_CLASSES in used else []),
            "gradient_elements": [a for a in ("x", "e") if a in ctx["uses"]],
            "c": _compiled(kernel),
            "triton": _triton(kernel, shift_sum) if shift_sum is not None else None}


def vocab_parallel_source() -> str:
    """The module's source (checks the partition derivation first)."""
    from symce.engine.partition import check_partition

    symbolic, concrete = check_partition()
    # the fused head's gradients (dL/dh = W^T g, dL/dW = g h^T, dL/db = g) are proved
    # before anything is printed from them
    head_derivation()
    head_derivation(HEAD_CLASSES)
    ks = kernels(LOSS)
    base = module_context(LOSS)
    header = header_lines(LOSS, TEMPLATE, "symce build")
    scalars = sorted({s for k in ks for s in k.scalars})
    from symce.codegen.ir import derivation_of

    shift_sum = derivation_of(LOSS).step("shift_sum")  # the online rescale rests on it
    contexts = [_kernel(k, shift_sum) for k in ks]
    compiled = c_context((), c_header(LOSS, "torch"), openmp=True)
    compiled["c_kernels"] = [entry for c in contexts for entry in c["c"]["entries"]]
    return render(
        TEMPLATE, header=header, **base, **compiled,
        kernels=contexts,
        scalars=scalars,
        scales=[f"scale_{t}" for t in ks[0].scales],
        denominators=denominators(get_loss(LOSS), {MASK: "valid", W[Y]: "w_y",
                                                N_CLASSES: "n_classes"}),
        steps=[s.name for s in (*symbolic.steps, *concrete.steps)],
        combine=sorted({op for op, _ in COMBINE.values()}),
        raw=str(STUDENT.raw),
    )


register_product(FILE_NAME, LOSS, vocab_parallel_source)

__all__ = ["COMBINE", "FILE_NAME", "M_LOCAL", "N_LOCAL", "OWNED", "gradient_kernel",
           "partials_kernel", "rescaled_sums", "vocab_parallel_source"]
