"""``symce check PATH.py:NAME``: a user's implementation against the derived reference.

Exit status: 0 when every case passes, 1 when any fails, 2 for usage errors
(no such file or name, an import that fails, an object that cannot be called).
"""

from __future__ import annotations

import argparse

from symce.checker.adapter import BACKENDS, load
from symce.checker.check import check_implementation
from symce.checker.reference import REDUCTIONS, TARGETS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "implementation",
        metavar="PATH.py:NAME",
        help="a function f(logits, target), an nn.Module class (built with no arguments) "
        "or an instance",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=None,
        help="what the target is: class indices [N], probabilities [N, C] or one-hot "
        "[N, C] (default: told from a first call, and said)",
    )
    parser.add_argument(
        "--reduction",
        choices=REDUCTIONS,
        default="mean",
        help="what the implementation is meant to compute (default: mean)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch: tensors in, gradient through autograd; numpy: arrays in, loss or "
        "(loss, grad) out, grad being the gradient of loss.sum() (default: torch)",
    )

    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="draw other random shapes and values (default: 0, reproducible)",
    )


def run(args: argparse.Namespace) -> int:
    fn = load(args.implementation)  # CheckUsageError: one line from symce.cli.main, exit 2
    report = check_implementation(
        fn,
        target=args.target,
        reduction=args.reduction,
        backend=args.backend,
        label=args.implementation,
        seed=args.seed,
    )
    print(report)
    return 0 if report.passed else 1
