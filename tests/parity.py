"""The parity helper and case table, for tests (the source lives in symce.verify.parity).

``check_module(module, case)`` compares any generated module with torch
float64 (``F.cross_entropy`` and ``torch.autograd.grad``); ``CASES`` covers
every option and their combinations.  ``TORCH_API_MODULES`` lists the
generated modules with the torch API: a new backend with that API (Triton) is
one more name there.
"""

from __future__ import annotations

from pathlib import Path

from symce.verify.command import load_module
from symce.verify.parity import (  # noqa: F401  (re-exported for tests)
    CASES,
    HALF_CASES,
    TOLERANCES,
    Case,
    Result,
    assert_parity,
    check_module,
    make_inputs,
    reference,
)

GENERATED = Path(__file__).resolve().parent.parent / "generated"

#: generated modules with the torch API (tensors in, autograd for the gradient)
TORCH_API_MODULES: tuple[str, ...] = ("cross_entropy_torch",)


def load_generated(name: str):
    """Import ``generated/<name>.py`` from its file."""
    return load_module(GENERATED / f"{name}.py")
