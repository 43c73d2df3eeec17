"""Fused resize-and-add ops of the FPN top-down pathway and of SFPN's semantic fusion.

``upsample_add(top, lateral)`` is ``lateral + F.interpolate(top, size=lateral.shape[-2:])`` in one
pass over memory. Its compiled kernels live in ``csrc/cpu/upsample_add.cpp`` and
``csrc/cuda/upsample_add.cu``; the reference below is the definition they are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from ._validate import check_choice, check_same, check_tensor

MODES = ("nearest", "bilinear")


def _resolve_align_corners(mode: str, align_corners: bool | None) -> bool:
    check_choice("mode", mode, MODES)
    if mode == "nearest":
        if align_corners:
            raise ValueError("align_corners must be None or False with mode='nearest'")
        return False
    return bool(align_corners)


def _resize(x: torch.Tensor, size, mode: str, align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners if mode == "bilinear" else None)


def upsample_add_reference(
    top: torch.Tensor, lateral: torch.Tensor, mode: str = "nearest", align_corners: bool | None = None
) -> torch.Tensor:
    """Pure-PyTorch ``upsample_add``: the definition the kernels are tested against."""
    return lateral + _resize(top, lateral.shape[-2:], mode, _resolve_align_corners(mode, align_corners))


def _check_upsample_add(top, lateral) -> None:
    check_tensor("lateral", lateral, ndim=4, nonempty=True)
    check_tensor("top", top, ndim=4, nonempty=True)
    check_same("top", top, "lateral", lateral)
    if top.shape[:2] != lateral.shape[:2]:
        raise ValueError(
            f"top and lateral must share batch and channels (N, C), got top {tuple(top.shape)} "
            f"and lateral {tuple(lateral.shape)}"
        )


def upsample_add(
    top: torch.Tensor, lateral: torch.Tensor, mode: str = "nearest", align_corners: bool | None = None
) -> torch.Tensor:
    """``lateral + interpolate(top, size=lateral.shape[-2:], mode, align_corners)`` in one pass.

    Args:
        top: the coarser map ``(N, C, Ht, Wt)``; any size (not only half of ``lateral``).
        lateral: the finer map ``(N, C, H, W)``, same dtype and device as ``top``.
        mode: ``"nearest"`` (PyTorch's legacy nearest, as FPN uses) or ``"bilinear"``.
        align_corners: bilinear only, as in ``F.interpolate``; ``None`` means False.

    Returns:
        ``(N, C, H, W)``, differentiable w.r.t. both inputs.
    """
    align_corners = _resolve_align_corners(mode, align_corners)
    _check_upsample_add(top, lateral)
    if _extension.has_kernel("upsample_add", lateral.device):
        return torch.ops.sfpn.upsample_add(top, lateral, mode, align_corners)
    return upsample_add_reference(top, lateral, mode, align_corners)


def _register_upsample_add() -> None:
    @torch.library.register_fake("sfpn::upsample_add")
    def _(top, lateral, mode, align_corners):
        return torch.empty_like(lateral, memory_format=torch.contiguous_format)

    @torch.library.register_fake("sfpn::upsample_add_backward")
    def _(grad, top_height, top_width, mode, align_corners):
        return grad.new_empty((grad.shape[0], grad.shape[1], top_height, top_width))

    def setup_context(ctx, inputs, output):
        top, _, mode, align_corners = inputs
        ctx.top_size = top.shape[-2:]
        ctx.mode, ctx.align_corners = mode, align_corners

    def backward(ctx, grad):
        grad_top = None
        if ctx.needs_input_grad[0]:
            height, width = ctx.top_size
            grad_top = torch.ops.sfpn.upsample_add_backward(grad, height, width, ctx.mode, ctx.align_corners)
        return grad_top, grad, None, None

    torch.library.register_autograd("sfpn::upsample_add", backward, setup_context=setup_context)


if _extension.STATUS.loaded:
    _register_upsample_add()
