"""Arguments shared by subcommands."""

from __future__ import annotations

import argparse

from symce.losses import get_loss, list_losses


def add_loss_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "loss", nargs="?", default="cross_entropy",
        help=f"registered loss (default: cross_entropy; known: {', '.join(list_losses())})",
    )


def checked_loss(name: str) -> str:
    """The loss name, or UnknownLossError (reported as a one-line usage error)."""
    return get_loss(name).name


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
