"""``symce build [--out DIR]``: regenerate everything that belongs in generated/."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from symce.commands._common import output_folder
from symce.commands.doc import document_name
from symce.commands.errors import CommandFailure
from symce.losses import list_losses
from symce.progress import report, terminal_progress
from symce.render.cache import derivation as derived


def loss_files(loss: str) -> dict[str, str]:
    """File name → content of everything generated/ holds for one loss."""
    from symce import codegen

    report(f"deriving {loss}")
    derivation = derived(loss, None)  # the one the documents and the modules use
    files = {document_name(loss, "tex"): derivation.to_latex(),
             document_name(loss, "md"): derivation.to_markdown()}
    report(f"generating {loss}'s modules")
    files.update(codegen.loss_files(loss))
    return files


def build_files(report=None) -> tuple[dict[str, str], dict[str, str]]:
    """``(files, failures)``: every loss's files, and loss → why it could not be built.

    One loss failing (a step that does not follow, a printer that refuses an
    expression) does not stop the others; ``report(loss)`` is called as each
    loss starts (progress).
    """
    files: dict[str, str] = {}
    failures: dict[str, str] = {}
    for loss in list_losses():
        if report is not None:
            report(loss)
        try:
            files.update(loss_files(loss))
        except Exception as exc:  # reported with the loss's name; the others go on
            failures[loss] = f"{type(exc).__name__}: {exc}"
    return dict(sorted(files.items())), failures


def generated_files() -> dict[str, str]:
    """File name → content for every file of generated/, in a fixed order."""
    files, failures = build_files()
    if failures:
        loss, why = next(iter(failures.items()))
        raise CommandFailure(f"loss {loss!r} could not be built: {why}")
    return files


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("generated"),
                        help="output folder, created if missing; a file or an unwritable "
                        "folder is refused before any work (default: generated)")


def run(args: argparse.Namespace) -> int:
    output_folder(args.out)  # refused in a moment, not after seconds of deriving
    start = time.perf_counter()
    print("building documents and modules ...", file=sys.stderr)
    with terminal_progress("symce build: "):
        files, failures = build_files(lambda loss: print(f"  {loss}", file=sys.stderr))
    for name, text in files.items():
        path = args.out / name
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    print(f"{len(files)} files in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    if failures:
        for loss, why in failures.items():
            print(f"symce build: error: loss {loss!r} was not built: {why}", file=sys.stderr)
        raise CommandFailure(f"{len(failures)} of {len(list_losses())} losses failed "
                             f"({', '.join(failures)}); the others were written")
    return 0
