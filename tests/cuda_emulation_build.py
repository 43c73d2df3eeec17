"""Builds and loads sfpn_emulated: csrc/cuda/*.cu compiled by the host compiler against the CUDA
emulation (csrc/emulation/), for tests/test_cuda_emulation.py.

The build lands in build/cuda_emulation/ and is reused while the sources stay the same (their
digest is part of the compiler flags, which torch's JIT build compares).
"""
import glob
import hashlib
import os

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def _sources_digest() -> str:
    files = sorted(
        glob.glob(os.path.join(CSRC, "**", "*.*"), recursive=True)
        + glob.glob(os.path.join(ROOT, "tests", "native", "emulated", "*.cpp"))
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def load():
    """Builds (when the sources changed) and loads the library; returns torch.ops.sfpn_emulated."""
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
            f"-DSFPN_EMULATION_SOURCES={_sources_digest()}",
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
