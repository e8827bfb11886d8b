"""The ``symce`` command line.

Each subcommand is a module with ``configure(parser)`` and ``run(args) -> int``;
the table below maps names to modules, so a new command is one line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from symce._version import __version__
from symce.commands import _user as user_loss
from symce.commands.errors import CommandFailure, UsageError

__all__ = ["COMMANDS", "CommandFailure", "UsageError", "build_parser", "main"]

#: subcommand → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "derive": ("symce.commands.derive", "print the checked derivation of a loss"),
    "doc": ("symce.commands.doc", "write the derivation as LaTeX, Markdown or PDF"),
    "generate": ("symce.commands.generate", "generate backend code (numpy, torch, ...)"),
    "build": ("symce.commands.build", "regenerate everything that belongs in generated/"),
    "verify": ("symce.verify.command", "check generated code against torch autograd"),
    "check": ("symce.checker.command", "check your own loss implementation"),
}


class _ParserError(UsageError):
    """argparse's own complaint, about the (sub)command named in ``prog``."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise _ParserError(self.prog, message)


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (torch is slow to load)."""
    parser = _Parser(
        prog="symce",
        description="Derive softmax / cross-entropy gradients symbolically, check every "
        "step, write proof documents and generate verified backend code.",
    )
    parser.add_argument("--version", action="version", version=f"symce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name.rsplit(".", 1)[0]) is None:
            continue  # command not built yet
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(sub_parser)
            user_loss.add_arguments(sub_parser)
            sub_parser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every anticipated error is one line on stderr, never a traceback.

    The line is argparse's ``symce <command>: error: …``; usage errors exit 2,
    failures (a proof that does not check, pdflatex failing, a write that
    fails) exit 1.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = "symce"
    try:
        chosen = _chosen_command(argv)
        if chosen in COMMANDS:
            prog = f"symce {chosen}"
        user_loss.preload(argv)  # a --loss-file's losses, before the parser lists them
        args = build_parser(argv).parse_args(argv)
        prog = f"symce {args.command}"
        user_loss.apply(args)
        return int(args.run(args) or 0)
    except _ParserError as exc:
        return _report(exc.prog, user_loss.explain(str(exc)), exc.exit_status)
    except CommandFailure as exc:
        return _report(prog, str(exc), exc.exit_status)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        known = _known_error(exc)
        if known is None:
            raise  # a bug in symce: the traceback is what its report needs
        return _report(prog, *known)


def _known_error(exc: Exception) -> tuple[str, int] | None:
    """``(message, exit status)`` for the errors that symce raises on purpose."""
    from symce.errors import ProofError, UnknownLossError

    if isinstance(exc, ProofError):
        return f"proof failed: {exc}", 1
    if isinstance(exc, (UnknownLossError, ValueError)):  # bad input, said by the library
        return str(exc), 2
    if isinstance(exc, OSError):  # reading or writing a file failed midway
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}", 1
    return None


def _report(prog: str, message: str, status: int) -> int:
    first, *rest = str(message).strip().splitlines() or [""]
    print(f"{prog}: error: {first}", file=sys.stderr)
    for line in rest:  # details (a tool's log), after the one line that says what failed
        print(f"  {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
