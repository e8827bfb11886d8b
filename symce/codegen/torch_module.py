"""The torch module's template context: kernels printed for torch, with their block schedules.

Beyond :func:`symce.codegen.module.module_context` (signature, checks,
flags), the template ``templates/torch/module.py.j2`` gets each kernel's
printed expressions (:func:`~symce.codegen.printers.array_kernel_context`)
and its in-place schedule (:func:`~symce.codegen.blocks.schedule`), the
block functions' common parameters, the mean denominators, and the split of
the module's arguments between an ``nn.Module``'s constructor and its
``forward`` (per-call target data such as a row mask goes to ``forward``).
"""

from __future__ import annotations

from symce.codegen.blocks import schedule
from symce.codegen.c import c_context, c_header
from symce.codegen.ir import Kernel
from symce.codegen.module import arguments, denominators
from symce.codegen.printers import array_code, array_kernel_context, kernel_names
from symce.codegen.second_order import second_order_context
from symce.losses import get_loss
from symce.losses.targets import MASK, N_CLASSES, W, Y

#: what every torch block function takes (each uses some), before the scalars and scales
BLOCK_ARRAYS = ("u", "buf", "tu", "tbuf", "y", "valid", "p", "w", "n_classes", "need_grad",
                "need_grad_teacher", "consts", "scratch")


def _kernel(kernel: Kernel) -> dict[str, object]:
    names = kernel_names(kernel)
    return {**array_kernel_context(kernel, "torch"),
            "plan": schedule(kernel, lambda e: array_code(e, "torch", names)),
            # terms whose row loss the derivation makes 0 for this kernel's options (z_loss
            # = 0): every backend writes +0.0 rows for them, whatever the logits
            "zero_losses": [name for name, e in kernel.losses if e == 0]}


def op_schema(loss_name: str) -> list[str]:
    """``type name`` of each argument after ``input`` and the target, for the custom
    operator torch.compile sees (a schema of ``torch.library``)."""
    loss = get_loss(loss_name)
    params = {p.name: p for p in loss.params}
    found = []
    for a in arguments(loss)[2:]:
        if a.name in params:
            kind = "float?" if params[a.name].optional else "float"
        elif a.role == "flag":
            kind = "bool"
        else:
            default = loss.targets.option(a.name).default if a.role == "option" else ""
            kind = {type(None): "Tensor?", bool: "bool", int: "int", float: "float",
                    str: "str"}[type(default)]
        found.append(f"{kind} {a.name}")
    return found


def torch_context(loss_name: str, ks: tuple[Kernel, ...]) -> dict[str, object]:
    loss = get_loss(loss_name)
    scalars = sorted({s for k in ks for s in k.scalars})
    per_call = {o.name for o in loss.targets.options if o.per_call}
    rest = arguments(loss)[2:]
    return {
        "kernels": [_kernel(k) for k in ks],
        "block_parameters": [*BLOCK_ARRAYS, *scalars, *(f"scale_{t}" for t in ks[0].scales)],
        "scalars": scalars,
        "denominators": denominators(loss, {MASK: "valid", W[Y]: "w_y",
                                            N_CLASSES: "n_classes"}),
        "module_arguments": [a for a in rest if a.name not in per_call],
        "forward_arguments": [a for a in rest if a.name in per_call],
        "teacher_gradient": any(k.grad_teacher is not None for k in ks),
        "op_schema": op_schema(loss_name),
        "op_floats": [a.split()[1] for a in op_schema(loss_name) if a.startswith("float")],
        # the compiled kernels, on torch's own OpenMP team (see templates/shared/compiled.py.j2)
        **c_context(ks, c_header(loss_name, "torch"), openmp=True),
        # the dense path: double backward and target gradients (symce/codegen/second_order.py)
        **second_order_context(loss_name, ks),
    }


__all__ = ["BLOCK_ARRAYS", "op_schema", "torch_context"]
