"""``symce generate [LOSS] --backend numpy|torch|all [--out DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from symce.codegen import BACKENDS, file_name, generate
from symce.losses import get_loss


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("loss", nargs="?", default="cross_entropy",
                        help="registered loss (default: cross_entropy)")
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all",
                        help="which module to generate (default: all)")
    parser.add_argument("--out", type=Path, default=Path("generated"),
                        help="output folder (default: generated)")


def run(args: argparse.Namespace) -> int:
    get_loss(args.loss)  # UnknownLossError before any work
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    args.out.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        path = args.out / file_name(args.loss, backend)
        path.write_text(generate(args.loss, backend), encoding="utf-8")
        print(f"wrote {path}")
    return 0
