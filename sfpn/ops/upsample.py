"""Fused resize-and-add ops of the FPN top-down pathway and of SFPN's semantic fusion.

``upsample_add(top, lateral)`` is ``lateral + F.interpolate(top, size=lateral.shape[-2:])`` in one
pass over memory; ``semantic_fuse(levels, semantic)`` is ``[level + F.interpolate(semantic,
size=level.shape[-2:]) for level in levels]`` in one launch for all levels on CUDA. Their compiled
kernels live in ``csrc/{cpu,cuda}/{upsample_add,semantic_fuse}.*``, which share one resize-index
helper (``csrc/resize_index.h``); the references below are the definitions they are tested against.
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


def semantic_fuse_reference(
    levels, semantic: torch.Tensor, mode: str = "bilinear", align_corners: bool | None = None
) -> list[torch.Tensor]:
    """Pure-PyTorch ``semantic_fuse``: the definition the kernels are tested against."""
    align_corners = _resolve_align_corners(mode, align_corners)
    return [level + _resize(semantic, level.shape[-2:], mode, align_corners) for level in levels]


def _check_semantic_fuse(levels, semantic) -> list[torch.Tensor]:
    check_tensor("semantic", semantic, ndim=4, nonempty=True)
    if isinstance(levels, torch.Tensor) or not isinstance(levels, (list, tuple)):
        raise TypeError(f"levels must be a list or tuple of tensors, got {type(levels).__name__}")
    if len(levels) == 0:
        raise ValueError("levels must hold at least one tensor, got an empty sequence")
    for index, level in enumerate(levels):
        name = f"levels[{index}]"
        check_tensor(name, level, ndim=4, nonempty=True)
        check_same(name, level, "semantic", semantic)
        if level.shape[:2] != semantic.shape[:2]:
            raise ValueError(
                f"{name} must share batch and channels (N, C) with semantic, got {tuple(level.shape)} "
                f"and semantic {tuple(semantic.shape)}"
            )
    return list(levels)


def semantic_fuse(
    levels, semantic: torch.Tensor, mode: str = "bilinear", align_corners: bool | None = None
) -> list[torch.Tensor]:
    """``[level + interpolate(semantic, size=level.shape[-2:]) for level in levels]``, all at once.

    SFPN's fusion of the semantic feature back into every pyramid level: up-sampled to the finer
    levels, down-sampled (point-sampled, as ``F.interpolate(antialias=False)``) to the coarser.
    One kernel launch for all levels on CUDA, forward and backward.

    Args:
        levels: a list of pyramid maps ``(N, C, H_i, W_i)``, same dtype and device as ``semantic``.
        semantic: the semantic feature ``(N, C, Hs, Ws)``.
        mode: ``"bilinear"`` (the default) or ``"nearest"`` (PyTorch's legacy nearest).
        align_corners: bilinear only, as in ``F.interpolate``; ``None`` means False.

    Returns:
        A list of ``(N, C, H_i, W_i)`` tensors, differentiable w.r.t. every level and ``semantic``.
    """
    align_corners = _resolve_align_corners(mode, align_corners)
    levels = _check_semantic_fuse(levels, semantic)
    if _extension.has_kernel("semantic_fuse", semantic.device):
        return torch.ops.sfpn.semantic_fuse(levels, semantic, mode, align_corners)
    return semantic_fuse_reference(levels, semantic, mode, align_corners)


def _register_semantic_fuse() -> None:
    @torch.library.register_fake("sfpn::semantic_fuse")
    def _(levels, semantic, mode, align_corners):
        return [torch.empty_like(level, memory_format=torch.contiguous_format) for level in levels]

    @torch.library.register_fake("sfpn::semantic_fuse_backward")
    def _(grads, semantic_height, semantic_width, mode, align_corners):
        return grads[0].new_empty((grads[0].shape[0], grads[0].shape[1], semantic_height, semantic_width))

    def setup_context(ctx, inputs, output):
        _, semantic, mode, align_corners = inputs
        ctx.semantic_size = semantic.shape[-2:]
        ctx.mode, ctx.align_corners = mode, align_corners

    def backward(ctx, grads):
        # An output that took no part in the loss has no gradient: it adds nothing to semantic's.
        defined = [grad for grad in grads if grad is not None]
        grad_semantic = None
        if ctx.needs_input_grad[1] and defined:
            height, width = ctx.semantic_size
            grad_semantic = torch.ops.sfpn.semantic_fuse_backward(defined, height, width, ctx.mode, ctx.align_corners)
        return list(grads), grad_semantic, None, None

    torch.library.register_autograd("sfpn::semantic_fuse", backward, setup_context=setup_context)


if _extension.STATUS.loaded:
    _register_upsample_add()
    _register_semantic_fuse()
