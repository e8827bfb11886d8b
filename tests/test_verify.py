"""``symce verify``: passes on generated/, fails (exit 1) on a wrong module."""

import shutil
from pathlib import Path

from symce.cli import main

GENERATED = Path(__file__).resolve().parent.parent / "generated"


def test_verify_passes_on_generated(capsys):
    # one loss per target model through each backend that runs here (the full
    # table, every loss and backend, is `symce verify`; CI's README command runs it)
    assert main(["verify", "-q", "--loss", "kl_distillation"]) == 0
    assert main(["verify", "-q", "--loss", "focal_loss", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "cases agree with torch autograd of each loss's definition" in out


def test_verify_fails_on_a_wrong_module(tmp_path, capsys):
    name = "cross_entropy_numpy.py"
    shutil.copy(GENERATED / name, tmp_path / name)
    module = tmp_path / name
    source = module.read_text()
    assert "np.log(sum_e)" in source
    module.write_text(source.replace("np.log(sum_e)", "np.log(sum_e * 1.001)"))
    assert main(["verify", "--dir", str(tmp_path), "--backend", "numpy", "--loss",
                 "cross_entropy", "-q"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_reports_a_missing_module(tmp_path, capsys):
    assert main(["verify", "--dir", str(tmp_path)]) == 2
    assert "symce build" in capsys.readouterr().err
