"""``symce check PATH.py:NAME``: a user's implementation against the derived reference.

Exit status: 0 when every case passes, 1 when any fails (a call that does not
return within ``--timeout`` included), 2 for usage errors (no such file or
name, an import that fails, an object that cannot be called, a bad option).
"""

from __future__ import annotations

import argparse

from symce.checker.adapter import BACKENDS, parse_spec
from symce.checker.battery import SHAPES
from symce.checker.check import WEIGHTS, check_implementation, parse_shapes
from symce.checker.reference import REDUCTIONS, TARGETS
from symce.checker.report import format_tail
from symce.checker.runner import DEFAULT_TIMEOUT

DESCRIPTION = """\
check your own loss implementation against the derived reference

The implementation is called as f(logits, target) on a battery of cases, plus
one keyword argument per option below that is given (and only those), with
torch.nn.functional.cross_entropy's names and meaning:

  f(logits, target, weight=w, ignore_index=N, label_smoothing=EPS)

logits are (N, C), (N, C, d1, ...) or (C,) (see --shapes); the target holds
class indices (int64, the logits' shape without C) or probabilities (the
logits' shape); w is a [C] tensor (an array for --backend numpy) in the
logits' dtype.  Each line is printed as its case finishes.  The function runs
in a separate worker process (what it prints goes to stderr); a call that runs
past --timeout fails, naming the limit, and stops the battery.

exit status: 0 every case passes, 1 any fails, 2 usage error"""


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def smoothing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def shapes(text: str) -> tuple[str, ...]:
    try:
        return parse_shapes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SHAPES)} or 'all', got {text!r}"
        ) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "implementation",
        metavar="PATH.py:NAME",
        help="a function f(logits, target, ...), an nn.Module class (built with no "
        "arguments) or an instance",
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
        help="what the implementation is meant to compute; it is not passed (default: mean)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch: tensors in, gradient through autograd; numpy: arrays in, loss or "
        "(loss, grad) out, grad being the gradient of loss.sum() (default: torch)",
    )
    parser.add_argument(
        "--weight",
        choices=WEIGHTS,
        default=None,
        help="random: every case draws positive class weights w of shape [C] and passes "
        "weight=w; the mean then divides by sum(w[target]) over the rows not ignored "
        "(class indices) or by the number of rows (probabilities), as PyTorch does",
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        metavar="N",
        help="pass ignore_index=N and set every third row of each class-index target "
        "(from the second) to N; ignored rows add nothing, not even label smoothing, "
        "and are not counted by the mean (class-index targets only, as in PyTorch)",
    )
    parser.add_argument(
        "--label-smoothing",
        type=smoothing,
        default=None,
        metavar="EPS",
        help="pass label_smoothing=EPS, in [0, 1]: the target becomes "
        "(1-EPS)*w[y]*onehot(y) + (EPS/C)*w for class indices, w*((1-EPS)*p + EPS/C) "
        "for probabilities (w = 1 without --weight)",
    )
    parser.add_argument(
        "--shapes",
        type=shapes,
        default=("2d",),
        metavar="LIST",
        help="input layouts to cover, comma-separated: 2d (N, C), kdim (N, C, d1, ...) "
        "with the class axis second, unbatched (C,) with a scalar or [C] target; or all "
        "(default: 2d)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="time limit for each call of the implementation, and for importing its "
        f"file; past it the case fails and the battery stops (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="draw other random shapes and values (default: 0, reproducible)",
    )


def run(args: argparse.Namespace) -> int:
    parse_spec(args.implementation)  # a wrong path is said before any process starts

    def progress(line: str) -> None:  # the header and each case, as soon as known
        print(line, flush=True)

    report = check_implementation(
        args.implementation,
        target=args.target,
        reduction=args.reduction,
        backend=args.backend,
        seed=args.seed,
        weight=args.weight,
        ignore_index=args.ignore_index,
        label_smoothing=args.label_smoothing,
        shapes=args.shapes,
        timeout=args.timeout,
        progress=progress,
    )
    print(format_tail(report), flush=True)
    return 0 if report.passed else 1
