"""``symce check PATH.py:NAME [--loss LOSS]``: a user's implementation against the reference.

Exit status: 0 when every case passes, 1 when any fails (a call that does not
return within ``--timeout`` included), 2 for usage errors (no such file or
name, an import that fails, an object that cannot be called, a bad option or
parameter value).
"""

from __future__ import annotations

import argparse
import textwrap

from symce.checker.adapter import BACKENDS, parse_spec
from symce.checker.battery import SHAPES
from symce.checker.check import WEIGHTS, check_implementation, loss_spec, parse_shapes
from symce.checker.diagnosis import scope
from symce.checker.reference import TARGETS, TEACHER, LossSpec
from symce.checker.report import format_tail
from symce.checker.runner import DEFAULT_TIMEOUT
from symce.commands.errors import UsageError
from symce.losses import get_loss, list_losses

DESCRIPTION = """\
check your own loss implementation against the derived reference

The implementation is called as the loss's generated functions are, on a
battery of cases: f(logits, target), plus one keyword argument per parameter
given with --param and per target option below that is given (and only
those).  For cross_entropy (the default --loss) the options have
torch.nn.functional.cross_entropy's names and meaning:

  f(logits, target, weight=w, ignore_index=N, label_smoothing=EPS)

logits are (N, C), (N, C, d1, ...) or (C,) (see --shapes); the target holds
class indices (int64, the logits' shape without C) or probabilities (the
logits' shape); w is a [C] tensor (an array for --backend numpy) in the
logits' dtype.  For a loss with a teacher (kl_distillation) the target is the
teacher's logits, in the logits' layout, and some cases pass mask=m, a bool
per row (False: the row does not count; --no-mask leaves them out).  The
reference is the checked derivation of the loss, printed as float64 NumPy.
Each line is printed as its case finishes.  The function runs in a separate
worker process (what it prints goes to stderr); a call that runs past
--timeout fails, naming the limit, and stops the battery.

{losses}

exit status: 0 every case passes, 1 any fails, 2 usage error"""


def losses_help() -> str:
    """Every registered loss: how it is called, its parameters, reductions and diagnoses."""
    lines = ["losses (--loss) and their parameters (--param NAME=VALUE, else the default):"]

    def add(text: str, indent: str, more: str) -> None:
        lines.extend(textwrap.wrap(text, 79, initial_indent=indent, subsequent_indent=more,
                                   break_on_hyphens=False))

    for name in list_losses():
        spec = LossSpec(name)
        loss = get_loss(name)
        words = ["logits", loss.targets.argument, *(f"{p.name}=..." for p in loss.params)]
        words += [f"{o.name}=..." for o in loss.targets.options]
        reductions = ", ".join(
            f"{r} (default)" if r == spec.default_reduction else r for r in spec.reductions
        )
        add(f"{name}: f({', '.join(words)})", "  ", "      ")
        add(f"reductions {reductions}; {scope(spec)}", "      ", "      ")
        for p in loss.params:
            default = "None" if p.default is None else f"{p.default:g}"
            add(f"{p.name}: {p.rule}, default {default}: {p.doc}", "      ", "        ")
    return "\n".join(lines)


def parse_params(loss: str, texts: list[str] | None) -> dict[str, float | None]:
    """``["gamma=0.5"]`` → ``{"gamma": 0.5}``, checked against the declared ranges.

    A ``UsageError`` (one line, exit status 2) for a malformed pair, an
    unknown name or a value out of range.
    """
    values: dict[str, float | None] = {}
    for text in texts or ():
        name, sep, raw = text.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise UsageError(f"--param expects NAME=VALUE, got {text!r}")
        try:
            value: float | None = None if raw.lower() == "none" else float(raw)
        except ValueError:
            value = raw  # type: ignore[assignment]  # said by the range check below
        values[name] = value
    try:
        loss_spec(loss, values)
    except ValueError as exc:
        raise UsageError(f"--param: {exc}") from None
    return values


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


def _all_reductions() -> tuple[str, ...]:
    found: list[str] = []
    for name in list_losses():
        found += [r for r in get_loss(name).targets.reductions if r not in found]
    return tuple(sorted(found))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION.format(losses=losses_help())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "implementation",
        metavar="PATH.py:NAME",
        help="a function f(logits, target, ...), an nn.Module class (built with no "
        "arguments) or an instance",
    )
    parser.add_argument(
        "--loss",
        default="cross_entropy",
        metavar="LOSS",
        help=f"the registered loss it implements: {', '.join(list_losses())} "
        "(default: cross_entropy)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a parameter of the loss (repeat for several): the battery uses VALUE and "
        "passes NAME=VALUE to the implementation; checked against the declared range "
        "(none for an optional one); parameters not given keep their default and are "
        "not passed",
    )
    parser.add_argument(
        "--target",
        choices=(*TARGETS, TEACHER),
        default=None,
        help="what the target is: class indices [N], probabilities [N, C] or one-hot "
        "[N, C] (default: told from a first call, and said); teacher for a loss with a "
        "teacher (its only kind)",
    )
    parser.add_argument(
        "--reduction",
        choices=_all_reductions(),
        default=None,
        help="what the implementation is meant to compute, one of the loss's (see the "
        "losses above); it is not passed (default: the loss's default)",
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
        "--no-mask",
        dest="mask",
        action="store_false",
        default=None,
        help="a loss with a teacher: leave out the cases that pass mask=m (by default some "
        "do: every third row from the second is masked out, and the mean counts only the "
        "rows that are not)",
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
    loss = get_loss(args.loss).name
    params = parse_params(loss, args.param)

    def progress(line: str) -> None:  # the header and each case, as soon as known
        print(line, flush=True)

    report = check_implementation(
        args.implementation,
        target=args.target,
        reduction=args.reduction,
        backend=args.backend,
        seed=args.seed,
        loss=loss,
        params=params,
        weight=args.weight,
        ignore_index=args.ignore_index,
        label_smoothing=args.label_smoothing,
        mask=args.mask,
        shapes=args.shapes,
        timeout=args.timeout,
        progress=progress,
    )
    print(format_tail(report), flush=True)
    return 0 if report.passed else 1
