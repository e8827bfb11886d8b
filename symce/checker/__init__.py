"""``symce check``: verify a user's own cross-entropy against the derived reference.

The reference is the derivation's log-sum-exp loss and its gradient
``q·Σc − c``, evaluated in float64 for every option of ``nn.CrossEntropyLoss``
(:mod:`symce.checker.reference`).  A battery of cases
(:mod:`symce.checker.battery`) runs the implementation, each call under a time
limit somewhere it can be abandoned (:mod:`symce.checker.runner`); failures
are shrunk to a minimal counterexample and explained where a usual mistake is
recognised (:mod:`symce.checker.diagnosis`).  Claimed gradient formulas are
proved or refuted by :mod:`symce.checker.formula`.
"""

from symce.checker.adapter import CheckUsageError, load
from symce.checker.check import Report, check_implementation, detect_target
from symce.checker.formula import FormulaVerdict, check_gradient_formula

__all__ = [
    "CheckUsageError",
    "FormulaVerdict",
    "Report",
    "check_gradient_formula",
    "check_implementation",
    "detect_target",
    "load",
]
