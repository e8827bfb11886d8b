"""Arguments shared by subcommands."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from symce.commands.errors import UsageError
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


def class_count(text: str) -> int:
    """``--n``: a positive number of classes up to :data:`symce.api.MAX_CLASSES`."""
    from symce.api import MAX_CLASSES

    value = positive_int(text)
    if value > MAX_CLASSES:
        raise argparse.ArgumentTypeError(
            f"n = {value} is above the limit of {MAX_CLASSES} classes (a concrete-n derivation "
            f"writes out every entry; use the symbolic n, the default, for any n)")
    return value


def output_folder(path: Path, option: str = "--out") -> Path:
    """``path`` made ready to write into, before any work; a ``UsageError`` otherwise.

    A missing folder is created (with its parents).  An existing file, a place
    where a folder cannot be created, or a folder that cannot be written is
    refused: found by trying, so it holds for root and for read-only mounts too.
    """
    try:
        if path.exists() and not path.is_dir():
            raise UsageError(f"{option} {path}: is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create the folder ({_reason(exc)})") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = _reason(exc)
        raise UsageError(f"{option} {path}: cannot write into the folder ({reason})") from None
    return path


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
