"""What a module's double backward and target gradients print: dense, from checked steps.

A generated module's forward runs the fused kernels; its backward scales
their gradient.  When autograd needs more — a gradient that is itself
differentiable (``create_graph=True``), the gradient with respect to
probability targets or class weights, a second backward of a retained graph
— the module evaluates, on whole ``(N, C, S)`` tensors, expressions printed
here from the derivation:

* each term's gradient with respect to the raw logits (``gradient`` /
  ``transform_chain``) and with respect to the coefficients (``dl_dc``);
* the second-order steps of :func:`symce.engine.steps.second_order_steps`:
  the Hessian-vector product ``hvp``, and the mixed derivatives ``grad_c``,
  ``dl_dc_r``, ``dl_dc_c``;
* the target model's coefficients ``c`` as a dense array and their
  derivatives with respect to ``p`` and ``w`` (SymPy's ``diff`` of the
  model).

Every expression is lowered to the shifted form (``z = x − m``,
``e = e^z``) by :func:`symce.codegen.ir.lower`, which re-proves it, and the
second-order steps are checked (:meth:`~symce.proof.Derivation.check`) before
anything is printed.
"""

from __future__ import annotations

import functools

import sympy as sp

from symce.codegen.ir import STUDENT, TEACHER, J, K, Kernel, derivation_of, lower_at, off_parameters
from symce.codegen.printers import ELEMENT_NAMES, TorchArrayPrinter, array_kernel_context
from symce.engine.steps import V, second_order_steps
from symce.losses import get_loss
from symce.losses.targets import P, W, Y
from symce.proof import Derivation

#: the quantities printed for each term (None where a term has none)
QUANTITIES = ("gradient", "hvp", "grad_c", "dl_dc", "dl_dc_r", "dl_dc_c", "teacher_gradient",
              "teacher_cross", "teacher_dl_r", "teacher_hvp")


@functools.cache
def second_order_derivation(loss_name: str) -> tuple[Derivation, tuple]:
    """The checked second-order steps of ``loss_name`` (symbolic ``n``) and their names."""
    base = derivation_of(loss_name)
    ctx = base.context
    steps, found = second_order_steps(ctx, get_loss(loss_name), {s.name: s for s in base.steps},
                                      base.terms)
    derivation = Derivation(loss=base.loss, description=base.description, n=None,
                            steps=tuple(steps), context=ctx,
                            result_step=found[0].hvp, terms=tuple(found))
    return derivation.check(), tuple(found)


class DensePrinter(TorchArrayPrinter):
    """The module printer, plus the whole-array names of the dense path: the
    direction ``v``, the coefficients ``c``, the one-hot target ``onehot`` and
    the gathered weight ``w_y``."""

    def __init__(self, names, coefficients: sp.IndexedBase, teacher: sp.IndexedBase):
        super().__init__(names)
        self._arrays = {V: "v", coefficients: "c", teacher: ELEMENT_NAMES[TEACHER.raw]}

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        (index,) = expr.indices
        if expr.base == W and index == Y:
            return "w_y"
        if expr.base in self._arrays and index in (J, K):
            return self._arrays[expr.base]
        return super()._print_Indexed(expr)

    def _print_KroneckerDelta(self, expr) -> str:
        if set(expr.args) == {K, Y}:
            return "onehot"
        return super()._print_KroneckerDelta(expr)

    def _print_Sum(self, expr: sp.Sum) -> str:
        if expr.function.has(K):  # the whole-array reading of a sum needs its body in J alone
            raise ValueError(f"a class sum whose body has the element index: {expr}")
        return super()._print_Sum(expr)


def _variant_name(transformed: bool, fixed: tuple, loss) -> str:
    names = {p.symbol: p.name for p in loss.params}
    return "_".join(["u" if transformed else "x"] + [f"no_{names[s]}" for s, _ in fixed])


def second_order_context(loss_name: str, ks: tuple[Kernel, ...]) -> dict[str, object]:
    """The template context of the dense path: one entry per variant of the kernels."""
    loss = get_loss(loss_name)
    base = derivation_of(loss_name)
    second, found = second_order_derivation(loss_name)
    ctx = base.context
    by_name = {s.name: s for s in (*base.steps, *second.steps)}
    names = {**ks[0].names}
    printer = DensePrinter(names, ctx._c, ctx._t)

    def code(expr, fixed):
        return None if expr is None else printer.doprint(lower_at(expr, base, fixed))

    def step(step_name):
        return by_name[step_name].rhs if step_name is not None else None

    variants = {}
    kernel_variant = {}
    for kernel in ks:  # a variant: the transform on or off, the parameters fixed at off
        transformed, fixed = kernel.transformed, off_parameters(loss, dict(kernel.flags))
        name = _variant_name(transformed, fixed, loss)
        kernel_variant[kernel.key] = name
        if name in variants:
            continue
        printed = array_kernel_context(kernel, "torch")
        var = "u" if transformed else "x"
        terms = []
        for info in base.terms:
            so = next(f for f in found if f.term == info.term and f.var == var)
            quantities = {
                "gradient": step(so.gradient),
                "hvp": step(so.hvp),
                "grad_c": step(so.grad_c),
                "dl_dc": step(info.dl_dc) if not ctx.teacher else None,
                "dl_dc_r": step(so.dl_dc_r),
                "dl_dc_c": step(so.dl_dc_c),
                "teacher_gradient": step(info.teacher_gradient),
                "teacher_cross": step(so.teacher_cross),
                "teacher_dl_r": step(so.teacher_dl_r),
                "teacher_hvp": step(so.teacher_hvp),
            }
            terms.append({q: code(e, fixed) for q, e in quantities.items()})
        variants[name] = {
            "elements": printed["elements"],
            "maxima": printed["maxima"],
            "teacher": printed["teacher"],
            "terms": terms,
        }
    used = sorted({p.name for p in loss.params} | {"label_smoothing"})
    return {
        "dense_variants": variants,
        "dense_kernel_variant": kernel_variant,
        "dense_scalars": used,
        "dense_coefficients": _coefficient_table(loss, printer),
        "dense_quantities": QUANTITIES,
        "dense_teacher": ctx.teacher,
    }


def _coefficient_table(loss, printer) -> list[dict[str, object]]:
    """Per (kind, weighted, smoothed): ``c``, ``∂c/∂p``, ``∂c/∂w`` and ``∂²c/∂p∂w`` printed
    (None where the model has no coefficients, a teacher's softmax)."""
    model = loss.targets
    table = []
    for kind in model.kinds:
        for weighted in (False, True):
            for smoothed in (False, True):
                coefficients = model.coefficients(kind, weighted, smoothed)
                if coefficients is None:
                    continue
                c = coefficients(K)
                table.append({
                    "key": (kind, weighted, smoothed),
                    "c": printer.doprint(c),
                    "dc_dp": printer.doprint(sp.diff(c, P[K])) if c.has(P) else None,
                    "dc_dw": printer.doprint(sp.diff(c, W[K])) if c.has(W[K]) else None,
                    "d2c": printer.doprint(sp.diff(c, P[K], W[K]))
                    if c.has(P) and c.has(W[K]) else None,
                })
    return table


#: what the dense path names the elements and maxima it forms (the kernels' names)
DENSE_ARRAYS = (ELEMENT_NAMES[STUDENT.logit], ELEMENT_NAMES[STUDENT.shifted],
                ELEMENT_NAMES[STUDENT.exp], str(STUDENT.max), ELEMENT_NAMES[TEACHER.logit],
                ELEMENT_NAMES[TEACHER.shifted], ELEMENT_NAMES[TEACHER.exp], str(TEACHER.max))

__all__ = ["DENSE_ARRAYS", "QUANTITIES", "DensePrinter", "second_order_context",
           "second_order_derivation"]
