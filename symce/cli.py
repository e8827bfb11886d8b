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

#: subcommand → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "derive": ("symce.commands.derive", "print the checked derivation of a loss"),
    "doc": ("symce.commands.doc", "write the derivation as LaTeX, Markdown or PDF"),
    "generate": ("symce.codegen.command", "generate backend code (numpy, torch, ...)"),
    "build": ("symce.commands.build", "regenerate everything that belongs in generated/"),
    "verify": ("symce.verify.command", "check generated code against torch autograd"),
    "check": ("symce.checker.command", "check your own loss implementation"),
}


class UsageError(Exception):
    """Bad command-line usage: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


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
            sub_parser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from symce.errors import ProofError, UnknownLossError

    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(argv).parse_args(argv)
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (UnknownLossError, ValueError) as exc:
        if isinstance(exc, ProofError):
            print(f"symce: proof error: {exc}", file=sys.stderr)
            return 1
        print(f"symce: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("symce: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
