"""Loading the compiled kernels (``sfpn._C``).

The extension holds only kernel registrations (``TORCH_LIBRARY_IMPL`` for the CPU and CUDA keys
of the ops that ``sfpn.ops`` defines) and a build probe, no ``PyInit_``, so it is loaded with
``torch.ops.load_library``. A missing, stale or ABI-mismatched build is a warning, never an import
error: the dispatcher then serves every op with its pure-PyTorch reference.

Set ``SFPN_DISABLE_EXTENSION=1`` to ignore a built extension (the references serve).
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import os
import warnings

import torch


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
