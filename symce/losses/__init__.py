"""Loss registry: each loss is one module that registers its derivation.

>>> from symce.losses import list_losses
>>> "cross_entropy" in list_losses()
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from symce.engine.context import Context
from symce.errors import UnknownLossError
from symce.proof import Step

Builder = Callable[[Context], list[Step]]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its name, what it is, and how its derivation is built."""

    name: str
    description: str
    build: Builder
    result_step: str = "gradient"


_REGISTRY: dict[str, LossSpec] = {}


def register(name: str, description: str, result_step: str = "gradient"):
    """Decorator: register ``build(ctx) -> list[Step]`` as the loss ``name``."""

    def decorate(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered")
        _REGISTRY[name] = LossSpec(name, description, build, result_step)
        return build

    return decorate


def get_loss(name: str) -> LossSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownLossError(f"unknown loss {name!r} (registered: {known})") from None


def list_losses() -> dict[str, str]:
    """Registered loss names → one-line descriptions, sorted by name."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


# Importing a loss module registers it.
from symce.losses import cross_entropy  # noqa: E402,F401
