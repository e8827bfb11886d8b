"""``symce doc [LOSS] --format tex|md|pdf --out DIR``: write the proof document."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from symce.api import MAX_CLASSES, derive
from symce.commands._common import add_loss_argument, checked_loss, class_count, output_folder
from symce.commands.errors import CommandFailure
from symce.progress import report, terminal_progress


def configure(parser: argparse.ArgumentParser) -> None:
    add_loss_argument(parser)
    parser.add_argument("--format", choices=("tex", "md", "pdf"), default="tex",
                        help="tex (LaTeX source), md (Markdown) or pdf (needs pdflatex)")
    parser.add_argument("--n", type=class_count, default=None, metavar="N",
                        help=f"the derivation for N classes, 1 to {MAX_CLASSES} (default: a "
                        "symbolic n); written to LOSS_derivation_nN.FORMAT")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="output folder, created if missing; a file or an unwritable "
                        "folder is refused before any work (default: current folder)")


def document_name(loss: str, fmt: str, n: int | None = None) -> str:
    """``cross_entropy_derivation.tex``; for a concrete n ``cross_entropy_derivation_n3.tex``."""
    return f"{loss}_derivation{'' if n is None else f'_n{n}'}.{fmt}"


def find_pdflatex() -> str:
    """The pdflatex executable, or a ``CommandFailure`` that says how to get one."""
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        raise CommandFailure(
            "pdflatex not found: install TeX Live (texlive-latex-base) for PDFs, "
            "or write --format tex"
        )
    return pdflatex


def compile_pdf(tex: str, target: Path) -> Path:
    """Run pdflatex twice in a scratch folder; copy the PDF to ``target``."""
    pdflatex = find_pdflatex()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{target.stem}.tex"
        source.write_text(tex, encoding="utf-8")
        for _ in range(2):
            report("running pdflatex")
            proc = subprocess.run(
                [pdflatex, "-interaction=nonstopmode", "-halt-on-error", source.name],
                cwd=tmp, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                tail = "\n".join(proc.stdout.splitlines()[-15:])
                raise CommandFailure(
                    f"pdflatex failed on {source.name}; the end of its log:\n{tail}"
                )
        shutil.copyfile(source.with_suffix(".pdf"), target)
    return target


def run(args: argparse.Namespace) -> int:
    loss = checked_loss(args.loss)
    output_folder(args.out)
    if args.format == "pdf":
        find_pdflatex()  # before the derivation, not after it
    what = "" if args.n is None else f" for n = {args.n}"
    print(f"deriving {loss}{what} and checking every step ...", file=sys.stderr)
    target = args.out / document_name(loss, args.format, args.n)
    with terminal_progress("symce doc: "):
        derivation = derive(loss, n=args.n)
        if args.format == "pdf":
            compile_pdf(derivation.to_latex(), target)
        else:
            text = derivation.to_latex() if args.format == "tex" else derivation.to_markdown()
            target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0
