"""benchmarks/gpu_cross_entropy.py: skips cleanly without CUDA; its goals and table."""

import importlib.util
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_cross_entropy.py"
spec = importlib.util.spec_from_file_location("gpu_cross_entropy", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _rows(symce_ms):
    times = {"copy": 1.40, "eager": 6.26, "compile": 3.00, "liger": 2.53,
             "symce": symce_ms, "symce-inplace": symce_ms}
    return [dict(shape="8192 × 128256", dtype="bfloat16", name=name, ms=ms, extra_gb=0.0,
                 tbs=1.0, grad_error=0.0) for name, ms in times.items()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this is the no-CUDA path")
def test_without_cuda_it_says_so_and_exits_zero(capsys):
    assert bench.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.parametrize("symce_ms, met", [(1.55, True), (1.70, False)])
def test_goals_are_the_issue_ratios(symce_ms, met):
    results = bench.goals(_rows(symce_ms))
    assert [what for what, *_ in results] == ["symce / copy", "symce / liger", "symce / eager"]
    assert all(ok for *_, ok in results) is met


def test_markdown_table_names_the_device_and_ratio_to_copy():
    table = bench.markdown(_rows(1.55), "NVIDIA H100 80GB HBM3")
    assert table.startswith("GPU: NVIDIA H100 80GB HBM3")
    assert "| 8192 × 128256 | bfloat16 | symce | 1.55 | 1.11× |" in table


def test_logits_size():
    assert bench._logits_gb("bfloat16:8192:128256") == pytest.approx(2.101, abs=1e-3)
