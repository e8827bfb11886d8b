"""generated/ is exactly what `symce build` writes today."""

import difflib
from pathlib import Path

from symce.commands.build import generated_files

GENERATED = Path(__file__).resolve().parent.parent / "generated"


def test_generated_folder_matches_build_output():
    expected = generated_files()
    present = sorted(p.name for p in GENERATED.iterdir() if p.is_file())
    assert present == sorted(expected), "run `symce build` to refresh generated/"
    for name, text in expected.items():
        current = (GENERATED / name).read_text(encoding="utf-8")
        if current != text:
            diff = "".join(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True),
                f"generated/{name}", f"symce build/{name}", n=2))
            raise AssertionError(f"generated/{name} is stale; run `symce build`\n{diff[:4000]}")
