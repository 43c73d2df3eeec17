"""``python -m sfpn.info``: versions, the CPU and GPU, the build of the compiled kernels, the
precision ``solver.amp=auto`` chooses on each device, and which backend serves each op on CPU and
on CUDA (and why)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess

import torch

from . import _extension, kernels
from .engine import precision
from .modeling import layers
from .ops import _library


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "not found"
    release = [line for line in out.splitlines() if "release" in line]
    return release[0].strip() if release else "unknown"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _backend(op: _library.Op, device: str) -> str:
    """Which backend serves ``op`` on ``device``, and why when it is the reference."""
    served_by = _library.serving(op.name, device)
    if served_by == "C++":
        return "C++ kernel"
    if served_by == "CUDA":
        return "CUDA kernel"
    if served_by == "Triton":
        if device == "cpu":
            return "Triton (interpreter)"
        return "Triton" if torch.cuda.is_available() else "Triton (but no GPU is visible)"
    if op.backend == _library.TRITON and not (device == "cpu" and op.compiled_on_cpu):
        if device == "cpu":
            return "reference (Triton kernels serve CUDA)"
        return f"reference ({kernels.UNAVAILABLE_REASON})"
    if not _extension.STATUS.loaded:
        return "reference (extension not loaded)"
    if device == "cuda" and op.backend == _library.COMPILED_CPU:
        return "reference (no CUDA kernel)"
    if device == "cuda" and _extension.STATUS.cuda_version == 0:
        return "reference (extension built without CUDA)"
    return "reference (no kernel registered)"


def backends() -> dict[str, dict[str, str]]:
    """Op name -> {"cpu": backend, "cuda": backend}, in words."""
    return {name: {dev: _backend(op, dev) for dev in ("cpu", "cuda")} for name, op in _library.OPS.items()}


def precision_choices() -> dict[str, str]:
    """Device -> what ``solver.amp=auto`` chooses there and why, for the CPU and a visible GPU."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {device: precision.choose_precision("auto", device).describe() for device in devices}


def report() -> str:
    status = _extension.STATUS
    cuda = status.cuda_version
    lines = [
        f"sfpn          {__import__('sfpn').__version__}",
        f"python        {platform.python_version()} ({platform.python_compiler()})",
        f"torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton        {_triton_version()}",
        f"nvcc          {_nvcc_version()}",
        f"CPU           {precision.cpu_model()}, {os.cpu_count()} cores",
        f"GPU           {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none visible'}",
        f"extension     {status.reason}" + (f" ({status.path})" if status.path else ""),
        f"  with CUDA   {'yes, CUDA %d.%d' % (cuda // 1000, cuda % 1000 // 10) if cuda else 'no'}",
        *(f"precision     {device}: {choice}" for device, choice in precision_choices().items()),
        f"fp32 3x3 conv cpu: {layers.describe_winograd()}",
        "",
        f"{'op':<26}{'cpu':<40}cuda",
    ]
    for op, by_device in backends().items():
        lines.append(f"{op:<26}{by_device['cpu']:<40}{by_device['cuda']}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
