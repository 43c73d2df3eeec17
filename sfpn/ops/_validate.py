"""Argument checks shared by the public ops: each error names the argument and what was expected.

The errors form one hierarchy, so that a caller's handler catches them whether it was written for
Python's conventions or for torchvision's ops (which raise ``RuntimeError`` from their C++ checks
and ``AssertionError`` for RoI boxes of the wrong shape):

* :class:`OpArgumentError` (a ``RuntimeError``): any bad argument of an sfpn op;
* :class:`OpValueError` (also a ``ValueError``): a wrong shape, size, device or value;
* :class:`OpTypeError` (also a ``TypeError``): not a tensor where one is needed, or a wrong dtype;
* :class:`RoIBoxesError` (an :class:`OpValueError`, also an ``AssertionError``): ``roi_align``
  boxes of the wrong shape, where torchvision asserts.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class OpArgumentError(RuntimeError):
    """A bad argument of an sfpn op (its message names the argument). A ``RuntimeError``, as what
    torchvision's ops raise for bad input; the subclasses are ``ValueError`` or ``TypeError`` too."""


class OpValueError(OpArgumentError, ValueError):
    """A wrong shape, size, device or value."""


class OpTypeError(OpArgumentError, TypeError):
    """Not a tensor where one is needed, or a tensor of a wrong dtype."""


class RoIBoxesError(OpValueError, AssertionError):
    """``roi_align`` boxes of the wrong shape: also an ``AssertionError``, as torchvision's
    ``check_roi_boxes_shape`` asserts."""


def check_tensor(
    name: str,
    value,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = FLOATING,
    device: torch.device | None = None,
    nonempty: bool = False,
) -> torch.Tensor:
    """Check one tensor argument and return it.

    Raises :class:`OpTypeError` for a non-tensor or a wrong dtype (quantized ones included:
    torchvision takes ``quint8`` in ``roi_align`` and ``nms``, sfpn does not), :class:`OpValueError`
    for a wrong rank, device or an empty tensor where one is not allowed.
    """
    if not isinstance(value, torch.Tensor):
        raise OpTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise OpValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        expected = ", ".join(_dtype_name(d) for d in dtypes)
        quantized = " (quantized tensors are not supported: dequantize them first)" if value.is_quantized else ""
        raise OpTypeError(f"{name} must have dtype in ({expected}), got {_dtype_name(value.dtype)}{quantized}")
    if device is not None and value.device != device:
        raise OpValueError(f"{name} must be on {device}, got {value.device}")
    if nonempty and value.numel() == 0:
        raise OpValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_same(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``value`` must share ``ref``'s device and dtype."""
    if value.device != ref.device:
        raise OpValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {value.device}")
    if value.dtype != ref.dtype:
        raise OpTypeError(f"{name} must have the same dtype as {ref_name} ({ref.dtype}), got {value.dtype}")


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise OpValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
