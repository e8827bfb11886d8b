"""``symce verify``: passes on generated/, fails (exit 1) on a wrong module."""

import shutil
from pathlib import Path

from symce.cli import main

GENERATED = Path(__file__).resolve().parent.parent / "generated"


def test_verify_passes_on_generated(capsys):
    assert main(["verify", "-q"]) == 0
    out = capsys.readouterr().out
    assert "cases agree with torch.nn.functional.cross_entropy" in out


def test_verify_fails_on_a_wrong_module(tmp_path, capsys):
    for name in ("cross_entropy_numpy.py", "cross_entropy_torch.py"):
        shutil.copy(GENERATED / name, tmp_path / name)
    numpy_module = tmp_path / "cross_entropy_numpy.py"
    source = numpy_module.read_text()
    assert "np.log(sum_e)" in source
    numpy_module.write_text(source.replace("np.log(sum_e)", "np.log(sum_e * 1.001)"))
    assert main(["verify", "--dir", str(tmp_path), "--backend", "numpy", "-q"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_reports_a_missing_module(tmp_path, capsys):
    assert main(["verify", "--dir", str(tmp_path)]) == 2
    assert "symce build" in capsys.readouterr().err
