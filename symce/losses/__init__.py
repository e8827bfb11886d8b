"""Loss registry: each loss is one module that declares it as data.

A loss module builds a :class:`~symce.losses.spec.Loss` (its terms, parameters,
target model, transform and own steps) and registers it with
:func:`register`; the proof, the documents, the code of every backend and the
references of ``symce verify`` / ``symce check`` are derived from that
declaration.  Registered losses are listed by ``symce derive --list``.  A
loss can also be one formula, :func:`symce.define_loss` (``_define.py``:
the formula becomes such a declaration).

>>> from symce.losses import list_losses
>>> sorted(list_losses())
['cross_entropy', 'focal_loss', 'kl_distillation']
"""

from __future__ import annotations

from collections.abc import Callable

from symce.errors import UnknownLossError
from symce.losses.spec import Loss, Param, Term, Transform, check_value
from symce.losses.targets import CLASSES, TEACHER

_REGISTRY: dict[str, Loss] = {}
#: unregistered declarations, kept: a cache keyed by a declaration's ``id`` never
#: meets a new declaration at a reused address
_RETIRED: dict[str, list[Loss]] = {}


def register(declare: Callable[[], Loss] | Loss) -> Callable[[], Loss] | Loss:
    """Register a loss: a :class:`Loss`, or (as a decorator) a function returning one."""
    loss = declare() if callable(declare) and not isinstance(declare, Loss) else declare
    if not isinstance(loss, Loss):
        raise TypeError(f"register takes a Loss (or a function returning one), got {loss!r}")
    if loss.name in _REGISTRY:
        raise ValueError(f"loss {loss.name!r} is already registered")
    if loss.name in _RETIRED:  # a name defined anew: what was derived by name is stale
        _forget_derived()
    _REGISTRY[loss.name] = loss
    return declare


def unregister(name: str) -> None:
    """Remove a registered loss (for losses defined at run time).

    The name can be defined anew: what was derived from the old declaration
    and remembered by name (derivations, kernels, printed references) is
    forgotten when it is.
    """
    get_loss(name)
    _RETIRED.setdefault(name, []).append(_REGISTRY.pop(name))


def _forget_derived() -> None:
    """Clear the per-process caches of symce's loaded modules (they are keyed by loss name)."""
    import sys

    for module_name, module in list(sys.modules.items()):
        if module_name != "symce" and not module_name.startswith("symce."):
            continue
        for value in list(vars(module).values()):
            clear = getattr(value, "cache_clear", None)
            if callable(clear) and getattr(value, "__module__", None) == module_name:
                clear()


def get_loss(name: str) -> Loss:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownLossError(f"unknown loss {name!r} (registered: {known})") from None


def list_losses() -> dict[str, str]:
    """Registered loss names → one-line descriptions, sorted by name."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


__all__ = ["CLASSES", "TEACHER", "Loss", "Param", "Term", "Transform", "check_value",
           "get_loss", "list_losses", "register", "unregister"]


def _import_losses() -> None:
    """Import every loss module of this package (importing one registers it): a
    new loss is one file here, with no list to edit."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in ("spec", "targets") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_losses()
