"""Triton kernels of the semantic segmentation head, installed as ``sfpn.kernels``.

The kernels are plain launchers (tensors in, tensors out); ``sfpn.ops.semantic`` wraps them as
dispatcher ops (``torch.ops.sfpn.*``) with fake implementations and autograd.

Which device they serve:
  * CUDA tensors, whenever Triton imports and a GPU is visible.
  * CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment before
    this package is imported) **and** inside :func:`interpret_on_cpu`. The interpreter runs the
    real kernels in NumPy, orders of magnitude slower than the reference, so CPU training never
    takes it by accident; the kernel tests opt in explicitly.

Importing this package never fails: without Triton, :data:`AVAILABLE` is False and
:data:`UNAVAILABLE_REASON` says why; the kernel modules themselves import Triton.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton  # noqa: F401
except ImportError as error:  # a CPU-only install without Triton: the references serve
    AVAILABLE = False
    UNAVAILABLE_REASON = f"triton does not import ({error})"
else:
    AVAILABLE = True
    UNAVAILABLE_REASON = ""

#: Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when a kernel module is imported.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Flipped only by interpret_on_cpu(). A one-entry dict (not a rebindable global) so that functions
# that read it see the current value and torch.compile guards on it.
_CPU_OPT_IN = {"enabled": False}


@contextlib.contextmanager
def interpret_on_cpu(enabled: bool = True):
    """Route CPU tensors to the Triton kernels (run by the interpreter) inside this block.

    Raises ``RuntimeError`` on entry when Triton is missing or ``TRITON_INTERPRET=1`` was not set
    before ``sfpn.kernels`` was imported: silently testing the reference instead would be worse.
    """
    if enabled and not (AVAILABLE and INTERPRETING):
        raise RuntimeError(
            "interpret_on_cpu() needs Triton and TRITON_INTERPRET=1 set before sfpn is imported"
            + (f"; {UNAVAILABLE_REASON}" if UNAVAILABLE_REASON else "")
        )
    previous = _CPU_OPT_IN["enabled"]
    _CPU_OPT_IN["enabled"] = enabled
    try:
        yield
    finally:
        _CPU_OPT_IN["enabled"] = previous


def serves(device: torch.device) -> bool:
    """Whether the Triton kernels serve tensors on ``device`` (see the module docstring)."""
    if not AVAILABLE:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and INTERPRETING and _CPU_OPT_IN["enabled"]


def backend(device_type: str) -> str:
    """Which backend serves the semantic-head ops on ``device_type``, and why, in words."""
    if device_type == "cpu":
        if AVAILABLE and INTERPRETING and _CPU_OPT_IN["enabled"]:
            return "Triton (interpreter)"
        return "reference (Triton kernels serve CUDA)"
    if not AVAILABLE:
        return f"reference ({UNAVAILABLE_REASON})"
    if not torch.cuda.is_available():
        return "Triton (but no GPU is visible)"
    return "Triton"


def launch_device(tensor: torch.Tensor):
    """Context that makes ``tensor``'s GPU the current one: Triton launches on the current device."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


def check_launchable(tensor: torch.Tensor, op: str) -> None:
    """Raise a clear error where a Triton launch would fail obscurely (called by the op bodies)."""
    if not AVAILABLE:
        raise RuntimeError(f"sfpn::{op} runs a Triton kernel, but {UNAVAILABLE_REASON}")
    if tensor.device.type == "cpu" and not INTERPRETING:
        raise RuntimeError(
            f"sfpn::{op} runs a Triton kernel: CPU tensors need TRITON_INTERPRET=1 (set before sfpn is "
            "imported); the public sfpn.ops functions run the reference on CPU instead"
        )
    if tensor.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"sfpn::{op} runs a Triton kernel, which does not support {tensor.device}")
