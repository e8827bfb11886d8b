"""The vocabulary-parallel module's Triton kernels (``backend="triton"``) in Triton's interpreter.

CPU tensors with ``TRITON_INTERPRET=1`` (set here before triton is imported),
float32 work (and float64 without a group), small shapes (6 rows × 7 classes,
class tiles of four, so the slice's online maximum crosses tiles), against
float64 references on the whole logits (``F.cross_entropy``; the generated
``cross_entropy_torch`` for z-loss and soft-capping) by
``tests/vocab_parallel_worker.py``'s ``run_cases``: without a group (the slice
is the whole vocabulary) and on a gloo group of 2 ranks (uneven slices, one of
a single class; 2 collectives in the forward, none in the backward).
``last_backend`` must say the Triton kernels ran, and the torch fallbacks (a
slice of no class, a row of no finite logit on the slice) must run as with the
C kernels, the other rank on the kernels.
"""

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

if not isinstance(triton.language.cdiv, InterpretedFunction):
    pytest.skip("triton was imported for the GPU before this file could set TRITON_INTERPRET=1;"
                " run it on its own", allow_module_level=True)

from tests import vocab_parallel_worker as worker  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:(divide by zero|invalid value|overflow) encountered:RuntimeWarning")

#: plain; weights + smoothing + ignore_index; probability targets with weights and
#: smoothing; every option with class indices (and K-dim positions); every option with
#: probability targets
CASES = [worker.CASES[i] for i in (0, 5, 7, 8, 13, 14)]
DEADLINE = 240.0


def _module():
    vp = worker.load("cross_entropy_vocab_parallel_torch")
    vp._TRITON_MAX_BLOCK_C = 4  # 7 classes in two tiles: the online rescale runs
    return vp


@pytest.fixture
def vp():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the interpreter is numpy-bound; share the machine
    yield _module()
    torch.set_num_threads(threads)
    worker.Counter.restore()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_whole_vocabulary(vp, dtype):
    """No group: every case and reduction on the Triton kernels (float32 work to float32
    tolerances; float64 work, accumulated in float64, to 1e-12 / 1e-10)."""
    counts = worker.run_cases(vp, None, 0, (7,), worker.Counter(), CASES, dtype, "triton")
    assert counts["cases"] == len(CASES) * len(worker.REDUCTIONS)
    assert counts["backends"] == ["triton/triton"]
    assert counts["forward"] == [0] and counts["backward"] == [0]


def test_head_whole_vocabulary(vp):
    """The fused head (``vocab_parallel_linear_cross_entropy``) on the Triton kernels: each
    chunk's logits through the same slice kernels, against float64 autograd of the head."""
    counts = worker.run_head_cases(vp, None, 0, (7,), worker.Counter(), torch.float32,
                                   "triton")
    assert counts["cases"] == len(worker.HEAD_CASES) * 4
    assert counts["backends"] == ["triton/triton"]


def test_triton_needs_the_interpreter_for_cpu_tensors():
    """Without ``TRITON_INTERPRET=1``, ``backend="triton"`` refuses CPU tensors clearly (a
    fresh process: triton reads the variable when imported)."""
    import subprocess

    code = ("import torch\n"
            "from tests import vocab_parallel_worker as worker\n"
            "vp = worker.load('cross_entropy_vocab_parallel_torch')\n"
            "try:\n"
            "    vp.vocab_parallel_cross_entropy(torch.randn(2, 3), torch.tensor([0, 2]),\n"
            "                                    vocab_start=0, backend='triton')\n"
            "except ValueError as exc:\n"
            "    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    found = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, text=True,
                           capture_output=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert "TRITON_INTERPRET=1" in found.stdout, found.stdout


def test_auto_keeps_cpu_tensors_off_triton(vp):
    """``"auto"`` picks the Triton kernels for CUDA tensors only: CPU ones run C or torch."""
    x = torch.randn(4, 7, requires_grad=True)
    vp.vocab_parallel_cross_entropy(x, torch.tensor([1, 0, 3, 6]), vocab_start=0).backward()
    assert vp.last_backend["forward"] in ("c", "torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        vp.vocab_parallel_cross_entropy(x, torch.tensor([1, 0, 3, 6]), vocab_start=0,
                                        backend="cuda")


def _masked_slice(vp, rank: int) -> dict:
    """Row 0's logits ``-inf`` on rank 0's whole slice (its one class), float32: that
    rank's forward runs the torch code (shifted by ``-inf`` its sums would be NaN)."""
    sizes = worker.SPLITS[2]
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(5, sum(sizes), generator=g, dtype=torch.float64)
    x[0, 0] = -torch.inf
    x[1, 3:5] = -torch.inf  # on rank 1: not its whole slice
    target = torch.tensor([2, 6, 3, 4, 1])
    start = sum(sizes[:rank])
    local = x[:, start:start + sizes[rank]].float().requires_grad_(True)
    loss = vp.vocab_parallel_cross_entropy(local, target, vocab_start=start, backend="triton")
    loss.backward()
    full = x.clone().requires_grad_(True)
    want = F.cross_entropy(full, target)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(local.grad.double(), full.grad[:, start:start + sizes[rank]],
                               rtol=1e-4, atol=2e-6)
    return dict(vp.last_backend)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        vp, counter = _module(), worker.Counter()
        report = {"cases": worker.run_cases(vp, None, rank, worker.SPLITS[world], counter,
                                            CASES, torch.float32, "triton"),
                  # rank 0's slice holds no class: the torch code there, no error
                  "empty": worker.run_cases(vp, None, rank, (0, 7), counter, CASES[:2],
                                            torch.float32, "triton"),
                  "masked": _masked_slice(vp, rank)}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(report, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks(tmp_path):
    """A gloo group of 2 (slices of 1 and 6 classes): every case on the Triton kernels,
    2 collectives in each forward, none in a backward; the fallbacks on one rank."""
    world = 2
    worker.spawn_ranks(_rank, world, tmp_path, DEADLINE)
    for rank in range(world):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        cases = report["cases"]
        assert cases["cases"] == len(CASES) * len(worker.REDUCTIONS)
        assert cases["backends"] == ["triton/triton"], report
        assert cases["forward"] == [2] and cases["backward"] == [0], report
        # the empty slice's rank runs torch, the other the kernels; the same collectives
        assert report["empty"]["backends"] == [["torch/torch"], ["triton/triton"]][rank]
        assert report["empty"]["forward"] == [2] and report["empty"]["backward"] == [0]
        masked = {"forward": ["torch", "triton"][rank], "backward": ["torch", "triton"][rank]}
        assert report["masked"] == masked, report
