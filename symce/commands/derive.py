"""``symce derive [LOSS] [--n N] [--list]``: print the checked steps."""

from __future__ import annotations

import argparse
import sys
import time

from symce.api import MAX_CLASSES, derive
from symce.commands._common import add_loss_argument, checked_loss, class_count
from symce.losses import list_losses
from symce.progress import terminal_progress


def configure(parser: argparse.ArgumentParser) -> None:
    add_loss_argument(parser)
    parser.add_argument("--n", type=class_count, default=None, metavar="N",
                        help=f"number of classes, 1 to {MAX_CLASSES} (default: symbolic n); "
                        "beyond 8 matrices and sums are printed by their corner entries")
    parser.add_argument("--list", action="store_true", help="list the registered losses")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, description in list_losses().items():
            print(f"{name}\t{description}")
        return 0
    loss = checked_loss(args.loss)
    what = "symbolic n" if args.n is None else f"n = {args.n}"
    print(f"deriving {loss} for {what} and checking every step ...", file=sys.stderr)
    start = time.perf_counter()
    with terminal_progress("symce derive: "):
        derivation = derive(loss, n=args.n)
        elapsed = time.perf_counter() - start
        text = derivation.to_text()
    print(text, end="")
    print(f"{len(derivation.steps)} steps checked in {elapsed:.2f} s", file=sys.stderr)
    return 0
