"""benchmarks/ce_rows.py, the candidate gradient for the CUDA upsampling cross entropy: it matches
float64 eager under Triton's interpreter, and compiles for sm_90 (the interpreter forgives what
the GPU compiler rejects), so that a GPU session can time it at once."""
import importlib.util
import os
import subprocess
import sys

import pytest

from sfpn import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason=f"needs Triton ({kernels.UNAVAILABLE_REASON})")


def _load():
    spec = importlib.util.spec_from_file_location("benchmarks_ce_rows", os.path.join(ROOT, "benchmarks", "ce_rows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not kernels.INTERPRETING, reason="runs on the CPU under TRITON_INTERPRET=1")
def test_candidate_matches_float64_eager():
    _load().check("cpu")


def test_chunks_reach_no_more_source_columns_than_the_tile():
    """Every chunk of x_step label columns touches at most block_j source columns, at any scale."""
    ce_rows = _load()
    for in_width, out_width in [(336, 1344), (9, 37), (7, 28), (8, 8), (40, 41), (100, 48)]:
        for block_x, block_j in [(64, 16), (32, 16), (128, 32)]:
            x_step = ce_rows.chunk_geometry(in_width, out_width, block_x, block_j)
            assert 1 <= x_step <= block_x
            scale = in_width / out_width
            for start in range(0, out_width, x_step):
                end = min(start + x_step, out_width) - 1
                first = min(int(max((start + 0.5) * scale - 0.5, 0.0)), in_width - 1)
                last = min(int(max((end + 0.5) * scale - 0.5, 0.0)) + 1, in_width - 1)
                assert last - first + 1 <= block_j, (in_width, out_width, block_x, block_j, start)


_COMPILE = """
import warnings; warnings.simplefilter("ignore")
import importlib.util, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = importlib.util.spec_from_file_location("ce_rows", "benchmarks/ce_rows.py")
ce_rows = importlib.util.module_from_spec(spec); spec.loader.exec_module(ce_rows)
kernel = ce_rows._rows_kernel
types = {"logits_ptr": "*bf16", "labels_ptr": "*u8", "grad_ptr": "*fp32", "partial_ptr": "*fp32", "scale_ptr": "*fp32",
         "num_classes": "i32", "in_height": "i32", "in_width": "i32", "out_height": "i32", "out_width": "i32",
         "scale_y": "fp32", "scale_x": "fp32", "ignore_index": "i32", "x_step": "i32"}
for constexprs in ({"BLOCK_K": 128, "BLOCK_X": 64, "BLOCK_J": 16}, {"BLOCK_K": 16, "BLOCK_X": 32, "BLOCK_J": 16}):
    signature = {a: "constexpr" if a in constexprs else types[a] for a in kernel.arg_names}
    triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))
    print("compiled", constexprs, flush=True)
"""


@pytest.mark.slow
def test_candidate_compiles_for_sm90_without_a_gpu():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("compiled") == 2
