"""One rank of the vocabulary-parallel tests: every case on gloo groups of 2, 3 and 4 ranks.

Run by ``tests/test_vocab_parallel.py`` through ``torch.multiprocessing`` (4
processes, one spawn): the world of 4 and subgroups of its first 2 and 3
ranks, each with uneven slices holding a one-class slice.  Every rank makes
the same full logits from a seed, runs the generated module on its slice and
compares the loss (the same on every rank) and its gradient slice with
float64 references on the concatenated logits: ``F.cross_entropy`` for the
options PyTorch has, the generated ``cross_entropy_torch`` module for z-loss
and soft-capping, DTensor's ``loss_parallel`` where it applies.  The float64
cases run the printed torch code (``backend="auto"`` falls back to it); the
float32 cases of ``COMPILED`` (every option among them) run the compiled C
kernels (``backend="c"``) against the same float64 references, to float32
tolerances.  Which backend ran is read from the module's ``last_backend``.
Collectives are counted by wrapping ``torch.distributed``'s functions.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

GENERATED = Path(__file__).resolve().parent.parent / "generated"
#: slice sizes per group size (a one-class slice in each)
SPLITS = {2: (1, 6), 3: (3, 1, 4), 4: (2, 3, 1, 5)}
ROWS = 6
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "all_to_all", "all_to_all_single",
               "barrier", "gather", "scatter", "reduce", "send", "recv")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(target, world: int, out, deadline: float) -> None:
    """``world`` ranks of ``target(rank, world, port, out)``, forked; all killed past
    ``deadline`` seconds, which fails the test (a rank left waiting on a collective)
    instead of hanging the suite.

    Forked, not spawned: each child has torch imported already (a spawned one
    imports it again, seconds per rank); the children use one thread each."""
    import torch.multiprocessing as mp

    context = mp.start_processes(target, args=(world, free_port(), str(out)), nprocs=world,
                                 join=False, start_method="fork")
    end = time.monotonic() + deadline
    while not context.join(timeout=1.0):
        if time.monotonic() > end:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            raise AssertionError(f"the ranks did not finish in {deadline:g} s (a hang?)")


def load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, GENERATED / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Counter:
    """Counts the calls of every collective of ``torch.distributed`` while on."""

    originals: dict = {}

    def __init__(self) -> None:
        self.calls: list[str] = []
        for name in COLLECTIVES:
            original = self.originals.setdefault(name, getattr(dist, name))
            setattr(dist, name, self._wrap(name, original))

    @classmethod
    def restore(cls) -> None:
        """``torch.distributed``'s own functions back (a counter in the parent process)."""
        for name, original in cls.originals.items():
            setattr(dist, name, original)

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            self.calls.append(name)
            return original(*args, **kwargs)
        return counted

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def _inputs(seed: int, n_classes: int, case: dict):
    """The full logits, target, weight and upstream gradient of a case (every rank alike)."""
    g = torch.Generator().manual_seed(seed)
    extra = case.get("extra", ())
    shape = (ROWS, n_classes, *extra)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    if case.get("single"):
        x = x[0, :, ...] if not extra else x
    if case["kind"] == "probability":
        target = torch.softmax(torch.randn(x.shape, generator=g, dtype=torch.float64),
                               dim=0 if case.get("single") else 1)
    else:
        batch = () if case.get("single") else (ROWS, *extra)
        target = torch.randint(0, n_classes, batch, generator=g)
        if "ignore" in case and not case.get("single"):
            target.view(-1)[::3] = case["ignore"]
    weight = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.2
    return x, target, weight, g


def _reference(x, target, weight, case, options):
    """The loss on the concatenated logits, by an implementation independent of the module."""
    kw = {"reduction": options["reduction"], "label_smoothing": options["label_smoothing"],
          "weight": weight if case.get("weighted") else None}
    if "ignore" in case:
        kw["ignore_index"] = case["ignore"]
    if options.get("z_loss") or options.get("softcap") is not None:
        ce = load_reference()
        return ce.cross_entropy(x, target, z_loss=options.get("z_loss", 0.0),
                                softcap=options.get("softcap"),
                                return_z_loss=options.get("return_z_loss", False), **kw)
    return F.cross_entropy(x, target, **kw)


_REFERENCE = []


def load_reference():
    if not _REFERENCE:
        _REFERENCE.append(load("cross_entropy_torch"))
    return _REFERENCE[0]


CASES = [
    {"kind": "index"},
    {"kind": "index", "weighted": True},
    {"kind": "index", "weighted": True, "ignore": -100},
    {"kind": "index", "ignore": 2},
    {"kind": "index", "smoothing": 0.2},
    {"kind": "index", "weighted": True, "smoothing": 0.3, "ignore": -100},
    {"kind": "probability"},
    {"kind": "probability", "weighted": True, "smoothing": 0.15},
    {"kind": "index", "weighted": True, "smoothing": 0.1, "ignore": -100, "extra": (3, 2)},
    {"kind": "probability", "weighted": True, "extra": (2,)},
    {"kind": "index", "single": True, "weighted": True, "smoothing": 0.2},
    {"kind": "index", "weighted": True, "smoothing": 0.1, "ignore": -100, "z_loss": 0.1},
    {"kind": "index", "softcap": 2.5, "ignore": -100},
    {"kind": "index", "weighted": True, "smoothing": 0.2, "z_loss": 0.05, "softcap": 2.0},
    {"kind": "probability", "weighted": True, "smoothing": 0.1, "z_loss": 0.1, "softcap": 3.0},
    {"kind": "index", "weighted": True, "ignore": -100, "z_loss": 0.2, "return_z_loss": True},
]
REDUCTIONS = ("mean", "sum", "none")
#: the cases run on the compiled kernels in float32: each target kind, every option, K-dim,
#: one input dimension (5 kernels' pairs to build: a few seconds each where not cached)
COMPILED = [CASES[i] for i in (0, 8, 10, 13, 14, 15)]
#: float32 work against the float64 references: (loss, gradient) rtol, atol
FLOAT32_TOLERANCE = ((2e-5, 2e-5), (1e-4, 2e-6))


def _slice(t, start, stop, dim):
    return t.narrow(dim, start, stop - start)


def run_cases(vp, group, rank: int, split, counter: Counter, cases=None,
              dtype=torch.float64, backend="auto") -> dict:
    """Every case (of ``cases``) and reduction on ``group`` with ``dtype`` logits (and
    probability targets, weights); the collectives counted, the backends that ran."""
    n_classes = sum(split)
    start = sum(split[:rank])
    stop = start + split[rank]
    counts = {"forward": set(), "backward": set(), "cases": 0, "backends": set()}
    if dtype == torch.float64:
        (loss_rtol, loss_atol), (grad_rtol, grad_atol) = (1e-12, 1e-12), (1e-10, 1e-12)
    else:
        (loss_rtol, loss_atol), (grad_rtol, grad_atol) = FLOAT32_TOLERANCE
    for number, case in enumerate(CASES if cases is None else cases):
        for reduction in REDUCTIONS:
            x, target, weight, g = _inputs(1000 * len(split) + number, n_classes, case)
            dim = 0 if case.get("single") else 1
            options = {"reduction": reduction, "label_smoothing": case.get("smoothing", 0.0)}
            if "z_loss" in case:
                options["z_loss"] = case["z_loss"]
            if "softcap" in case:
                options["softcap"] = case["softcap"]
            if case.get("return_z_loss"):
                options["return_z_loss"] = True
            local = _slice(x, start, stop, dim).to(dtype).requires_grad_(True)
            local_target = (_slice(target, start, stop, dim).to(dtype)
                            if case["kind"] == "probability" else target)
            kw = dict(options, backend=backend)
            if case.get("weighted"):
                kw["weight"] = weight[start:stop].to(dtype)
            if "ignore" in case:
                kw["ignore_index"] = case["ignore"]
            counter.take()
            loss = vp.vocab_parallel_cross_entropy(local, local_target, vocab_start=start,
                                                   group=group, **kw)
            counts["forward"].add(len(counter.take()))
            # (loss, z_term) with return_z_loss: the gradient of both, each its own upstream
            outputs = loss if isinstance(loss, tuple) else (loss,)
            upstream = [torch.rand(o.shape, generator=g, dtype=torch.float64) for o in outputs]
            (grad,) = torch.autograd.grad(outputs, local, [u.to(dtype) for u in upstream])
            counts["backward"].add(len(counter.take()))
            counts["backends"].add(f"{vp.last_backend['forward']}/{vp.last_backend['backward']}")
            grad = grad.double()
            full = x.clone().requires_grad_(True)
            want = _reference(full, target, weight, case, options)
            wanted = want if isinstance(want, tuple) else (want,)
            (want_grad,) = torch.autograd.grad(wanted, full, upstream)
            loss = torch.stack([o.reshape(-1) for o in outputs]).double()
            want = torch.stack([o.reshape(-1) for o in wanted])
            label = f"group of {len(split)}, rank {rank}, case {case}, {reduction}, {dtype}"
            torch.testing.assert_close(loss, want.detach(), rtol=loss_rtol, atol=loss_atol,
                                       msg=lambda m, label=label: f"{label}: loss: {m}")
            torch.testing.assert_close(grad, _slice(want_grad, start, stop, dim),
                                       rtol=grad_rtol, atol=grad_atol,
                                       msg=lambda m, label=label: f"{label}: gradient: {m}")
            counts["cases"] += 1
    return {k: sorted(v) if isinstance(v, set) else v for k, v in counts.items()}


#: the fused head's cases: each target kind, every option, a (B, T, H) input
HEAD_CASES = [CASES[i] for i in (0, 5, 7, 13, 15)]
HIDDEN = 4


def run_head_cases(vp, group, rank: int, split, counter: Counter, dtype=torch.float64,
                   backend="auto") -> dict:
    """``vocab_parallel_linear_cross_entropy`` with this rank's rows of the head's weight
    against the loss of ``h @ W.T + b`` on the whole weight (float64 autograd): the
    loss, ``dh`` (summed over the ranks), this rank's rows of ``dW`` and ``db``."""
    n_classes = sum(split)
    start = sum(split[:rank])
    stop = start + split[rank]
    counts = {"runs": [], "cases": 0, "backends": set()}
    if dtype == torch.float64:
        (loss_rtol, loss_atol), (grad_rtol, grad_atol) = (1e-12, 1e-12), (1e-10, 1e-12)
    else:
        (loss_rtol, loss_atol), (grad_rtol, grad_atol) = FLOAT32_TOLERANCE
    for number, case in enumerate(HEAD_CASES):
        for reduction, chunk_rows, reduce_input_grad, batched in (
                ("mean", 4, True, False), ("sum", 1, True, True), ("none", None, True, False),
                ("mean", None, False, False)):
            g = torch.Generator().manual_seed(500 + 10 * len(split) + number)
            h = torch.randn(ROWS, HIDDEN, generator=g, dtype=torch.float64)
            w_full = torch.randn(n_classes, HIDDEN, generator=g, dtype=torch.float64)
            b_full = torch.randn(n_classes, generator=g, dtype=torch.float64)
            _, target, weight, _ = _inputs(2000 + number, n_classes, case)
            options = {"reduction": reduction, "label_smoothing": case.get("smoothing", 0.0)}
            for name in ("z_loss", "softcap"):
                if name in case:
                    options[name] = case[name]
            if case.get("return_z_loss"):
                options["return_z_loss"] = True
            kw = dict(options, backend=backend, chunk_rows=chunk_rows,
                      reduce_input_grad=reduce_input_grad)
            if case.get("weighted"):
                kw["weight"] = weight[start:stop].to(dtype)
            if "ignore" in case:
                kw["ignore_index"] = case["ignore"]
            local_target = (target[:, start:stop].to(dtype) if case["kind"] == "probability"
                            else target)
            shape = (2, ROWS // 2) if batched else (ROWS,)
            hl = h.to(dtype).reshape(*shape, HIDDEN).requires_grad_(True)
            wl = w_full[start:stop].to(dtype).requires_grad_(True)
            bl = b_full[start:stop].to(dtype).requires_grad_(True)
            tl = local_target.reshape(*shape, -1) if case["kind"] == "probability" else (
                local_target.reshape(shape))
            counter.take()
            loss = vp.vocab_parallel_linear_cross_entropy(
                hl, wl, tl, vocab_start=start, group=group, local_linear_bias=bl, **kw)
            forward_calls = len(counter.take())
            outputs = loss if isinstance(loss, tuple) else (loss,)
            upstream = [torch.rand(o.shape, generator=g, dtype=torch.float64) for o in outputs]
            dh, dw, db = torch.autograd.grad(outputs, (hl, wl, bl),
                                             [u.to(dtype) for u in upstream])
            backward_calls = len(counter.take())
            chunks = -(-ROWS // (chunk_rows or ROWS))
            counts["runs"].append([forward_calls, backward_calls, chunks, chunk_rows is None,
                                   reduce_input_grad])
            counts["backends"].add(f"{vp.last_backend['forward']}/{vp.last_backend['backward']}")
            full = [t.clone().requires_grad_(True) for t in (h, w_full, b_full)]
            logits = full[0] @ full[1].T + full[2]
            want = _reference(logits, target, weight, case, options)
            wanted = want if isinstance(want, tuple) else (want,)
            wanted = [o.reshape(u.shape) for o, u in zip(wanted, upstream, strict=True)] if (
                batched) else wanted
            want_dh, want_dw, want_db = torch.autograd.grad(wanted, full, upstream)
            label = (f"head, group of {len(split)}, rank {rank}, case {case}, {reduction}, "
                     f"chunk_rows {chunk_rows}, {dtype}")

            def close(got, expected, what, rtol, atol, label=label):
                torch.testing.assert_close(got.double(), expected.detach(), rtol=rtol, atol=atol,
                                           msg=lambda m: f"{label}: {what}: {m}")

            for o, wv in zip(outputs, wanted, strict=True):
                close(o.reshape(-1), wv.reshape(-1), "loss", loss_rtol, loss_atol)
            if reduce_input_grad:
                close(dh.reshape(ROWS, HIDDEN), want_dh, "dh", grad_rtol, grad_atol)
            else:  # this slice's share: the ranks' shares sum to dh (checked by the parent)
                counts.setdefault("dh_shares", []).append(dh.double().reshape(-1).tolist())
                counts.setdefault("dh_wanted", []).append(want_dh.reshape(-1).tolist())
            close(dw, want_dw[start:stop], "dW", grad_rtol, grad_atol)
            close(db, want_db[start:stop], "db", grad_rtol, grad_atol)
            counts["cases"] += 1
    return {k: sorted(v) if isinstance(v, set) else v for k, v in counts.items()}


def out_of_range(vp, group, rank: int, split) -> list[str]:
    """A class index outside the classes (the same on every rank) raises on every rank."""
    start = sum(split[:rank])
    found = []
    for bad in (sum(split), -5):
        x = torch.randn(ROWS, split[rank], dtype=torch.float64)
        target = torch.zeros(ROWS, dtype=torch.int64)
        target[3] = bad
        try:
            vp.vocab_parallel_cross_entropy(x, target, vocab_start=start, group=group)
        except ValueError as exc:
            found.append(str(exc))
        else:
            found.append("no error")
    return found


def dtensor_parity(vp, rank: int, world: int) -> int:
    """The module against DTensor's loss_parallel (weight, ignore_index, reductions)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(7)
    n_classes = 3 * world - 1  # chunks of DTensor's Shard: uneven, none empty
    x = torch.randn(ROWS, n_classes, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (ROWS,), generator=g)
    weight = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.1
    checked = 0
    for weighted in (False, True):
        for reduction in REDUCTIONS:
            target = labels.clone()
            if not weighted:  # loss_parallel's backward fails on ignored rows with weights
                target[1] = -100
            dx = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_(True)
            kw = {"reduction": reduction, "ignore_index": -100}
            if weighted:
                kw["weight"] = distribute_tensor(weight, mesh, [Replicate()])
            with loss_parallel():
                want = F.cross_entropy(dx, target, **kw)
                want.sum().backward()
            mine = dx.to_local().detach().clone().requires_grad_(True)
            sizes = [len(c) for c in torch.arange(n_classes).chunk(world)]
            start = sum(sizes[:rank])
            if mine.shape[1] != sizes[rank]:
                raise AssertionError("DTensor's shard sizes are not torch.chunk's")
            loss = vp.vocab_parallel_cross_entropy(
                mine, target, vocab_start=start, reduction=reduction, ignore_index=-100,
                weight=weight[start:start + sizes[rank]] if weighted else None)
            loss.sum().backward()
            want_loss = want.full_tensor() if hasattr(want, "full_tensor") else want
            torch.testing.assert_close(loss, want_loss.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mine.grad, dx.grad.to_local(), rtol=1e-10, atol=1e-12)
            checked += 1
    return checked


def prebuild() -> dict:
    """The compiled cases without a process group (the slice is the whole vocabulary), in
    the parent before the ranks fork: the kernels are built once, into the cache the ranks
    then load from, instead of by 4 ranks at once."""
    vp = load("cross_entropy_vocab_parallel_torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP team in the parent the ranks fork from
    try:
        return run_cases(vp, None, 0, (SPLITS[2][0] + SPLITS[2][1],), Counter(), COMPILED,
                         torch.float32, "c")
    finally:
        torch.set_num_threads(threads)
        Counter.restore()


def main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # 4 ranks on a few cores: no oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        vp = load("cross_entropy_vocab_parallel_torch")
        counter = Counter()
        groups = {size: dist.new_group(list(range(size))) if size < world else None
                  for size in SPLITS}
        report = {"groups": {}, "seconds": {}}
        for size, group in groups.items():
            if rank < size:
                started = time.perf_counter()
                report["groups"][size] = run_cases(vp, group, rank, SPLITS[size], counter)
                report["groups"][size]["compiled"] = run_cases(
                    vp, group, rank, SPLITS[size], counter, COMPILED, torch.float32, "c")
                report["seconds"][size] = time.perf_counter() - started
                started = time.perf_counter()
                report["groups"][size]["head"] = run_head_cases(vp, group, rank, SPLITS[size],
                                                                counter)
                report["groups"][size]["head_compiled"] = run_head_cases(
                    vp, group, rank, SPLITS[size], counter, torch.float32, "c")
                report["seconds"][f"head {size}"] = time.perf_counter() - started
                report["groups"][size]["out_of_range"] = out_of_range(vp, group, rank,
                                                                      SPLITS[size])
        # the group still works after every rank raised: no rank is left waiting
        report["after_error"] = run_cases(vp, None, rank, SPLITS[world], counter,
                                          CASES[:2])["cases"]
        started = time.perf_counter()
        report["dtensor"] = dtensor_parity(vp, rank, world)
        report["seconds"]["dtensor"] = time.perf_counter() - started
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()
