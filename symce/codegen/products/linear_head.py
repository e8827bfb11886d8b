"""The language-model head: linear layer + cross-entropy, fused and chunked over the rows.

``generated/linear_cross_entropy_torch.py`` and ``..._triton.py`` compute
``cross_entropy(input @ linear_weight.T + linear_bias, target, …)`` and its
gradients with respect to ``input``, ``linear_weight`` and ``linear_bias``
without the full logits: chunk by chunk of rows, one GEMM into a reused
buffer, the loss's own generated kernel (the same printed kernels as
``cross_entropy_{torch,triton}.py``, embedded: the module is standalone)
turning it into the gradient ``g = ∂L/∂x``, then the head's gradients
``Wᵀg``, ``g hᵀ`` and ``g`` (the checked steps of
:func:`symce.engine.head.head_derivation`) as GEMMs accumulated over the
chunks.  The GEMM structure is the template's; every formula is the loss's.
"""

from __future__ import annotations

from symce.codegen import BACKEND_CONTEXTS, BLOCK_BYTES
from symce.codegen.ir import kernels
from symce.codegen.module import arguments, module_context
from symce.codegen.products import register_product
from symce.engine.head import CLASSES, head_derivation
from symce.losses import get_loss
from symce.render.env import header_lines, render

LOSS = "cross_entropy"
NAME = "linear_cross_entropy"
#: PyTorch 2.13's ``F.linear_cross_entropy`` keyword order (the options it has)
TORCH_ORDER = ("weight", "reduction", "ignore_index", "label_smoothing")
#: the head's own keywords, after the loss's (no loss kernel reads them): CCE-style
#: gradient filtering, off by default
HEAD_ONLY = (("filter_eps", "None"),)


def head_arguments(loss_name: str) -> list[tuple[str, str]]:
    """``(name, default)`` of the head's keyword arguments after ``linear_bias``.

    PyTorch's names and defaults (``ignore_index=None``: −100 for class
    indices, refused with probability targets), ``options``, then the loss's
    parameters (z-loss, soft-capping; no term returned on its own), then the
    head's own (:data:`HEAD_ONLY`).
    """
    args = [a for a in arguments(get_loss(loss_name))[2:] if a.role != "flag"]
    by_name = {a.name: a for a in args}
    found = [(name, "None" if name == "ignore_index" else by_name[name].default)
             for name in TORCH_ORDER if name in by_name]
    found.append(("options", "None"))
    found += [(a.name, a.default) for a in args if a.name not in TORCH_ORDER]
    return found + list(HEAD_ONLY)


def _context(loss_name: str, backend: str, template: str) -> dict[str, object]:
    # the head's gradients are proved before anything is printed from them
    head_derivation()
    head_derivation(CLASSES)
    keywords = head_arguments(loss_name)
    header = header_lines(loss_name, template, "symce build")
    return {
        **module_context(loss_name),
        **BACKEND_CONTEXTS[backend](loss_name, kernels(loss_name)),
        "header": header,
        "block_bytes": BLOCK_BYTES,
        "head": NAME,
        "head_class": "LinearCrossEntropyLoss",
        "head_function_class": "LinearCrossEntropyFunction",
        "head_keywords": keywords,
        "head_signature": ", ".join(f"{n}={d}" for n, d in keywords),
        "head_options": [n for n, _ in keywords
                         if n != "options" and n not in dict(HEAD_ONLY)],
        "embedded_template": f"{backend}/module.py.j2",
        # the embedded module says what it is: generated/<loss>_<backend>.py's source
        "embedded_header": header_lines(
            loss_name, f"{backend}/module.py.j2",
            f"symce generate {loss_name} --backend {backend}; embedded here by {template}"),
    }


def make(backend: str) -> str:
    """The source of ``generated/linear_cross_entropy_<backend>.py``."""
    template = f"{backend}/linear_head.py.j2"
    return render(template, **_context(LOSS, backend, template))


register_product(f"{NAME}_torch.py", LOSS, lambda: make("torch"))
register_product(f"{NAME}_triton.py", LOSS, lambda: make("triton"))

__all__ = ["HEAD_ONLY", "head_arguments", "make"]
