"""The CUDA resize kernels' per-element logic (csrc/cuda/resize.cuh), compiled for the host by
tests/native/resize_logic.cpp and checked there against a dense-matrix model."""
import os
import shutil
import subprocess

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cuda_resize_logic_on_host(tmp_path):
    """The CUDA kernels' per-element sample() and adjoint(), compiled for the host and checked
    against a dense-matrix model of the resize (tests/native/resize_logic.cpp)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    executable = tmp_path / "resize_logic"
    torch_lib = library_paths()[0]
    command = [
        compiler, "-std=c++20", "-O1", f"-I{os.path.join(ROOT, 'csrc')}", *(f"-I{path}" for path in include_paths()),
        os.path.join(ROOT, "tests", "native", "resize_logic.cpp"), f"-L{torch_lib}", "-lc10",
        f"-Wl,-rpath,{torch_lib}", "-o", str(executable),
    ]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(executable)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert " 0 failures" in result.stdout
