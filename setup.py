"""Build sfpn._C: the C++ CPU kernels always, the CUDA kernels when a toolkit and a CUDA torch exist.

Environment knobs:
  SFPN_WITH_CUDA=0/1      force the CUDA kernels off or on (default: on when possible)
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0": A100 and H100)
  MAX_JOBS                ninja parallelism (torch's own knob)
"""
import glob
import os
import re
import sys
import time

from setuptools import find_packages, setup

# torch's cpp_extension guesses CUDA_HOME from nvcc's place on PATH; /usr/local/bin/nvcc makes it
# guess /usr/local and the link then misses libcudart. Point it at the toolkit before importing.
if "CUDA_HOME" not in os.environ and os.path.isfile("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    forced = os.environ.get("SFPN_WITH_CUDA")
    if forced is not None:
        return forced not in ("0", "", "false", "False")
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _cuda_library_includes() -> list:
    """Header folders of the pip-installed CUDA libraries (cusparse.h ...).

    A bare nvcc toolkit lacks them, yet torch's CUDA headers include them.
    """
    try:
        import nvidia  # namespace package shipped by the nvidia-* wheels torch depends on
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return list(dict.fromkeys(p for p in found if os.path.isdir(p)))


def _link_args() -> list:
    """OpenMP, and on Linux libstdc++ as the shared library that torch and the interpreter use.

    An extension that links libstdc++ statically (a toolchain whose specs or LDFLAGS say
    -static-libstdc++, or one that finds libstdc++.a before libstdc++.so) carries a second copy
    of the C++ runtime, whose locale facets are not the process's: formatting a number into a
    stream (every TORCH_CHECK message with a size or a label in it) then crashed the process on
    the H200 image (benchmarks/RESULTS.md, 2026-12-04). Naming the shared object first resolves
    every C++ runtime symbol against it, so the static archive, if the driver adds it, stays unused.
    """
    args = ["-fopenmp"]
    if sys.platform.startswith("linux"):
        args.append("-l:libstdc++.so.6")
    return args


def _extension():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))  # noqa: E731
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-fopenmp"]
    define_macros = []
    with_cuda = _want_cuda()
    if with_cuda:
        sources += rel("csrc/cuda/*.cu")
        define_macros.append(("SFPN_WITH_CUDA", None))
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return cpp_extension.CUDAExtension(
            "sfpn._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")] + _cuda_library_includes(),
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=_link_args(),
            py_limited_api=False,
        )
    return cpp_extension.CppExtension(
        "sfpn._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=_link_args(),
    )


class TimedBuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """Ninja compiles the translation units in parallel (without it torch falls back to
    distutils); the build ends with one line saying which kernels were compiled and how long it
    took (pip shows it with -v)."""

    def build_extensions(self):
        start = time.monotonic()
        super().build_extensions()
        with_cuda = any(source.endswith(".cu") for ext in self.extensions for source in ext.sources)
        archs = ", ".join("sm_" + arch.replace(".", "") for arch in re.split(r"[;\s]+", os.environ["TORCH_CUDA_ARCH_LIST"].strip()))
        kernels = f"C++ CPU kernels and CUDA kernels for {archs}" if with_cuda else "C++ CPU kernels, no CUDA kernels"
        print(f"sfpn: built sfpn._C: {kernels}, in {time.monotonic() - start:.0f} s", flush=True)


# kernels/ (the Triton kernels) installs as sfpn.kernels through pyproject's package-dir; package
# discovery only sees folders under their own names, so the mapped package is added here.
PACKAGES = find_packages(include=["sfpn", "sfpn.*"]) + ["sfpn.kernels"]

setup(
    packages=PACKAGES,
    ext_modules=[_extension()],
    cmdclass={"build_ext": TimedBuildExtension},
)
