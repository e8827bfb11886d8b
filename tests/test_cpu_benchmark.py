"""benchmarks/cpu_cross_entropy.py: a smoke run on the small shapes, so the script does not rot.

No timing is judged here (speed is shown in the README's table); the run must
finish, time every variant and write the results with the baselines the
ratios need, and the memory measurement must see a call's gradient.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "cpu_cross_entropy.py"


def test_quick_run_times_every_variant(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "SYMCE_BENCH_COMPILE": "0"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--shape", "kdim-16x500x8", "--rounds", "1",
         "--no-memory", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]["kdim-16x500x8"]
    times = results["times_s"]
    for option in ("plain", "weight", "ignore_index", "label_smoothing", "probs", "all"):
        assert f"numpy generated [{option}]" in times
        assert f"numpy generated, 1 thread [{option}]" in times
    for name in ("numpy hand-tuned", "numpy hand-tuned, K-dim layout",
                 "torch F.cross_entropy [plain]", "torch generated [all]",
                 "floor: read logits + write gradient", "floor: fresh copy (x.clone())",
                 "floor: exp (torch.exp(x, out=g))"):
        assert times[name] > 0
    assert "| numpy generated [probs] |" in proc.stdout


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("warm", [False, True], ids=["first-call", "after-warm-up"])
def test_peak_memory_counts_the_gradient(warm):
    """A fresh process's peak above its inputs includes the 64·1000·32 float32 gradient.

    The gradient is 7.8 MB: a smaller one can be carved from memory that
    importing and warming up freed (a few hundred KB), and rightly not count.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_cross_entropy", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gradient_mb = 64 * 1000 * 32 * 4 / 2**20
    extra = bench.peak_extra_mb("kdim-64x1000x32", "numpy generated, 1 thread [plain]", warm=warm)
    assert gradient_mb * 0.9 <= extra < gradient_mb + 20
