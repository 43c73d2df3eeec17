"""The CUDA kernels of csrc/cuda/ on the CPU: builds and loads the test library
``sfpn_emulated`` and calls its ops (the ``emulated`` fixture of tests/conftest.py).

The .cu files are compiled a second time by the host compiler against our CUDA emulation
(csrc/emulation/cuda_emulation.h), with the entry points of tests/native/emulated/*.cpp: the
same kernels, launch geometry and host entry functions as the GPU build. Each block's threads
run as fibers, one at a time between barriers, in an order shuffled by the seed (a missing
``__syncthreads`` or a shared memory race gives a wrong answer under some seed); blocks run
one after another in a shuffled order; every buffer a kernel touches ends at an inaccessible
page (an out-of-bounds access fails the launch with the kernel's name).

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


SEEDS = (0, 1, 2)


def _checked_copy(arg):
    if isinstance(arg, torch.Tensor):
        return arg.clone()
    if isinstance(arg, list):
        return [_checked_copy(a) for a in arg]
    return arg


def run(emulated, name, *args, seed=0):
    """Calls emulated op `name` under `seed` with checked copies of the tensor arguments: the
    kernels see only buffers that end at an inaccessible page, as do the outputs."""
    emulated.set_seed(seed)
    emulated.set_checked_memory(True)
    try:
        return getattr(emulated, name)(*(_checked_copy(a) for a in args))
    finally:
        emulated.set_checked_memory(False)


def assert_close(actual, expected, dtype=torch.float32):
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
