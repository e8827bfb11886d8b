"""``symce generate``: the code generator's own command, with the output folder checked first.

The options are :mod:`symce.codegen.command`'s; this wrapper only refuses an
output folder that cannot be written, before anything is generated, in the
same words as ``doc`` and ``build``.
"""

from __future__ import annotations

import argparse

from symce.codegen import command as _codegen
from symce.commands._common import output_folder


def configure(parser: argparse.ArgumentParser) -> None:
    _codegen.configure(parser)
    for action in parser._actions:  # argparse has no public lookup of an added option
        if "--out" in action.option_strings and action.help:
            action.help += "; created if missing, a file or an unwritable folder is refused"


def run(args: argparse.Namespace) -> int:
    output_folder(args.out)
    return _codegen.run(args)
