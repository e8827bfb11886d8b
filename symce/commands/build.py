"""``symce build [--out DIR]``: regenerate everything that belongs in generated/."""

from __future__ import annotations

import argparse
import os
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


def _one_loss(loss: str) -> tuple[dict[str, str], str | None]:
    """``(files, None)``, or ``({}, why)`` where the loss could not be built."""
    try:
        return loss_files(loss), None
    except Exception as exc:  # reported with the loss's name; the others go on
        return {}, f"{type(exc).__name__}: {exc}"


def build_files(report=None, jobs: int = 1) -> tuple[dict[str, str], dict[str, str]]:
    """``(files, failures)``: every loss's files, and loss → why it could not be built.

    One loss failing (a step that does not follow, a printer that refuses an
    expression) does not stop the others; ``report(loss)`` is called as each
    loss starts (``jobs = 1``) or is done (``jobs > 1``: the losses are built in
    that many forked processes, which inherit every registered loss; the files
    do not depend on it).
    """
    files: dict[str, str] = {}
    failures: dict[str, str] = {}
    for loss, (built, why) in _built(list(list_losses()), report, jobs):
        files.update(built)
        if why is not None:
            failures[loss] = why
    return dict(sorted(files.items())), dict(sorted(failures.items()))


def _built(losses: list[str], report, jobs: int):
    """``(loss, _one_loss(loss))`` for each loss, in this process or in ``jobs`` forked ones."""
    if min(jobs, len(losses)) <= 1:
        for loss in losses:
            if report is not None:
                report(loss)
            yield loss, _one_loss(loss)
        return
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(
            min(jobs, len(losses)), mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(_one_loss, loss): loss for loss in losses}
        for future in concurrent.futures.as_completed(futures):
            if report is not None:
                report(futures[future])
            yield futures[future], future.result()


def _default_jobs() -> int:
    """Processes for ``symce build``: one per core this process may use (fork only)."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def generated_files() -> dict[str, str]:
    """File name → content for every file of generated/, in a fixed order."""
    files, failures = build_files(jobs=_default_jobs())
    if failures:
        loss, why = next(iter(failures.items()))
        raise CommandFailure(f"loss {loss!r} could not be built: {why}")
    return files


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("generated"),
                        help="output folder, created if missing; a file or an unwritable "
                        "folder is refused before any work (default: generated)")
    parser.add_argument("--jobs", "-j", type=_jobs, default=None, metavar="N",
                        help="losses built side by side in N processes (default: one per "
                        "core; 1 builds them in this process); the files are the same")


def run(args: argparse.Namespace) -> int:
    output_folder(args.out)  # refused in a moment, not after seconds of deriving
    start = time.perf_counter()
    print("building documents and modules ...", file=sys.stderr)
    with terminal_progress("symce build: "):
        jobs = _default_jobs() if args.jobs is None else args.jobs
        files, failures = build_files(lambda loss: print(f"  {loss}", file=sys.stderr), jobs)
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
