"""``symce build``: one loss that fails to derive does not stop the others."""

from __future__ import annotations

import symce.commands.build as build
from symce.cli import main
from symce.losses import list_losses, register, unregister
from symce.losses.spec import Loss, Term
from symce.losses.targets import CLASSES


def _broken_loss() -> Loss:
    # a term with no logits in it: the engine refuses it while building the steps
    return Loss(name="broken_loss", description="a loss that cannot be derived",
                terms=(Term("broken", "Broken", lambda ctx: ctx.sum(ctx.c), "definition"),),
                targets=CLASSES)


def test_a_failing_loss_is_reported_and_the_others_are_written(tmp_path, capsys, monkeypatch):
    register(_broken_loss())
    try:
        # two losses keep the test short: the broken one and one that builds
        monkeypatch.setattr(build, "list_losses", lambda: {
            name: text for name, text in list_losses().items()
            if name in ("broken_loss", "kl_distillation")})
        status = main(["build", "--out", str(tmp_path)])
    finally:
        unregister("broken_loss")
    err = capsys.readouterr().err
    assert status == 1
    assert "symce build: error: loss 'broken_loss' was not built" in err
    assert "does not depend on the logits" in err
    assert "1 of 2 losses failed (broken_loss)" in err
    written = {p.name for p in tmp_path.iterdir()}
    assert {"kl_distillation_numpy.py", "kl_distillation_derivation.md"} <= written
    assert not any(name.startswith("broken_loss") for name in written)


def test_side_by_side_processes_build_the_same_files_and_failures(monkeypatch):
    register(_broken_loss())
    try:
        monkeypatch.setattr(build, "list_losses", lambda: {
            name: text for name, text in list_losses().items()
            if name in ("broken_loss", "kl_distillation")})
        seen: list[str] = []
        alone = build.build_files(jobs=1)
        forked = build.build_files(seen.append, jobs=2)
    finally:
        unregister("broken_loss")
    assert alone == forked
    assert set(forked[1]) == {"broken_loss"} and "kl_distillation_torch.py" in forked[0]
    assert sorted(seen) == ["broken_loss", "kl_distillation"]
