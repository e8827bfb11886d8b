"""``symce derive [LOSS] [--n N] [--list]``: print the checked steps."""

from __future__ import annotations

import argparse
import sys
import time

from symce.api import derive
from symce.commands._common import add_loss_argument, checked_loss, positive_int
from symce.losses import list_losses


def configure(parser: argparse.ArgumentParser) -> None:
    add_loss_argument(parser)
    parser.add_argument("--n", type=positive_int, default=None,
                        help="number of classes (default: symbolic n)")
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
    derivation = derive(loss, n=args.n)
    elapsed = time.perf_counter() - start
    print(derivation.to_text(), end="")
    print(f"{len(derivation.steps)} steps checked in {elapsed:.2f} s", file=sys.stderr)
    return 0
