"""Review cases of the vocabulary-parallel module on a real gloo group of 3 ranks.

* a rank holding no class (an empty slice: ``torch.chunk`` / DTensor shards of a
  vocabulary smaller than the group) runs every case of the worker, exact
  against ``F.cross_entropy`` on the concatenated logits; in float32 with
  ``backend="auto"`` the ranks holding classes run the compiled kernels and the
  empty one the torch code, in the same collectives;
* ``vocab_start`` inconsistent with the slices' sizes (a gap, an overlap that no
  target falls in, every slice shifted by one) raises on every rank — before the
  fix it returned a loss over classes the caller did not mean;
* class-index targets (or ignore_index) that differ between the ranks raise on
  every rank (before the fix: silently a loss of no one's targets where a row's
  differing targets fell in the same slice);
* after every error the group still works (no rank left waiting);
* a float32 row whose logits are ``-inf`` on one rank's whole slice (a masked or
  padded stretch of the vocabulary): that rank runs the torch code (its own
  maximum would be ``-inf``), the others the compiled kernels, and the loss and
  gradient are ``F.cross_entropy``'s of the concatenated logits.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
import torch.distributed as dist

from tests import vocab_parallel_worker as worker

WORLD = 3
EMPTY_SPLIT = (3, 0, 4)


def _errors(vp, rank: int) -> dict[str, str]:
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sizes = (3, 1, 4)
    cases = {  # (vocab_start per rank, where each rank's slice is read from, target)
        "gap": ((0, 3, 5), (0, 3, 4), [0, 1, 2, 3]),
        "overlap": ((0, 3, 3), (0, 3, 4), [0, 1, 6, 7]),
        "shifted": ((1, 4, 5), (0, 3, 4), [1, 2, 3, 4]),
    }
    found = {}
    for name, (starts, reads, target) in cases.items():
        local = x[:, reads[rank]:reads[rank] + sizes[rank]]
        try:
            vp.vocab_parallel_cross_entropy(local, torch.tensor(target), vocab_start=starts[rank])
        except ValueError as exc:
            found[name] = str(exc)
        else:
            found[name] = "no error"
    start = sum(sizes[:rank])
    local = x[:, start:start + sizes[rank]]
    target = torch.tensor([0, 3, 4, 7])
    target[0] = rank * 3  # row 0: class 0, 3, 6 on ranks 0, 1, 2: two slices own one
    try:
        vp.vocab_parallel_cross_entropy(local, target, vocab_start=start)
    except ValueError as exc:
        found["different_targets"] = str(exc)
    else:
        found["different_targets"] = "no error"
    for name, row0, ignore in (("one_owner", rank, -100),  # classes 0, 1, 2: slice 0's
                               ("ignore_index", 0, -100 if rank else 5)):
        target = torch.tensor([row0, 3, 5, 7])
        try:
            vp.vocab_parallel_cross_entropy(local, target, vocab_start=start, ignore_index=ignore)
        except ValueError as exc:
            found[name] = str(exc)
        else:
            found[name] = "no error"
    try:  # no rank holds a class
        vp.vocab_parallel_cross_entropy(x[:, :0], torch.tensor([0, 0, 0, 0]), vocab_start=0)
    except ValueError as exc:
        found["no_class"] = str(exc)
    else:
        found["no_class"] = "no error"
    return found


def _masked_slice(vp, rank: int) -> dict:
    """Row 0's logits ``-inf`` on rank 1's whole slice (its one class), float32."""
    import torch.nn.functional as F

    sizes = (3, 1, 4)
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(5, 8, generator=g, dtype=torch.float64)
    x[0, 3] = -torch.inf
    x[1, 5:7] = -torch.inf  # on rank 2: not its whole slice
    target = torch.tensor([0, 7, 3, 4, 1])
    start = sum(sizes[:rank])
    local = x[:, start:start + sizes[rank]].float().requires_grad_(True)
    loss = vp.vocab_parallel_cross_entropy(local, target, vocab_start=start,
                                           label_smoothing=0.0, backend="c")
    loss.backward()
    full = x.clone().requires_grad_(True)
    want = F.cross_entropy(full, target)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(local.grad.double(), full.grad[:, start:start + sizes[rank]],
                               rtol=1e-4, atol=2e-6)
    return dict(vp.last_backend)


def _main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        vp = worker.load("cross_entropy_vocab_parallel_torch")
        counter = worker.Counter()
        report = {"empty": worker.run_cases(vp, None, rank, EMPTY_SPLIT, counter),
                  "mixed": worker.run_cases(vp, None, rank, EMPTY_SPLIT, counter,
                                            worker.COMPILED, torch.float32, "auto"),
                  # "c" too: the empty slice runs the torch code, without an error
                  "mixed_c": worker.run_cases(vp, None, rank, EMPTY_SPLIT, counter,
                                              worker.COMPILED[:1], torch.float32, "c"),
                  "masked": _masked_slice(vp, rank),
                  "errors": _errors(vp, rank)}
        report["after_errors"] = worker.run_cases(vp, None, rank, (3, 1, 4), counter,
                                                  worker.CASES[:1])["cases"]
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_review_cases_on_a_group_of_three(tmp_path):
    worker.prebuild()  # the compiled kernels built once, before the ranks fork
    worker.spawn_ranks(_main, WORLD, tmp_path, 120.0)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for rank, report in enumerate(reports):
        empty = report["empty"]
        assert empty["cases"] == len(worker.CASES) * len(worker.REDUCTIONS)
        assert max(empty["forward"]) <= 2 and empty["backward"] == [0]
        mixed = report["mixed"]
        assert mixed["cases"] == len(worker.COMPILED) * len(worker.REDUCTIONS)
        assert max(mixed["forward"]) <= 2 and mixed["backward"] == [0]
        assert mixed["backends"] == (["torch/torch"] if EMPTY_SPLIT[rank] == 0 else ["c/c"])
        assert report["mixed_c"]["backends"] == mixed["backends"]
        ran = "torch" if rank == 1 else "c"
        assert report["masked"] == {"forward": ran, "backward": ran}
        errors = report["errors"]
        assert "leave a gap at class 4" in errors["gap"]
        assert "overlap at class 3" in errors["overlap"]
        assert "leave a gap at class 0" in errors["shifted"]
        for name in ("different_targets", "one_owner", "ignore_index"):
            assert "different class-index targets" in errors[name], name
        assert "hold no class" in errors["no_class"]
        assert report["after_errors"] == len(worker.REDUCTIONS)


def test_an_empty_slice_without_a_group_raises():
    import pytest

    from tests.parity import load_generated

    vp = load_generated("cross_entropy_vocab_parallel_torch")
    with pytest.raises(ValueError, match="hold no class"):
        vp.vocab_parallel_cross_entropy(torch.randn(3, 0), torch.tensor([0, 1, 2]),
                                        vocab_start=0)
