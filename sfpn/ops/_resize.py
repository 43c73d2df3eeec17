"""The resize shared by ``upsample_add`` and ``semantic_fuse``, and its adjoint (their backward)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._library import output_memory_format
from ._validate import OpValueError, check_choice

MODES = ("nearest", "bilinear")


def resolve_align_corners(mode: str, align_corners: Optional[bool]) -> bool:
    """The op's ``align_corners`` (False for nearest); checks ``mode`` in eager calls (scripted
    ones leave it to the kernels)."""
    if not torch.jit.is_scripting():
        check_choice("mode", mode, MODES)
        if mode == "nearest" and align_corners:
            raise OpValueError("align_corners must be None or False with mode='nearest'")
    return mode == "bilinear" and align_corners is not None and bool(align_corners)


def resize(x: torch.Tensor, size, mode: str, align_corners: bool) -> torch.Tensor:
    """``F.interpolate(x, size)``: ``(N, C, h, w)`` -> ``(N, C, *size)``."""
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners if mode == "bilinear" else None)


def resize_adjoint(grad: torch.Tensor, height, width, mode: str, align_corners: bool) -> torch.Tensor:
    """The adjoint of :func:`resize` to ``(height, width)``: ``(N, C, H, W)`` -> ``(N, C, height, width)``,
    laid out as :func:`~sfpn.ops._library.output_memory_format` of ``grad`` says."""
    input_size = [grad.shape[0], grad.shape[1], height, width]
    output_size = list(grad.shape[-2:])
    if mode == "nearest":
        adjoint = torch.ops.aten.upsample_nearest2d_backward(grad, output_size, input_size)
    else:
        adjoint = torch.ops.aten.upsample_bilinear2d_backward(grad, output_size, input_size, align_corners)
    return adjoint.contiguous(memory_format=output_memory_format(grad))
