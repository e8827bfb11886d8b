"""What a command reports when it cannot do its job: one line, ``symce <command>: error: …``.

:class:`UsageError` (exit status 2): the command line asks for something that
cannot be done as asked (an unknown loss, a bad option value, an output folder
that is a file).  :class:`CommandFailure` (exit status 1): the command was
asked properly and failed while doing it (pdflatex missing or failing, a file
that could not be written, a derivation step that does not follow).
:func:`symce.cli.main` prints both; no command prints them itself.
"""

from __future__ import annotations


class CommandFailure(Exception):
    """The command failed; reported in one line, exit status 1."""

    exit_status = 1


class UsageError(CommandFailure):
    """Bad command-line usage; reported in one line, exit status 2."""

    exit_status = 2
