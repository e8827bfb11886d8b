"""Modules built on a loss's derivation beyond its per-backend modules.

A product is a generated file that composes a loss's kernels with more
structure — the language-model head (``linear_cross_entropy_torch.py``), the
vocabulary split across ranks (``cross_entropy_vocab_parallel_torch.py``).
Each product is one module of this package that calls :func:`register_product`
at import; ``symce build`` writes every registered product's files together
with its loss's own (:func:`symce.codegen.loss_files`), so a new product, like
a new loss, is one file with no list to edit.

>>> sorted(products())  # doctest: +SKIP
['linear_cross_entropy_torch.py', ...]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    """One generated file: ``make()`` returns its source; ``loss`` is the loss it builds on."""

    file_name: str
    loss: str
    make: Callable[[], str]


_PRODUCTS: dict[str, Product] = {}
_imported = False


def register_product(file_name: str, loss: str, make: Callable[[], str]) -> None:
    """Register ``file_name`` (written into generated/ by ``symce build``) built on ``loss``."""
    if not file_name.endswith(".py") or "/" in file_name:
        raise ValueError(f"a product is one .py file in generated/, got {file_name!r}")
    if file_name in _PRODUCTS:
        raise ValueError(f"product {file_name!r} is already registered")
    _PRODUCTS[file_name] = Product(file_name, loss, make)


def products(loss: str | None = None) -> dict[str, Product]:
    """Registered products (of ``loss`` only, when given), by file name."""
    _import_products()
    return {name: p for name, p in sorted(_PRODUCTS.items()) if loss in (None, p.loss)}


def _import_products() -> None:
    """Import every product module of this package once (importing one registers it)."""
    global _imported
    if _imported:
        return
    _imported = True
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["Product", "products", "register_product"]
