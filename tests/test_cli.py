"""The command line end to end, as a user runs it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from symce.cli import main

GALLERY = Path(__file__).parent / "gallery"


def symce(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "symce", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


class _Ran:
    """What ``main(argv)`` did in this process, shaped like a finished subprocess."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_main(capsys, *args):
    """The CLI in this process (no interpreter start-up); a traceback would raise here."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return _Ran(code, out, err)


def assert_one_line_error(proc, command, status, message):
    """``symce <command>: error: …`` alone on stderr, the exit status, no traceback."""
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert message in lines[0], lines[0]


def test_help_lists_the_commands():
    proc = symce("--help")
    assert proc.returncode == 0
    for command in ("derive", "doc", "build"):
        assert command in proc.stdout


def test_derive_list():
    proc = symce("derive", "--list")
    assert proc.returncode == 0
    assert proc.stdout.startswith("cross_entropy\t")


def test_derive_concrete_prints_checked_steps():
    proc = symce("derive", "cross_entropy", "--n", "3")
    assert proc.returncode == 0, proc.stderr
    assert "Softmax Jacobian" in proc.stdout
    assert "q₁(1 − q₁)" in proc.stdout  # the 3-class Jacobian's first entry
    assert "steps checked" in proc.stderr


def test_derive_symbolic_is_the_default():
    proc = symce("derive")
    assert proc.returncode == 0, proc.stderr
    assert "symbolic number of classes n" in proc.stdout
    assert "normalised" in proc.stdout


@pytest.mark.parametrize(
    "args, command, message",
    [
        (("derive", "nope"), "symce derive", "unknown loss 'nope'"),
        (("derive", "--n", "0"), "symce derive", "argument --n: expected a positive integer"),
        (("derive", "--n", "three"), "symce derive", "positive integer"),
        (("doc", "--format", "docx"), "symce doc", "argument --format: invalid choice"),
        (("frobnicate",), "symce", "argument COMMAND: invalid choice: 'frobnicate'"),
        (("doc", "nope"), "symce doc", "unknown loss"),
        (("generate", "nope"), "symce generate", "unknown loss"),
        (("generate", "--backend", "fortran"), "symce generate", "invalid choice"),
        (("verify", "--dir", "/nonexistent/generated"), "symce verify", "no such folder"),
        (("check", "missing.py:f"), "symce check", "no such file: missing.py"),
        (("check", f"{GALLERY}/correct.py"), "symce check", "expected PATH.py:NAME"),
        (("check", f"{GALLERY}/broken_import.py:f"), "symce check", "importing"),
        (("check", f"{GALLERY}/correct.py:nothing"), "symce check", "has no attribute"),
        (("check", "x.py:f", "--timeout", "0"), "symce check", "positive number of seconds"),
        (("check", "x.py:f", "--timeout", "soon"), "symce check", "number of seconds"),
        (("check", "x.py:f", "--label-smoothing", "1.5"), "symce check", "in [0, 1]"),
        (("check", "x.py:f", "--weight", "heavy"), "symce check", "invalid choice"),
        (("check", "x.py:f", "--ignore-index", "a"), "symce check", "invalid int value"),
        (("check", "x.py:f", "--shapes", "3d"), "symce check", "2d, kdim, unbatched"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, args, command, message):
    assert_one_line_error(run_main(capsys, *args), command, 2, message)


@pytest.mark.parametrize(
    "args, command, message",
    [
        (("derive", "--n", "0"), "symce derive", "argument --n: expected a positive integer"),
        (("frobnicate",), "symce", "argument COMMAND: invalid choice: 'frobnicate'"),
        (("check", "missing.py:f"), "symce check", "no such file: missing.py"),
    ],
)
def test_usage_errors_through_python_m_symce(args, command, message):
    assert_one_line_error(symce(*args), command, 2, message)


def test_verify_checks_its_folder_before_printing_the_table():
    proc = symce("verify", "--dir", "/nonexistent/generated")
    assert proc.stdout == ""  # no table header before the error
    assert_one_line_error(proc, "symce verify", 2, "--dir /nonexistent/generated")


def test_verify_names_a_missing_module(tmp_path):
    proc = symce("verify", "--dir", str(tmp_path))
    assert proc.stdout == ""
    assert_one_line_error(proc, "symce verify", 2, "cross_entropy_numpy.py does not exist")


def test_verify_reports_a_module_that_does_not_import(tmp_path):
    (tmp_path / "cross_entropy_numpy.py").write_text("raise ImportError('half written')\n")
    (tmp_path / "cross_entropy_torch.py").write_text("\n")
    proc = symce("verify", "--dir", str(tmp_path), "--backend", "numpy")
    assert proc.stdout == ""
    assert_one_line_error(proc, "symce verify", 1, "ImportError: half written")


# -- output folders: refused before any work, in one line --------------------
def _blocked_paths(tmp_path):
    """(label, path): places no folder can be written, whoever runs the tests."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    paths = [("a file", a_file, "is a file, not a folder"),
             ("under a file", a_file / "out", "cannot create the folder")]
    if sys.platform.startswith("linux"):  # procfs refuses new entries even to root
        paths += [("in /proc", Path("/proc/symce-out"), "cannot create the folder"),
                  ("/proc itself", Path("/proc"), "cannot write into the folder")]
    return paths


@pytest.mark.parametrize("command", ["doc", "generate", "build"])
def test_unusable_output_folder_is_refused_in_one_line(tmp_path, capsys, command):
    for label, path, message in _blocked_paths(tmp_path):
        proc = run_main(capsys, command, "--out", str(path))
        assert_one_line_error(proc, f"symce {command}", 2, f"--out {path}: {message}")
        assert proc.stdout == "", label
        # refused before any work: build says when it starts deriving, and did not
        assert "building" not in proc.stderr and "deriving" not in proc.stderr, label


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders; /proc covers that case")
def test_read_only_output_folder_is_refused(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = symce("doc", "--out", str(folder))
    finally:
        folder.chmod(0o755)
    assert_one_line_error(proc, "symce doc", 2, "cannot write into the folder")


def test_missing_output_folder_is_created(tmp_path):
    out = tmp_path / "new" / "docs"
    proc = symce("doc", "--format", "md", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "cross_entropy_derivation.md").is_file()


def test_missing_pdflatex_is_a_failure_said_before_deriving(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no pdflatex on it
    proc = symce("doc", "--format", "pdf", "--out", str(tmp_path / "pdf"), env=env)
    assert_one_line_error(proc, "symce doc", 1, "pdflatex not found")
    assert "deriving" not in proc.stderr


def test_a_proof_error_is_a_failure_in_one_line(monkeypatch, capsys):
    from symce.commands import derive as derive_command
    from symce.errors import ProofError

    def broken(loss, n=None):
        raise ProofError("step 3 'shift' does not follow: a = b is not proved")

    monkeypatch.setattr(derive_command, "derive", broken)
    assert main(["derive"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (  # after the progress line "deriving ..."
        "symce derive: error: proof failed: step 3 'shift' does not follow: a = b is not proved"
    )


def test_a_failing_write_is_a_failure_in_one_line(tmp_path, capsys):
    (tmp_path / "cross_entropy_derivation.md").mkdir()  # the document's name is taken
    assert main(["doc", "--format", "md", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("deriving")  # the progress line, then the error alone
    assert len(err) == 2 and err[1].startswith("symce doc: error: ") and "Is a directory" in err[1]


@pytest.mark.parametrize("fmt", ["tex", "md"])
def test_doc_writes_the_document(tmp_path, fmt):
    proc = symce("doc", "--format", fmt, "--out", str(tmp_path / "docs"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "docs" / f"cross_entropy_derivation.{fmt}").read_text()
    assert "Softmax Jacobian" in text
    assert "Generated by symce" in text


def test_build_in_another_process_gives_the_committed_bytes(tmp_path):
    """A build in a fresh process, another hash seed and one job, writes byte for
    byte what generated/ holds (which test_generated_in_sync builds in this process,
    side by side: two independent builds, not one compared with itself)."""
    out = tmp_path / "a"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = symce("build", "--out", str(out), "--jobs", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    generated = Path(__file__).resolve().parent.parent / "generated"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in generated.iterdir() if p.is_file())
    assert "cross_entropy_derivation.tex" in names
    for name in names:
        assert (out / name).read_bytes() == (generated / name).read_bytes(), name


@pytest.mark.slow
def test_latex_compiles_to_pdf(tmp_path):
    if shutil.which("pdflatex") is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("pdflatex missing in CI: .ci/run must install texlive-latex-base")
        pytest.skip("pdflatex not installed")
    proc = symce("doc", "--format", "pdf", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    pdf = tmp_path / "cross_entropy_derivation.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
