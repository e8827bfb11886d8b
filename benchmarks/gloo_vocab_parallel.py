"""Vocabulary-parallel cross-entropy on gloo: symce against DTensor and a Megatron-style version.

2 and 4 ranks on 127.0.0.1 (forked from this process), N rows of V classes
split evenly, float32, class-index targets, ``reduction="mean"``.  Per step
(forward + backward) and method: the median time of interleaved runs (each
rank's step ends with its backward; rank 0's times are reported, the ranks
are in lock step through the collectives), and the collectives with the bytes
each rank hands them, counted by wrapping ``torch.distributed``'s and the
functional collectives' functions (DTensor uses the latter).

* ``symce``: ``generated/cross_entropy_vocab_parallel_torch.py`` on its compiled
  C kernels (``backend="c"``: each slice's forward in one walk, its gradient in
  another);
* ``symce_torch``: the same module's printed torch code (``backend="torch"``);
* ``dtensor``: ``F.cross_entropy`` of a ``Shard(1)`` DTensor inside
  ``torch.distributed.tensor.parallel.loss_parallel()``;
* ``megatron``: a hand-written ``autograd.Function`` the way Megatron-LM's
  ``vocab_parallel_cross_entropy`` goes (all-reduce the maximum, the target
  logit and the sum of exponentials: three collectives; softmax minus one-hot
  in the backward).

    python benchmarks/gloo_vocab_parallel.py [--rows 2048] [--classes 32000]
        [--ranks 2 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("symce", "symce_torch", "dtensor", "megatron")
#: the generated module's backend of each of its methods
BACKENDS = {"symce": "c", "symce_torch": "torch"}


def _load_symce():
    path = ROOT / "generated" / "cross_entropy_vocab_parallel_torch.py"
    spec = importlib.util.spec_from_file_location("cross_entropy_vocab_parallel_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Megatron(torch.autograd.Function):
    """Three all-reduces forward (max, target logit, sum of exponentials), none backward."""

    @staticmethod
    def forward(ctx, local, target, vocab_start, group):
        n, v = local.shape
        m = local.max(dim=1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        shifted = local - m[:, None]
        inside = (target >= vocab_start) & (target < vocab_start + v)
        index = torch.where(inside, target - vocab_start, 0)
        picked = shifted.gather(1, index[:, None])[:, 0] * inside
        dist.all_reduce(picked, group=group)
        e = shifted.exp()
        total = e.sum(dim=1)
        dist.all_reduce(total, group=group)
        loss = total.log() - picked
        e /= total[:, None]
        ctx.save_for_backward(e, index, inside)
        return loss.mean()

    @staticmethod
    def backward(ctx, grad_output):
        softmax, index, inside = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0])
        grad[rows, index] -= inside.to(grad.dtype)
        grad *= grad_output / grad.shape[0]
        return grad, None, None, None


class _Traffic:
    """The collectives called while counting: (name, bytes of the tensors handed in)."""

    def __init__(self):
        import torch.distributed._functional_collectives as funcol

        self.calls: list[tuple[str, int]] = []
        for module, names in ((dist, ("all_reduce", "all_gather", "all_gather_into_tensor",
                                      "reduce_scatter_tensor", "broadcast", "all_to_all_single")),
                              (funcol, ("all_reduce", "all_gather_tensor",
                                        "reduce_scatter_tensor", "all_reduce_coalesced",
                                        "all_to_all_single"))):
            for name in names:
                if hasattr(module, name):
                    setattr(module, name, self._wrap(f"{module.__name__}.{name}",
                                                     getattr(module, name)))

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            self.calls.append((name, sum(t.numel() * t.element_size() for t in tensors[:1])))
            return original(*args, **kwargs)
        return counted

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def _step(method, tools, local, target, start):
    x = local.detach().requires_grad_(True)
    if method in BACKENDS:
        loss = tools["symce"].vocab_parallel_cross_entropy(x, target, vocab_start=start,
                                                           backend=BACKENDS[method])
    elif method == "megatron":
        loss = _Megatron.apply(x, target, start, None)
    else:
        from torch.distributed.tensor import DTensor, Shard
        from torch.distributed.tensor.parallel import loss_parallel

        dx = DTensor.from_local(x, tools["mesh"], [Shard(1)])
        with loss_parallel():
            loss = torch.nn.functional.cross_entropy(dx, target)
            loss.backward()
        return loss.full_tensor().detach(), x.grad
    loss.backward()
    return loss.detach(), x.grad


def _rank(rank, world, port, args, out):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=300))
    from torch.distributed.device_mesh import init_device_mesh

    tools = {"symce": _load_symce(), "mesh": init_device_mesh("cpu", (world,))}
    v = args.classes // world
    start = rank * v
    g = torch.Generator().manual_seed(rank)
    local = 3 * torch.randn(args.rows, v, generator=g)
    target = torch.randint(0, v * world, (args.rows,), generator=torch.Generator().manual_seed(0))
    traffic = _Traffic()
    found = {}
    for method in METHODS:  # warm up, check agreement, count the traffic of one step
        loss, grad = _step(method, tools, local, target, start)
        calls = traffic.take()
        if method in BACKENDS:
            ran = tools["symce"].last_backend
            want = {"forward": BACKENDS[method], "backward": BACKENDS[method]}
            if ran != want:
                raise AssertionError(f"{method}: ran {ran}, not {want}")
        found[method] = {"loss": float(loss), "collectives": len(calls),
                         "bytes": sum(b for _, b in calls), "grad": grad}
    reference = found["megatron"]
    for method in METHODS:
        found[method]["max_grad_diff"] = float((found[method].pop("grad")
                                                - reference["grad"]).abs().max()) \
            if method != "megatron" else 0.0
    reference.pop("grad", None)
    times = {m: [] for m in METHODS}
    for r in range(args.repeats):
        order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
        for method in order:
            dist.barrier()
            started = time.perf_counter()
            _step(method, tools, local, target, start)
            times[method].append(time.perf_counter() - started)
    traffic.take()
    for method in METHODS:
        found[method]["ms"] = 1e3 * statistics.median(times[method])
    if rank == 0:
        Path(out).write_text(json.dumps(found))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    import torch.distributed.tensor.parallel  # noqa: F401  (imported once, before the fork)
    import torch.multiprocessing as mp

    print(f"N = {args.rows}, V = {args.classes} split evenly, float32, gloo on 127.0.0.1, "
          f"{os.cpu_count()} cores, median of {args.repeats} interleaved steps "
          "(forward + backward); load average before: "
          + ", ".join(f"{a:.2f}" for a in os.getloadavg()))
    print(f"{'ranks':>5} {'method':>11} {'ms/step':>9} {'vs symce':>9} {'collectives':>12} "
          f"{'bytes/rank':>11} {'loss':>10} {'max |Δgrad|':>12}")
    for world in args.ranks:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rank0.json")
            mp.start_processes(_rank, args=(world, _free_port(), args, out), nprocs=world,
                               join=True, start_method="fork")
            found = json.loads(Path(out).read_text())
        for method in METHODS:
            f = found[method]
            print(f"{world:>5} {method:>11} {f['ms']:>9.1f} {f['ms'] / found['symce']['ms']:>9.2f} "
                  f"{f['collectives']:>12} {f['bytes']:>11} {f['loss']:>10.6f} "
                  f"{f['max_grad_diff']:>12.2e}")
    print("load average after: " + ", ".join(f"{a:.2f}" for a in os.getloadavg()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
