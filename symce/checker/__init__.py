"""``symce check``: verify a user's own implementation of any registered loss.

The reference is the loss's checked derivation — each term's loss and proved
gradient (for cross-entropy the log-sum-exp form and ``q·Σc − c``), the
transform's proved derivative — printed as float64 NumPy
(:func:`symce.verify.reference.derived_rows`) and fed the declared target
model's coefficients, row mask and denominators
(:mod:`symce.checker.reference`).  A battery of cases
(:mod:`symce.checker.battery`) covers the loss's target model (class indices
or probabilities with every option of ``nn.CrossEntropyLoss``; a teacher's
logits with and without a row mask), its parameters and its reductions, each
call under a time limit somewhere it can be abandoned
(:mod:`symce.checker.runner`); failures are shrunk to a minimal
counterexample and explained where a usual mistake is recognised
(:mod:`symce.checker.diagnosis`: generic rules for every loss, the target
models' and cross-entropy's own where they apply).  Claimed gradient formulas
are proved or refuted by :mod:`symce.checker.formula`.
"""

from symce.checker.adapter import CheckUsageError, load
from symce.checker.check import Report, check_implementation, detect_target, loss_spec
from symce.checker.formula import FormulaVerdict, check_gradient_formula
from symce.checker.reference import LossSpec

__all__ = [
    "CheckUsageError",
    "FormulaVerdict",
    "LossSpec",
    "Report",
    "check_gradient_formula",
    "check_implementation",
    "detect_target",
    "load",
    "loss_spec",
]
