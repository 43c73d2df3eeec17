"""Builds and loads sfpn_emulated: csrc/cuda/*.cu compiled by the host compiler against the CUDA
emulation (csrc/emulation/), for tests/test_cuda_emulation.py.

The build lands in build/cuda_emulation/. Each new process runs its ninja file once: ninja
tracks every included header (csrc/cuda/*.cu included), so only what changed is rebuilt.
"""
import glob
import os

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def _put_ninja_on_path() -> None:
    """torch's JIT build runs `ninja` from PATH; the pip package (the [test] extra) may sit in a
    virtual environment that is not activated."""
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load():
    """Builds (when the sources changed) and loads the library; returns torch.ops.sfpn_emulated."""
    _put_ninja_on_path()
    build_dir = os.path.join(ROOT, "build", "cuda_emulation")
    os.makedirs(build_dir, exist_ok=True)
    sources = [os.path.join(CSRC, "emulation", "cuda_emulation.cpp")] + sorted(
        glob.glob(os.path.join(ROOT, "tests", "native", "emulated", "*.cpp"))
    )
    cpp_extension.load(
        name="sfpn_emulated",
        sources=sources,
        extra_include_paths=[CSRC],
        extra_cflags=[
            "-O1",  # a quick build; the kernels' test shapes are small
            "-DSFPN_EMULATION",
            "-fvisibility=hidden",
            "-fno-gnu-unique",  # no symbol of ours may merge with sfpn._C's
            "-fno-strict-aliasing",  # the kernels' vector loads reinterpret pointers
            "-Wno-unknown-pragmas",  # #pragma unroll
        ],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.sfpn_emulated
