"""The vocabulary-parallel module on real gloo process groups, and its checked derivation.

One spawn of 4 processes on 127.0.0.1 runs every case on groups of 2, 3 and
4 ranks (``tests/vocab_parallel_worker.py``); the parent waits with a
deadline, so a rank left waiting on a collective fails the test instead of
hanging the suite.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab_parallel")
    import torch.distributed.tensor.parallel  # noqa: F401  (once here, not in every child)

    started = time.perf_counter()
    alone = worker.prebuild()
    print(f"compiled cases without a group (and their kernels built): "
          f"{time.perf_counter() - started:.1f} s")
    worker.spawn_ranks(worker.main, WORLD, out, DEADLINE)
    found = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    print("seconds per stage, rank 0:", found[0]["seconds"])
    return {"ranks": found, "alone": alone}


def test_every_case_on_every_rank(reports):
    expected = len(worker.CASES) * len(worker.REDUCTIONS)
    for rank, report in enumerate(reports["ranks"]):
        sizes = [int(s) for s in report["groups"]]
        assert sizes == [s for s in worker.SPLITS if rank < s]
        for group in report["groups"].values():
            assert group["cases"] == expected
            assert group["compiled"]["cases"] == len(worker.COMPILED) * len(worker.REDUCTIONS)
        assert report["after_error"] == 2 * len(worker.REDUCTIONS)


def test_collectives_two_in_forward_none_in_backward(reports):
    for report in reports["ranks"]:
        for group in report["groups"].values():
            for run in (group, group["compiled"]):
                assert max(run["forward"]) <= 2 and min(run["forward"]) >= 1
                assert run["backward"] == [0]


def test_the_compiled_kernels_ran_in_float32(reports):
    """backend="c" ran the C kernels forward and backward on every rank (it raises where
    they do not apply), exact to float32 against float64 references (checked in the
    ranks), on groups of 2, 3 and 4 and without a group."""
    assert reports["alone"]["backends"] == ["c/c"]
    assert reports["alone"]["cases"] == len(worker.COMPILED) * len(worker.REDUCTIONS)
    for report in reports["ranks"]:
        for group in report["groups"].values():
            assert group["compiled"]["backends"] == ["c/c"]


def test_float64_falls_back_to_the_torch_code(reports):
    for report in reports["ranks"]:
        for group in report["groups"].values():
            assert group["backends"] == ["torch/torch"]


def test_fused_head_every_case_on_every_rank(reports):
    """vocab_parallel_linear_cross_entropy (the head's weight sharded by vocabulary rows)
    equals the loss of h @ W.T + b on the whole weight, with dh, this rank's rows of dW
    and db (checked in the ranks: float64 on the torch code to 1e-10, float32 on the
    compiled kernels), on groups of 2, 3 and 4 with a one-class slice."""
    runs = len(worker.HEAD_CASES) * 4
    for report in reports["ranks"]:
        for group in report["groups"].values():
            assert group["head"]["cases"] == runs
            assert group["head_compiled"]["cases"] == runs
            assert group["head"]["backends"] == ["torch/torch"]
            assert group["head_compiled"]["backends"] == ["c/c"]


def test_fused_head_collectives(reports):
    """Two all-reduces per chunk of rows in the forward (one more to agree on the chunk
    size where it is not given); the backward's one is dh's, only with reduce_input_grad."""
    for report in reports["ranks"]:
        for group in report["groups"].values():
            for run in (*group["head"]["runs"], *group["head_compiled"]["runs"]):
                forward, backward, chunks, agreed, reduce_input_grad = run
                assert forward == 2 * chunks + (1 if agreed else 0)
                assert backward == (1 if reduce_input_grad else 0)


def test_fused_head_input_gradient_shares_sum_to_dh(reports):
    """Without reduce_input_grad each rank's dh is its slice's share: over the ranks of a
    group they add up to the whole input gradient."""
    for size in worker.SPLITS:
        ranks = [r for r in reports["ranks"] if str(size) in r["groups"]]
        assert len(ranks) == size
        for kind in ("head", "head_compiled"):
            shares = [torch.tensor(r["groups"][str(size)][kind]["dh_shares"],
                                   dtype=torch.float64) for r in ranks]
            wanted = torch.tensor(ranks[0]["groups"][str(size)][kind]["dh_wanted"],
                                  dtype=torch.float64)
            tolerance = 1e-10 if kind == "head" else 2e-5
            torch.testing.assert_close(sum(shares), wanted, rtol=tolerance, atol=tolerance)


def test_fused_head_bad_arguments_raise_clear_errors():
    vp = load_generated("cross_entropy_vocab_parallel_torch")
    h, w, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 4])
    head = vp.vocab_parallel_linear_cross_entropy
    with pytest.raises(ValueError, match="hidden size 3 is not"):
        head(torch.randn(3, 3), w, y, vocab_start=0)
    with pytest.raises(ValueError, match=r"local_linear_bias must be this rank's \(5,\)"):
        head(h, w, y, vocab_start=0, local_linear_bias=torch.zeros(4))
    with pytest.raises(ValueError, match="class-index target must have shape"):
        head(h, w, torch.tensor([0, 1]), vocab_start=0)
    with pytest.raises(ValueError, match="outside the 5 classes"):
        head(h, w, torch.tensor([0, 5, 1]), vocab_start=0)
    with pytest.raises(ValueError, match="probability targets must be this rank's slice"):
        head(h, w, torch.rand(3, 4), vocab_start=0)
    with pytest.raises(ValueError, match="chunk_rows must be"):
        head(h, w, y, vocab_start=0, chunk_rows=0)
    with pytest.raises(ValueError, match="reduce_input_grad must be"):
        head(h, w, y, vocab_start=0, reduce_input_grad=1)
    with pytest.raises(ValueError, match=r"\(V_r, H\)"):
        head(h, torch.randn(5), y, vocab_start=0)


def test_fused_head_module_and_half_precision():
    """The nn.Module, and a bfloat16 head worked in float32 (its gradients in bfloat16)."""
    import torch.nn.functional as F

    vp = load_generated("cross_entropy_vocab_parallel_torch")
    g = torch.Generator().manual_seed(8)
    h = torch.randn(2, 3, 6, generator=g).to(torch.bfloat16).requires_grad_(True)
    w = torch.randn(9, 6, generator=g).to(torch.bfloat16).requires_grad_(True)
    y = torch.randint(0, 9, (2, 3), generator=g)
    module = vp.VocabParallelLinearCrossEntropyLoss(vocab_start=0, label_smoothing=0.1)
    loss = module(h, w, y)
    loss.backward()
    assert loss.dtype == h.grad.dtype == w.grad.dtype == torch.bfloat16
    hr, wr = (t.detach().double().requires_grad_(True) for t in (h, w))
    want = F.cross_entropy((hr @ wr.T).reshape(6, 9), y.reshape(-1), label_smoothing=0.1)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(h.grad.double(), hr.grad, rtol=2e-2, atol=4e-3)
    torch.testing.assert_close(w.grad.double(), wr.grad, rtol=2e-2, atol=4e-3)


def test_backend_choice_and_its_errors():
    vp = load_generated("cross_entropy_vocab_parallel_torch")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, generator=g)
    y = torch.tensor([0, 8, 3, -100])
    with pytest.raises(ValueError, match="backend must be one of"):
        vp.vocab_parallel_cross_entropy(x, y, vocab_start=0, backend="cuda")
    with pytest.raises(ValueError, match="float32 work on the CPU"):
        vp.vocab_parallel_cross_entropy(x.double(), y, vocab_start=0, backend="c")
    losses = {}
    for backend in ("torch", "auto"):
        xr = x.clone().requires_grad_(True)
        loss = vp.vocab_parallel_cross_entropy(xr, y, vocab_start=0, backend=backend)
        loss.backward()
        losses[backend] = (loss.detach(), xr.grad)
        want = "torch" if backend == "torch" else "c"
        assert vp.last_backend == {"forward": want, "backward": want}
    torch.testing.assert_close(losses["auto"], losses["torch"], rtol=1e-5, atol=1e-6)
    vp.use_compiled(False)  # no compiled kernels: auto falls back, c refuses
    try:
        vp.vocab_parallel_cross_entropy(x, y, vocab_start=0)
        assert vp.last_backend["forward"] == "torch"
        with pytest.raises(ValueError, match="no C compiler works"):
            vp.vocab_parallel_cross_entropy(x, y, vocab_start=0, backend="c")
    finally:
        vp.use_compiled(None)


def test_half_precision_slices_run_the_compiled_kernels():
    """Half-precision logits are worked in float32 (the C kernels'), the gradient returned
    in the input's dtype."""
    import torch.nn.functional as F

    vp = load_generated("cross_entropy_vocab_parallel_torch")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 11, generator=g).to(torch.bfloat16).requires_grad_(True)
    y = torch.tensor([0, 10, 3, 4, 7])
    loss = vp.vocab_parallel_cross_entropy(x, y, vocab_start=0)
    loss.backward()
    assert vp.last_backend == {"forward": "c", "backward": "c"}
    assert x.grad.dtype == torch.bfloat16
    xr = x.detach().double().requires_grad_(True)
    want = F.cross_entropy(xr, y)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=2e-2, atol=2e-3)


def test_out_of_range_target_raises_on_every_rank(reports):
    for report in reports["ranks"]:
        for group in report["groups"].values():
            first, negative = group["out_of_range"]
            assert "outside the" in first and "classes" in first
            assert "outside the" in negative


def test_parity_with_dtensor_loss_parallel(reports):
    assert all(report["dtensor"] == 2 * len(worker.REDUCTIONS) for report in reports["ranks"])


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
    assert [s.name for s in symbolic.steps] == ["class_sums", "lse", "slice_gradient",
                                                "rescale_exp", "rescale_linear"]
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
    rescale = symbolic.step("rescale_linear")
    with pytest.raises(ProofError):  # the shift's correction Σ a_j (m_r − M) left out
        shifted = next(t for t in rescale.rhs.args if isinstance(t, sp.Sum))
        symbolic.replace_step("rescale_linear", rhs=shifted).check()


def test_each_rescaled_sum_of_the_compiled_forward_is_proved():
    """The printed move of a slice's sums to the combined maximum, from the kernels' own
    summands: checked by SymPy, and a wrong one refused."""
    from symce.codegen.ir import build_kernel
    from symce.codegen.products.vocab_parallel import (
        M_LOCAL,
        N_LOCAL,
        _check_rescaled,
        rescaled_sums,
    )
    from symce.engine.partition import PartitionContext
    from symce.losses.targets import N_CLASSES

    flags = (("weighted", True), ("smoothed", True), ("z_loss", False), ("softcap", False))
    kernel = build_kernel("cross_entropy", "index", flags)
    found = dict(rescaled_sums(kernel))
    m = sp.Symbol("m", real=True)
    sum_e, sum_w, sum_wz = (sp.Symbol(n, real=True) for n in ("sum_e", "sum_w", "sum_wz"))
    assert sp.simplify(found["sum_e"] - sum_e * sp.exp(M_LOCAL - m)) == 0
    assert sp.simplify(found["sum_wz"] - (sum_wz + (M_LOCAL - m) * sum_w)) == 0
    known = {v.definition: v.symbol for v in kernel.row_values
             if v.kind in ("sum", "constant")}
    value = next(v for v in kernel.row_values if str(v.symbol) == "sum_wz")
    decide = PartitionContext(N_CLASSES, None, None)
    with pytest.raises(ProofError):  # the correction's sign flipped
        _check_rescaled(value, sum_wz - (M_LOCAL - m) * sum_w, known, decide)
    smoothed = build_kernel("cross_entropy", "index", (("weighted", False), *flags[1:]))
    assert sp.simplify(dict(rescaled_sums(smoothed))["sum_z"]
                       - (sp.Symbol("sum_z", real=True) + (M_LOCAL - m) * N_LOCAL)) == 0


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


@pytest.mark.parametrize("case", [
    {"label_smoothing": 0.0},
    {"probability": True, "weighted": True, "label_smoothing": 0.1, "softcap": 2.0,
     "z_loss": 0.1},
], ids=["index", "probability_every_option"])
def test_compiled_kernels_on_many_positions(case):
    """(N, V, d) with d ≥ 16 positions: the C kernels' slab layout (the gloo cases have
    fewer positions: the rows layout, transposed), against float64 references."""
    vp = load_generated("cross_entropy_vocab_parallel_torch")
    reference = load_generated("cross_entropy_torch")
    g = torch.Generator().manual_seed(11)
    shape = (3, 9, 20)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    if case.get("probability"):
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, 9, (3, 20), generator=g)
        target.view(-1)[::5] = -100
    weight = torch.rand(9, generator=g, dtype=torch.float64) + 0.2 if case.get("weighted") \
        else None
    options = {k: case[k] for k in ("label_smoothing", "softcap", "z_loss") if k in case}
    for reduction in ("mean", "none"):
        x32 = x.float().requires_grad_(True)
        loss = vp.vocab_parallel_cross_entropy(
            x32, target.float() if target.is_floating_point() else target, vocab_start=0,
            weight=None if weight is None else weight.float(), reduction=reduction,
            backend="c", **options)
        upstream = torch.rand(loss.shape, generator=g)
        (grad,) = torch.autograd.grad(loss, x32, upstream)
        assert vp.last_backend == {"forward": "c", "backward": "c"}
        full = x.clone().requires_grad_(True)
        want = reference.cross_entropy(full, target, weight=weight, reduction=reduction,
                                       **options)
        (want_grad,) = torch.autograd.grad(want, full, upstream.double())
        torch.testing.assert_close(loss.double(), want.detach(), rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=2e-6)
