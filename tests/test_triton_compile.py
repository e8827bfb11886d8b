"""The generated Triton kernels of every loss compile for an H100 (sm_90), with no GPU.

The interpreter tests check the numbers; this checks that every kernel of
every generated module lowers through Triton's real pipeline to PTX (an
``(N, C)`` bfloat16 launch with the module's tile and warps; the K-dim
layout, positions as a runtime argument, for each module's kernel with the
most walks), and that the logits are read with 16-byte vector loads carrying
the L2 eviction hints (``evict_last`` in the walks that the next one re-reads,
``evict_first`` in the gradient walk; the kernels' bandwidth depends on both).
It runs in fresh interpreters (two, splitting the kernels): the parity tests
put this process's triton in interpreter mode.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# not imported here: that would fix this process's triton out of interpreter mode
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
LOSSES = ("cross_entropy", "focal_loss", "kl_distillation")

SCRIPT = r"""
import importlib.util, json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

part, parts = int(sys.argv[1]), int(sys.argv[2])
target = GPUTarget("cuda", 90, 32)


def types(fn, parameters, dtype):
    # the calling convention of docs/triton.md: logits, gradients and probability
    # targets in the input's dtype, class indices int64, a mask bool, the rest float32
    found = {}
    for name in parameters:
        if name in ("u_ptr", "grad_ptr", "tu_ptr", "tgrad_ptr", "p_ptr"):
            found[name] = "*" + dtype
        elif name == "y_ptr":
            found[name] = "*i64"
        elif name == "mask_ptr":
            found[name] = "*i1"
        elif name.endswith("_ptr"):
            found[name] = "*fp32"
        else:
            found[name] = "i32"
    return found


def compile_(fn, parameters, dtype, constants, warps, aligned=None):
    signature = types(fn, parameters, dtype)
    for name in ("NEED_GRAD", "NEED_TEACHER_GRAD", "HAS_MASK"):
        if name in fn.arg_names:
            constants[name] = True
    for name in constants:
        signature.setdefault(name, "constexpr")
    source = ASTSource(fn, signature, constants, aligned or {})
    return triton.compile(source, target=target, options={"num_warps": warps})


report, jobs = {}, []
for path in sys.argv[3:]:
    spec = importlib.util.spec_from_file_location("m", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    walks = {key: fn.fn.__doc__.count("walk ") for key, (fn, _, _) in module._KERNELS.items()}
    deepest = max(walks, key=walks.get)
    for key, (fn, parameters, _) in module._KERNELS.items():
        jobs.append((module, key, fn, parameters, key == deepest))
for i, (module, key, fn, parameters, deepest) in enumerate(jobs):
    if i % parts != part:
        continue
    # what a launch on aligned tensors with n_classes % 16 == 0 specialises
    aligned = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in parameters
               if n.endswith("_ptr") or n == "n_classes"}
    kernel = compile_(fn, parameters, "bf16", {"BLOCK_R": 1, "BLOCK_C": 16384,
                      "ACC": tl.float32, "positions": 1}, module._NUM_WARPS, aligned)
    if deepest:  # the K-dim layout: a tile of positions, positions a runtime argument
        compile_(fn, parameters, "fp32", {"BLOCK_R": 8, "BLOCK_C": 64, "ACC": tl.float32}, 4)
    report[f"{module.__file__}:{fn.fn.__name__}"] = sorted(
        set(re.findall(r"ld\.global[.:\w]*", kernel.asm["ptx"])))
if part == 0:
    scale = {"grad_ptr": "*bf16", "g_ptr": "*fp32", "g_stride": "i32", "n_rows": "i32",
             "n_classes": "i32", "positions": "i32", "BLOCK_R": "constexpr",
             "BLOCK_C": "constexpr", "ACC": "constexpr"}
    triton.compile(ASTSource(module._scale_rows, scale, {"BLOCK_R": 1, "BLOCK_C": 16384,
                                                         "ACC": tl.float32}),
                   target=target, options={"num_warps": module._NUM_WARPS})
print(json.dumps(report))
"""


def test_the_printers_functions_compile_for_sm90(tmp_path):
    """Every function TritonPrinter may print lowers for sm_90 (float32 and float64)."""
    from tests.triton_cases import function_table_kernel

    path = tmp_path / "table_kernel.py"
    path.write_text(function_table_kernel(), encoding="utf-8")
    script = (
        "import importlib.util, sys\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from triton.compiler import ASTSource\n"
        "import triton\n"
        "spec = importlib.util.spec_from_file_location('k', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "for dtype in ('*fp32', '*fp64'):\n"
        "    triton.compile(ASTSource(m.apply_all, {'a_ptr': dtype, 'out_ptr': dtype,\n"
        "                   'N': 'constexpr'}, {'N': 16}), target=GPUTarget('cuda', 90, 32))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, env=env, timeout=300)
    if done.returncode != 0 and "nvidia" in done.stderr and "backend" in done.stderr:
        pytest.skip(f"triton has no NVIDIA backend here: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def loads():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    paths = [str(ROOT / "generated" / f"{loss}_triton.py") for loss in LOSSES]
    parts = 2
    runs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), str(parts), *paths],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for i in range(parts)]
    report = {}
    for run in runs:
        out, err = run.communicate(timeout=900)
        if run.returncode != 0 and "nvidia" in err and "backend" in err:
            pytest.skip(f"triton has no NVIDIA backend here: {err[-300:]}")
        assert run.returncode == 0, err[-4000:]
        report.update(json.loads(out.strip().splitlines()[-1]))
    return report


def test_every_kernel_of_every_loss_compiles_for_sm90(loads):
    expected = set()
    for loss in LOSSES:
        path = ROOT / "generated" / f"{loss}_triton.py"
        names = re.findall(r"^@triton\.jit\ndef (_kernel_\w+)\(",
                           path.read_text(encoding="utf-8"), re.M)
        expected |= {f"{path}:{name}" for name in names}
    # 32 kernels of cross_entropy (z_loss, softcap specialised), 16 of focal_loss (gamma
    # specialised), 1 of distillation
    assert len(expected) == 49 and set(loads) == expected


def test_rows_are_read_with_vector_loads_and_eviction_hints(loads):
    for name, kinds in loads.items():
        assert "ld.global.L1::evict_last.L2::cache_hint.v4.b32" in kinds, (name, kinds)
        assert "ld.global.L1::evict_first.L2::cache_hint.v4.b32" in kinds, (name, kinds)
