"""``upsample_add``: the FPN top-down step, ``lateral + F.interpolate(top, lateral.shape[-2:])`` in
one pass over memory.

Schema and reference fallback below (:mod:`sfpn.ops._library`); kernels:
``csrc/cpu/upsample_add.cpp``, ``csrc/cuda/upsample_add.cu`` (resize indices shared with
``semantic_fuse`` in ``csrc/resize_index.h``). Under ``torch.autocast`` it runs in its inputs'
dtype (an add: nothing to promote, as both inputs share one dtype). On the CPU a channels_last
``lateral`` gives a channels_last result (and gradient), computed in NHWC without a layout copy.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _library
from ._resize import resize, resize_adjoint, resolve_align_corners
from ._validate import OpValueError, check_same, check_tensor


def upsample_add_reference(
    top: torch.Tensor, lateral: torch.Tensor, mode: str = "nearest", align_corners: bool | None = None
) -> torch.Tensor:
    """Pure-PyTorch ``upsample_add``: the definition the kernels are tested against."""
    return lateral + resize(top, lateral.shape[-2:], mode, resolve_align_corners(mode, align_corners))


def _check_upsample_add(top, lateral) -> None:
    check_tensor("lateral", lateral, ndim=4, nonempty=True)
    check_tensor("top", top, ndim=4, nonempty=True)
    check_same("top", top, "lateral", lateral)
    if top.shape[:2] != lateral.shape[:2]:
        raise OpValueError(
            f"top and lateral must share batch and channels (N, C), got top {tuple(top.shape)} "
            f"and lateral {tuple(lateral.shape)}"
        )


def upsample_add(
    top: torch.Tensor, lateral: torch.Tensor, mode: str = "nearest", align_corners: Optional[bool] = None
) -> torch.Tensor:
    """``lateral + interpolate(top, size=lateral.shape[-2:], mode, align_corners)`` in one pass.

    Args:
        top: the coarser map ``(N, C, Ht, Wt)``; any size (not only half of ``lateral``).
        lateral: the finer map ``(N, C, H, W)``, same dtype and device as ``top``.
        mode: ``"nearest"`` (PyTorch's legacy nearest, as FPN uses) or ``"bilinear"``.
        align_corners: bilinear only, as in ``F.interpolate``; ``None`` means False.

    Returns:
        ``(N, C, H, W)``, differentiable (twice) w.r.t. both inputs.

    Scripts with TorchScript; a scripted call skips the argument checks (TorchScript cannot
    compile them).
    """
    align_corners = resolve_align_corners(mode, align_corners)
    if not torch.jit.is_scripting():
        _check_upsample_add(top, lateral)
    return torch.ops.sfpn.upsample_add(top, lateral, mode, align_corners)


# ----------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake, autograd (twice differentiable: the
# backward is linear in `grad`, and its own backward is the forward resize again).

_library.define(
    "upsample_add(Tensor top, Tensor lateral, str mode, bool align_corners) -> Tensor",
    lambda top, lateral, mode, align_corners: (lateral + resize(top, lateral.shape[-2:], mode, align_corners)).contiguous(
        memory_format=_library.output_memory_format(lateral)),
)
# Gradient w.r.t. `top` (the adjoint of the resize); the gradient w.r.t. lateral is `grad`.
_library.define(
    "upsample_add_backward(Tensor grad, SymInt top_height, SymInt top_width, str mode, bool align_corners) -> Tensor",
    resize_adjoint,
)


@torch.library.register_fake("sfpn::upsample_add")
def _(top, lateral, mode, align_corners):
    return _library.empty_like_layout(lateral, lateral.shape)


@torch.library.register_fake("sfpn::upsample_add_backward")
def _(grad, top_height, top_width, mode, align_corners):
    return _library.empty_like_layout(grad, (grad.shape[0], grad.shape[1], top_height, top_width))


def _setup_context(ctx, inputs, output):
    top, _, ctx.mode, ctx.align_corners = inputs
    ctx.top_size = top.shape[-2:]


def _backward(ctx, grad):
    grad_top = None
    if ctx.needs_input_grad[0]:
        height, width = ctx.top_size
        grad_top = torch.ops.sfpn.upsample_add_backward(grad, height, width, ctx.mode, ctx.align_corners)
    return grad_top, grad, None, None


def _setup_backward_context(ctx, inputs, output):
    grad, _, _, ctx.mode, ctx.align_corners = inputs
    ctx.grad_shape = grad.shape


def _backward_backward(ctx, grad_grad_top):
    resized = torch.ops.sfpn.upsample_add(grad_grad_top, grad_grad_top.new_zeros(ctx.grad_shape), ctx.mode, ctx.align_corners)
    return resized, None, None, None, None


torch.library.register_autograd("sfpn::upsample_add", _backward, setup_context=_setup_context)
torch.library.register_autograd("sfpn::upsample_add_backward", _backward_backward, setup_context=_setup_backward_context)
_library.register(_library.Op("upsample_add", _library.COMPILED, backward=("upsample_add_backward",)))
