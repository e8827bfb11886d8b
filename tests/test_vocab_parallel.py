"""The vocabulary-parallel module on real gloo process groups, and its checked derivation.

One spawn of 4 processes on 127.0.0.1 runs every case on groups of 2, 3 and
4 ranks (``tests/vocab_parallel_worker.py``); the parent waits with a
deadline, so a rank left waiting on a collective fails the test instead of
hanging the suite.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import sympy as sp
import torch

from symce.engine.partition import CONCRETE_SPLIT, partition_derivation
from symce.errors import ProofError
from tests import vocab_parallel_worker as worker
from tests.parity import load_generated

WORLD = 4
DEADLINE = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(target, out) -> None:
    """Start ``WORLD`` ranks of ``worker.main``; kill them all past the deadline.

    Forked, not spawned: each child has torch imported already (a spawned one
    imports it again, seconds per rank); the children use one thread each."""
    import torch.multiprocessing as mp

    context = mp.start_processes(target, args=(WORLD, _free_port(), str(out)), nprocs=WORLD,
                                 join=False, start_method="fork")
    deadline = time.monotonic() + DEADLINE
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            raise AssertionError(f"the ranks did not finish in {DEADLINE:g} s (a hang?)")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab_parallel")
    import torch.distributed.tensor.parallel  # noqa: F401  (once here, not in every child)

    _spawned(worker.main, out)
    found = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    print("seconds per stage, rank 0:", found[0]["seconds"])
    return found


def test_every_case_on_every_rank(reports):
    expected = len(worker.CASES) * len(worker.REDUCTIONS)
    for rank, report in enumerate(reports):
        sizes = [int(s) for s in report["groups"]]
        assert sizes == [s for s in worker.SPLITS if rank < s]
        for group in report["groups"].values():
            assert group["cases"] == expected
        assert report["after_error"] == 2 * len(worker.REDUCTIONS)


def test_collectives_two_in_forward_none_in_backward(reports):
    for report in reports:
        for group in report["groups"].values():
            assert max(group["forward"]) <= 2 and min(group["forward"]) >= 1
            assert group["backward"] == [0]


def test_out_of_range_target_raises_on_every_rank(reports):
    for report in reports:
        for group in report["groups"].values():
            first, negative = group["out_of_range"]
            assert "outside the" in first and "classes" in first
            assert "outside the" in negative


def test_parity_with_dtensor_loss_parallel(reports):
    assert all(report["dtensor"] == 2 * len(worker.REDUCTIONS) for report in reports)


def test_bad_arguments_raise_clear_errors():
    vp = load_generated("cross_entropy_vocab_parallel_torch")
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="vocab_start"):
        vp.vocab_parallel_cross_entropy(x, y, vocab_start=-1)
    with pytest.raises(ValueError, match="weight"):
        vp.vocab_parallel_cross_entropy(x, y, vocab_start=0, weight=torch.ones(5))
    with pytest.raises(ValueError, match="outside the 4 classes"):
        vp.vocab_parallel_cross_entropy(x, torch.tensor([0, 4, 1]), vocab_start=0)
    with pytest.raises(ValueError, match="probability targets"):
        vp.vocab_parallel_cross_entropy(x, torch.rand(3, 5), vocab_start=0)
    with pytest.raises(ValueError, match="z_loss"):
        vp.vocab_parallel_cross_entropy(x, y, vocab_start=0, z_loss=-1.0)
    with pytest.raises(ValueError, match="group"):
        vp.vocab_parallel_cross_entropy(x, y, vocab_start=0, group="world")


def test_partition_steps_are_checked():
    symbolic = partition_derivation()
    concrete = partition_derivation(CONCRETE_SPLIT)
    assert [s.name for s in symbolic.steps] == ["class_sums", "lse", "slice_gradient"]
    assert concrete.n == sum(CONCRETE_SPLIT)
    vp = load_generated("cross_entropy_vocab_parallel_torch")
    assert vp.PARTITION_STEPS == tuple(s.name for s in (*symbolic.steps, *concrete.steps))


def test_a_wrong_combination_is_refused():
    symbolic = partition_derivation()
    lse = symbolic.step("lse")
    shift = sp.Symbol("M", real=True)
    with pytest.raises(ProofError):  # the shift forgotten
        symbolic.replace_step("lse", rhs=lse.rhs - shift, via=()).check()
    with pytest.raises(ProofError):  # the boundaries not stated: the sum does not telescope
        symbolic.replace_step("class_sums", assumptions=()).check()
    concrete = partition_derivation(CONCRETE_SPLIT)
    step = concrete.step("slice_gradient_concrete")
    c_3 = sp.Symbol("c_3", real=True)
    with pytest.raises(ProofError):  # the slice's own coefficient left out
        concrete.replace_step("slice_gradient_concrete", rhs=step.rhs + c_3).check()


def test_module_form_without_a_process_group():
    """Without an initialised group the slice is the whole vocabulary: F.cross_entropy."""
    import torch.nn.functional as F

    vp = load_generated("cross_entropy_vocab_parallel_torch")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, -100, 2, 3])
    w = torch.rand(6, generator=g, dtype=torch.float64)
    module = vp.VocabParallelCrossEntropyLoss(0, weight=w, label_smoothing=0.2)
    loss = module(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    x2 = x.detach().requires_grad_(True)
    want = F.cross_entropy(x2, y, weight=w, label_smoothing=0.2)
    want.backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, x2.grad, rtol=1e-12, atol=1e-12)
