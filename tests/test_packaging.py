"""An installed wheel finds its templates: build it, install it in a fresh venv, render."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_renders_documents_outside_the_source_tree(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist),
                            str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel = next(dist.glob("symce-*.whl"))
    env = tmp_path / "venv"
    # The venv reuses this interpreter's sympy/torch/jinja2 but not the symce source tree.
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env)
    python = env / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall",
                              "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    script = ("import symce, pathlib; from symce.render import templates_dir; "
              "print(templates_dir()); print(symce.derive(n=2).to_markdown()[:400])")
    # a PYTHONPATH naming the source tree (how a worktree is tested) would win over the wheel
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(python), "-c", script], cwd=work, capture_output=True,
                          text=True, timeout=300, env=clean)
    assert proc.returncode == 0, proc.stderr
    where = Path(proc.stdout.splitlines()[0])
    assert "site-packages" in str(where) and ROOT not in where.parents
    assert "machine-checked derivation" in proc.stdout
