"""Users' own losses on the command line, for every command.

``--formula F --name NAME [--param k=v …]`` defines a loss with
:func:`symce.define_loss` and makes it the command's loss; ``--loss-file
FILE.py`` imports a Python file that defines losses (``symce.define_loss`` or
a full declaration registered with ``symce.losses.register``) before the
command line is read, so its losses are known to every option.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from symce.commands.errors import UsageError

FORMULA_HELP = (
    "your own loss: the per-row value as a formula in q (softmax), p (target "
    "coefficients), x (logits), n (classes), sum(...), exp, log, sqrt and the --param "
    "names, e.g. --formula='-sum(p*log(q))' (a formula that starts with '-' must be "
    "written with '=', argparse's rule for values that look like options); needs --name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--formula``, ``--name``, ``--param`` (unless the command has its own) and
    ``--loss-file`` for one subcommand."""
    group = parser.add_argument_group("your own loss")
    group.add_argument("--formula", metavar="F", default=None, help=FORMULA_HELP)
    group.add_argument("--name", metavar="NAME", default=None,
                       help="the name of the --formula loss (an identifier; the generated "
                       "files are NAME_numpy.py ...)")
    if not any("--param" in a.option_strings for a in parser._actions):
        group.add_argument("--param", action="append", default=None, metavar="NAME=VALUE",
                           help="a parameter of the --formula loss and its default value "
                           "(repeat for several)")
        parser.set_defaults(_param_of_formula=True)  # nothing else reads it
    else:  # symce check: its --param values are the formula's defaults and the values checked
        group.description = ("--param NAME=VALUE also declares the --formula loss's "
                             "parameters, with VALUE as the default")
    group.add_argument("--loss-file", metavar="FILE.py", default=None, type=Path,
                       help="a Python file that defines losses (symce.define_loss or "
                       "symce.losses.register), imported first")
    repeated = any("--loss" in a.option_strings and isinstance(a, argparse._AppendAction)
                   for a in parser._actions)
    parser.set_defaults(_losses_listed=repeated)


def explain(message: str) -> str:
    """argparse's complaint, with the way out where a formula starts with ``-``."""
    if message == "argument --formula/-F: expected one argument" or message == (
            "argument --formula: expected one argument"):
        return (f"{message} (a formula that starts with '-' is written with '=': "
                "--formula='-sum(p*log(q))')")
    return message


#: the --loss-file paths :func:`preload` imported (this process)
_PRELOADED: set[Path] = set()


def preload(argv: Sequence[str]) -> None:
    """Import the ``--loss-file`` named in ``argv`` (before the parser lists the losses)."""
    for k, arg in enumerate(argv):
        if arg == "--loss-file" and k + 1 < len(argv):
            load_loss_file(Path(argv[k + 1]))
            _PRELOADED.add(Path(argv[k + 1]))
        elif arg.startswith("--loss-file="):
            load_loss_file(Path(arg.partition("=")[2]))
            _PRELOADED.add(Path(arg.partition("=")[2]))


def load_loss_file(path: Path) -> None:
    """Import ``path``; its losses register themselves."""
    if not path.is_file():
        raise UsageError(f"--loss-file {path}: no such file")
    name = f"symce_user_losses_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--loss-file {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(f"--loss-file {path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def parameters(texts: Sequence[str] | None) -> dict[str, float]:
    """``["lam=1e-4"]`` → ``{"lam": 1e-4}`` (a ``UsageError`` for a malformed pair)."""
    values: dict[str, float] = {}
    for text in texts or ():
        name, sep, raw = text.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise UsageError(f"--param expects NAME=VALUE, got {text!r}")
        if name in values:
            raise UsageError(f"--param {name} is given twice ({name}={values[name]:g} and "
                             f"{text!r}); give each parameter once")
        try:
            values[name] = float(raw)
        except ValueError:
            raise UsageError(f"--param {name}: expected a number, got {raw!r}") from None
    return values


def apply(args: argparse.Namespace) -> None:
    """Define the ``--formula`` loss and make it the command's loss (``--loss-file``:
    imported already, by :func:`preload`)."""
    formula, name = getattr(args, "formula", None), getattr(args, "name", None)
    loss_file = getattr(args, "loss_file", None)
    if loss_file is not None and loss_file not in _PRELOADED:
        # argparse took an abbreviation (``--loss X``, ``--loss-f X``) for --loss-file,
        # which preload does not see: the file was not imported, and a command that
        # takes its loss as an argument would go on silently with the default loss
        raise UsageError(f"{str(loss_file)!r} was read as --loss-file (from an abbreviation "
                         "such as --loss): write --loss-file in full to import a file of "
                         "losses; a command's loss is its argument, e.g. symce generate "
                         "focal_loss")
    if formula is None and getattr(args, "param", None) and getattr(
            args, "_param_of_formula", False):
        raise UsageError("--param declares the parameters of a --formula loss; give "
                         "--formula and --name (a registered loss's parameters are not "
                         "set by this command)")
    if formula is None:
        if name is not None:
            raise UsageError("--name names a --formula loss; give --formula too (or pass a "
                             "registered loss by its name)")
        return
    if name is None:
        raise UsageError("--formula needs --name NAME (the loss's name, an identifier)")
    from symce.losses import get_loss
    from symce.losses._define import define_loss

    try:
        define_loss(name, formula, params=parameters(args.param))
    except ValueError as exc:
        try:
            get_loss(name)
            raise UsageError(f"--name {name}: a registered loss has that name; choose "
                             "another") from None
        except LookupError:
            raise UsageError(f"--formula: {exc}") from None
    args.loss = [name] if getattr(args, "_losses_listed", False) else name
