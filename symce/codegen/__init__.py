"""Code generation: derived expressions → printers → Jinja2 templates → modules.

:func:`generated_files` is what ``symce build`` writes into ``generated/``;
:func:`generate` renders one backend.  The expressions come from
:mod:`symce.codegen.expressions` (pulled from the checked derivation), the
backend syntax from :mod:`symce.codegen.printers`, the structure (validation,
layout, blocking, reductions) from ``templates/<backend>/<loss>.py.j2``.

>>> sorted(generated_files())
['cross_entropy_numpy.py', 'cross_entropy_torch.py', 'cross_entropy_triton.py']
"""

from __future__ import annotations

import functools
import itertools

from symce.api import derive
from symce.codegen.c import SLAB_POSITIONS, c_source
from symce.codegen.c import kernel_context as c_kernel_context
from symce.codegen.expressions import TARGET_KINDS, KernelExpressions, kernel_expressions
from symce.codegen.printers import array_code
from symce.codegen.triton import kernel_context as triton_kernel_context
from symce.losses import get_loss
from symce.render.env import header_lines, render

BACKENDS: tuple[str, ...] = ("numpy", "torch", "triton")

#: backends whose templates take their own kernel context instead of :func:`_printed`
_KERNEL_CONTEXTS = {"triton": triton_kernel_context}

#: backends whose modules carry the C kernels (compiled on first use)
_WITH_C = ("numpy", "torch")

#: losses that have backend templates
GENERATED_LOSSES: tuple[str, ...] = ("cross_entropy",)

#: bytes of logits per block: half of a 2 MiB L2, the rest for the scratch block
BLOCK_BYTES = 1 << 20


def file_name(loss: str, backend: str) -> str:
    return f"{loss}_{backend}.py"


def kernel_name(k: KernelExpressions) -> str:
    parts = [k.kind] + (["weighted"] if k.weighted else []) + (["smoothed"] if k.smoothed else [])
    return "_".join(parts)


@functools.cache
def _kernels(loss: str) -> tuple[KernelExpressions, ...]:
    derivation = derive(loss)
    return tuple(
        kernel_expressions(derivation, kind, weighted, smoothed)
        for kind, weighted, smoothed in itertools.product(TARGET_KINDS, (False, True),
                                                           (False, True))
    )


def _printed(k: KernelExpressions, backend: str) -> dict[str, object]:
    def code(expr):
        return array_code(expr, backend)

    return {
        "name": kernel_name(k),
        "kind": k.kind,
        "weighted": k.weighted,
        "smoothed": k.smoothed,
        **{stage: [(str(s), code(e)) for s, e in getattr(k, stage)]
           for stage in ("constants", "before_exp", "after_exp")},
        **{piece: code(getattr(k, piece)) for piece in ("loss", "alpha", "beta", "dense")},
        "dense_terms": [(code(coef), [code(a) for a in arrays]) for coef, arrays in k.dense_terms],
    }


def generate(loss: str = "cross_entropy", backend: str = "numpy") -> str:
    """The source of ``generated/<loss>_<backend>.py``."""
    get_loss(loss)  # UnknownLossError for a name nobody registered
    if loss not in GENERATED_LOSSES:
        raise ValueError(f"no code templates for loss {loss!r} (have: {GENERATED_LOSSES})")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    template = f"{backend}/{loss}.py.j2"
    header = header_lines(loss, template,
                          f"symce generate {loss} --backend {backend} (or symce build)")
    context = _KERNEL_CONTEXTS.get(backend)
    kernels = [context(k, kernel_name(k)) if context else _printed(k, backend)
               for k in _kernels(loss)]
    extra = {}
    if backend in _WITH_C:
        pairs = [(k, kernel_name(k)) for k in _kernels(loss)]
        extra = {"c_source": c_source(pairs, header),
                 "c_kernels": [c_kernel_context(k, name) for k, name in pairs],
                 "slab_positions": SLAB_POSITIONS, "c_openmp": backend == "torch"}
    return render(template, header=header, kernels=kernels, block_bytes=BLOCK_BYTES, **extra)


def generated_files() -> dict[str, str]:
    """File name → source for every generated module (what ``symce build`` writes)."""
    return {
        file_name(loss, backend): generate(loss, backend)
        for loss in GENERATED_LOSSES
        for backend in BACKENDS
    }


__all__ = ["BACKENDS", "generate", "generated_files"]
