"""The derivation engine: contexts for symbolic and concrete ``n``."""

from symce.engine.concrete import ConcreteContext
from symce.engine.context import ASSUMPTIONS, Context
from symce.engine.symbolic import SymbolicContext

__all__ = ["ASSUMPTIONS", "ConcreteContext", "Context", "SymbolicContext"]
