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

A kernel whose sums need more than one walk (a sum over ``q``) would need a
collective per walk; the generator refuses it, as a gradient term whose
coefficient reads an element or whose factor reads a per-row value (neither
would be local).  Every expression is printed by the torch printer from the
kernel description; the template holds the structure.
"""

from __future__ import annotations

import sympy as sp

from symce.codegen.ir import STUDENT, K, Kernel, kernels
from symce.codegen.module import denominators, module_context
from symce.codegen.printers import array_code, array_kernel_context, kernel_names
from symce.codegen.products import register_product
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


def _kernel(kernel: Kernel) -> dict[str, object]:
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
            "gradient_elements": [a for a in ("x", "e") if a in ctx["uses"]]}


def vocab_parallel_source() -> str:
    """The module's source (checks the partition derivation first)."""
    from symce.engine.partition import check_partition

    symbolic, concrete = check_partition()
    ks = kernels(LOSS)
    base = module_context(LOSS)
    header = header_lines(LOSS, TEMPLATE, "symce build")
    scalars = sorted({s for k in ks for s in k.scalars})
    return render(
        TEMPLATE, header=header, **base,
        kernels=[_kernel(k) for k in ks],
        scalars=scalars,
        scales=[f"scale_{t}" for t in ks[0].scales],
        denominators=denominators(get_loss(LOSS), {MASK: "valid", W[Y]: "w_y",
                                                N_CLASSES: "n_classes"}),
        steps=[s.name for s in (*symbolic.steps, *concrete.steps)],
        combine=sorted({op for op, _ in COMBINE.values()}),
        raw=str(STUDENT.raw),
    )


register_product(FILE_NAME, LOSS, vocab_parallel_source)

__all__ = ["COMBINE", "FILE_NAME", "vocab_parallel_source"]
