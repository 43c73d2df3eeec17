"""Triton kernels of the semantic segmentation head, installed as ``sfpn.kernels``.

The kernels are plain launchers (tensors in, tensors out). Each op's module in ``sfpn/ops``
(``resize_sum.py``, ``group_norm_relu.py``, ``cross_entropy.py``) registers them with the
dispatcher as the ``CUDA`` kernels of its ``torch.ops.sfpn.*`` op, and hands them to
:func:`add_implementations` for :func:`interpret_on_cpu`. The dependency runs one way: ``sfpn.ops``
imports this package, this package never imports ``sfpn.ops``.

Which device they serve:
  * CUDA tensors, whenever Triton imports (float64 and empty inputs run the reference).
  * CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment before
    this package is imported) **and** inside :func:`interpret_on_cpu`, which registers them for
    the ``CPU`` key for the length of a block. The interpreter runs the real kernels in NumPy,
    orders of magnitude slower than the reference, so CPU training never takes it by accident;
    the kernel tests opt in explicitly.

Importing this package never fails: without Triton, :data:`AVAILABLE` is False and
:data:`UNAVAILABLE_REASON` says why; the kernel modules themselves import Triton.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping

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

#: The dtypes the kernels take (they compute in float32); the registrations run the reference
#: for others (float64) and for empty tensors.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# The temporary registration of interpret_on_cpu(), while one is active (it is reentrant).
_cpu_registration = {"library": None, "depth": 0}

# The Triton implementation of every op that has one (and of its backward ops), by op name.
_implementations: dict[str, Callable] = {}


def add_implementations(implementations: Mapping[str, Callable]) -> None:
    """Records ops' Triton implementations, by op name, for :func:`interpret_on_cpu` (called by
    ``sfpn.ops._library.register`` for every op with Triton kernels)."""
    _implementations.update(implementations)


def takes(tensor: torch.Tensor) -> bool:
    """Whether the kernels take ``tensor``: a supported dtype and at least one element."""
    return tensor.dtype in KERNEL_DTYPES and tensor.numel() > 0


@contextlib.contextmanager
def interpret_on_cpu():
    """Register the Triton kernels for CPU tensors (run by the interpreter) inside this block.

    The registrations live in a temporary ``torch.library.Library`` destroyed on exit, so the
    ops' references serve CPU tensors again afterwards. Raises ``RuntimeError`` on entry when
    Triton is missing or ``TRITON_INTERPRET=1`` was not set before ``sfpn.kernels`` was imported:
    silently testing the reference instead would be worse.
    """
    if not (AVAILABLE and INTERPRETING):
        raise RuntimeError(
            "interpret_on_cpu() needs Triton and TRITON_INTERPRET=1 set before sfpn is imported"
            + (f"; {UNAVAILABLE_REASON}" if UNAVAILABLE_REASON else "")
        )
    if _cpu_registration["depth"] == 0:
        library = torch.library.Library("sfpn", "IMPL")
        with warnings.catch_warnings():  # "overriding a previously registered kernel": a C++ one, for the block
            warnings.simplefilter("ignore")
            for name, implementation in _implementations.items():
                library.impl(name, implementation, "CPU", allow_override=True)
        _cpu_registration["library"] = library
    _cpu_registration["depth"] += 1
    try:
        yield
    finally:
        _cpu_registration["depth"] -= 1
        if _cpu_registration["depth"] == 0:
            library, _cpu_registration["library"] = _cpu_registration["library"], None
            library._destroy()


def interpreting_on_cpu() -> bool:
    """Whether an :func:`interpret_on_cpu` block is active (the Triton kernels serve CPU tensors)."""
    return _cpu_registration["depth"] > 0


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
            "imported); without interpret_on_cpu() the reference serves CPU tensors"
        )
    if tensor.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"sfpn::{op} runs a Triton kernel, which does not support {tensor.device}")
