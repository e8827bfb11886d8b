"""The worker process of ``symce check``: started by :data:`symce.checker.runner.WORKER`.

It answers :class:`symce.checker.runner.SubprocessRunner`: a ``("ready",)``
once numpy (and torch, for the torch backend) are imported, then
``("loaded",)`` or ``("usage", message)`` for a ``("load", "PATH.py:NAME")``,
then one
:class:`~symce.checker.adapter.Outcome` per ``("call", logits, target, dtype,
options)``, until its stdin closes.  The messages travel on a copy of the
original stdout; stdout itself then points at stderr, and stdin at the null
device, so that the implementation's prints and reads cannot touch them.

It is run from its file, with :mod:`symce.checker.adapter` loaded from its
file too, not through the ``symce`` package: importing that package imports
SymPy, and the worker needs only NumPy (and torch).  For the same reason the
outcomes travel as dicts of plain values.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path


def _private_streams():
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    sys.stdout.flush()
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return requests, replies


def end_with_parent(interval: float = 0.5) -> None:
    """Exit as soon as the process that started this one is gone.

    A parent killed outright (SIGKILL, a crash) cannot end its worker, and a
    worker busy in an endless call would never read the end of its input: it
    would spin on, an orphan holding the parent's stderr.  A daemon thread
    notices the parent's death (this process is reparented) and exits.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="symce-check-parent-watch", daemon=True).start()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends this process
    end_with_parent()
    requests, replies = _private_streams()

    def reply(message: object) -> None:
        pickle.dump(message, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()

    backend = sys.argv[1]
    if backend == "torch":  # before "ready": only the user's own import is timed
        import torch

        torch.set_num_threads(1)  # tiny tensors: threads would only cost
    adapter = _load_adapter()
    reply(("ready",))
    fn = None
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            return 0
        if message[0] == "load":
            _, spec = message
            try:
                fn = adapter.load(spec)
            except adapter.CheckUsageError as exc:
                reply(("usage", str(exc)))
                return 0
            reply(("loaded",))
        else:
            _, logits, target, dtype, options = message
            outcome = adapter.call(fn, backend, logits, target, dtype, options)
            reply(dataclasses.asdict(outcome))


def _load_adapter():
    path = Path(__file__).with_name("adapter.py")
    spec = importlib.util.spec_from_file_location("_symce_check_adapter", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
