"""``symce build [--out DIR]``: regenerate everything that belongs in generated/."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from symce.api import derive
from symce.commands._common import output_folder
from symce.commands.doc import document_name
from symce.losses import list_losses
from symce.progress import report, terminal_progress


def generated_files() -> dict[str, str]:
    """File name → content for every file of generated/, in a fixed order."""
    files: dict[str, str] = {}
    for loss in list_losses():
        report(f"deriving {loss}")
        derivation = derive(loss)
        files[document_name(loss, "tex")] = derivation.to_latex()
        files[document_name(loss, "md")] = derivation.to_markdown()
    try:
        from symce import codegen
    except ModuleNotFoundError as exc:
        if exc.name != "symce.codegen":
            raise
    else:
        report("generating the modules")
        files.update(codegen.generated_files())
    return dict(sorted(files.items()))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("generated"),
                        help="output folder, created if missing; a file or an unwritable "
                        "folder is refused before any work (default: generated)")


def run(args: argparse.Namespace) -> int:
    output_folder(args.out)  # refused in a moment, not after seconds of deriving
    start = time.perf_counter()
    print("building documents and modules ...", file=sys.stderr)
    with terminal_progress("symce build: "):
        files = generated_files()
    for name, text in files.items():
        path = args.out / name
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    print(f"{len(files)} files in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0
