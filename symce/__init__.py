"""symce: machine-checked softmax / cross-entropy derivations, documents and code.

>>> import symce
>>> symce.derive("cross_entropy", n=3).check().loss
'cross_entropy'
"""

from symce._version import __version__
from symce.api import derive
from symce.errors import ProofError
from symce.losses import list_losses, register
from symce.losses._define import define_loss
from symce.proof import Derivation, Step

__all__ = ["Derivation", "ProofError", "Step", "__version__", "define_loss", "derive",
           "list_losses", "register"]
