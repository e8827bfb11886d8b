"""Code generation: derivation → kernel description → printers → Jinja2 templates → modules.

:func:`generated_files` is what ``symce build`` writes into ``generated/``;
:func:`generate` renders one module.  The kernels come from
:mod:`symce.codegen.ir` (lowered from the checked derivation), the module's
signature and checks from :mod:`symce.codegen.module` (the loss's
declaration), each backend's syntax from its printer, the structure
(validation, layout, blocking, threads, autograd) from
``templates/<backend>/module.py.j2``.  A backend is one entry of
:data:`BACKEND_CONTEXTS`: a function giving its template's kernel context.

>>> sorted(generated_files())[:3]
['cross_entropy_numpy.py', 'cross_entropy_torch.py', 'cross_entropy_triton.py']
"""

from __future__ import annotations

from collections.abc import Callable

from symce.codegen.c import c_context, c_header
from symce.codegen.ir import Kernel, kernels
from symce.codegen.module import denominators, module_context
from symce.codegen.printers import array_kernel_context
from symce.codegen.torch_module import torch_context
from symce.losses import get_loss, list_losses
from symce.losses.targets import MASK, N_CLASSES, W, Y
from symce.render.env import header_lines, render

BACKENDS: tuple[str, ...] = ("numpy", "torch", "triton")

#: bytes of logits per block: half of a 2 MiB L2, the rest for the scratch block
BLOCK_BYTES = 1 << 20


def file_name(loss: str, backend: str) -> str:
    return f"{loss}_{backend}.py"


def _block_parameters(ks: tuple[Kernel, ...]) -> list[str]:
    """The array kernels' common parameters (every kernel takes all; uses some)."""
    scalars = sorted({s for k in ks for s in k.scalars})
    scales = [f"scale_{t}" for t in ks[0].scales]
    return ["u", "buf", "tu", "y", "y_at", "valid", "p", "w", "n_classes", "need_grad",
            "consts", *scalars, *scales]


def _numpy(loss: str, ks: tuple[Kernel, ...]) -> dict[str, object]:
    return {
        "kernels": [array_kernel_context(k, "numpy") for k in ks],
        "block_parameters": _block_parameters(ks),
        "scalars": sorted({s for k in ks for s in k.scalars}),
        "denominators": denominators(get_loss(loss), {MASK: "valid", W[Y]: "w_y",
                                                      N_CLASSES: "n_classes"}),
        **c_context(ks, c_header(loss)),
    }


def _triton(loss: str, ks: tuple[Kernel, ...]) -> dict[str, object]:
    from symce.codegen.triton import triton_context

    return triton_context(loss, ks)


#: backend → its template's context (beyond :func:`module_context`)
BACKEND_CONTEXTS: dict[str, Callable[[str, tuple[Kernel, ...]], dict[str, object]]] = {
    "numpy": _numpy,
    "triton": _triton,
    "torch": torch_context,
}


def generate(loss: str = "cross_entropy", backend: str = "numpy") -> str:
    """The source of ``generated/<loss>_<backend>.py``."""
    spec = get_loss(loss)  # UnknownLossError for a name nobody registered
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend not in BACKEND_CONTEXTS:
        raise ValueError(f"the {backend} backend is not available yet")
    template = f"{backend}/module.py.j2"
    how = (spec.regenerate.format(backend=backend) if spec.regenerate
           else f"symce generate {loss} --backend {backend} (or symce build)")
    header = header_lines(loss, template, how)
    ks = kernels(loss)
    return render(template, header=header, block_bytes=BLOCK_BYTES, **module_context(loss),
                  **BACKEND_CONTEXTS[backend](loss, ks))


def loss_files(loss: str) -> dict[str, str]:
    """File name → source of one loss's modules: every available backend, and the
    products built on it (:mod:`symce.codegen.products`)."""
    from symce.codegen.products import products

    files = {file_name(loss, backend): generate(loss, backend)
             for backend in BACKENDS if backend in BACKEND_CONTEXTS}
    files.update({name: product.make() for name, product in products(loss).items()})
    return files


def generated_files() -> dict[str, str]:
    """File name → source for every generated module (what ``symce build`` writes)."""
    files: dict[str, str] = {}
    for loss in list_losses():
        files.update(loss_files(loss))
    return files


__all__ = ["BACKENDS", "BACKEND_CONTEXTS", "generate", "generated_files", "loss_files"]
