"""Loading the compiled kernels (``sfpn._C``) and telling which backend serves each op.

The extension holds only ``TORCH_LIBRARY`` registrations (no ``PyInit_``), so it is loaded with
``torch.ops.load_library``. A missing, stale or ABI-mismatched build is a warning, never an import
error: every op then runs its pure-PyTorch reference.

Set ``SFPN_DISABLE_EXTENSION=1`` to ignore a built extension (the reference path serves).
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import os
import warnings

import torch

#: The ops compiled into ``sfpn._C`` (see ``csrc/ops.cpp``).
COMPILED_OPS = (
    "upsample_add",
    "semantic_fuse",
    "roi_align",
    "multilevel_roi_align",
    "nms",
    "batched_nms",
    "batched_nms_padded",
)
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@dataclasses.dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    path: str | None
    reason: str  # why it is or is not loaded, in words for `python -m sfpn.info`
    cuda_version: int  # CUDA runtime the extension was compiled against, 0 for a CPU-only build


def _library_path() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = os.path.join(here, "_C" + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None


def _load() -> ExtensionStatus:
    if os.environ.get("SFPN_DISABLE_EXTENSION", "0") not in ("", "0"):
        return ExtensionStatus(False, None, "disabled by SFPN_DISABLE_EXTENSION", 0)
    path = _library_path()
    if path is None:
        status = ExtensionStatus(False, None, "sfpn._C is not built (install with `pip install -e .`)", 0)
    else:
        try:
            torch.ops.load_library(path)
            return ExtensionStatus(True, path, "loaded", int(torch.ops.sfpn._cuda_version()))
        except (OSError, RuntimeError) as error:  # ABI mismatch, missing symbol, wrong CUDA
            status = ExtensionStatus(False, path, f"failed to load {path}: {error}", 0)
    warnings.warn(
        f"sfpn: compiled kernels unavailable ({status.reason}); using the pure-PyTorch reference ops",
        RuntimeWarning,
        stacklevel=3,
    )
    return status


STATUS = _load()

#: (op name, device type) -> True when a compiled kernel serves it. A plain dict so that
#: torch.compile can read it while tracing.
KERNELS = {
    (op, device): STATUS.loaded
    and torch._C._dispatch_has_kernel_for_dispatch_key(f"sfpn::{op}", key)
    for op in COMPILED_OPS
    for device, key in _DISPATCH_KEYS.items()
}


def has_kernel(op: str, device: torch.device) -> bool:
    """Whether ``sfpn._C`` has a kernel for ``op`` on ``device``'s type."""
    return KERNELS.get((op, device.type), False)
