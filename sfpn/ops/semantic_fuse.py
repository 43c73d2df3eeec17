"""``semantic_fuse``: SFPN's fusion of the semantic feature into every pyramid level,
``[level + F.interpolate(semantic, level.shape[-2:]) for level in levels]`` in one launch.

Schema and reference fallback below (:mod:`sfpn.ops._library`); kernels:
``csrc/cpu/semantic_fuse.cpp``, ``csrc/cuda/semantic_fuse.cu``. Under ``torch.autocast`` it runs
in its inputs' dtype (an add, all inputs of one dtype). On the CPU each channels_last level gives
a channels_last output, and channels_last gradients a channels_last gradient of ``semantic``,
computed in NHWC without layout copies.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _library
from ._resize import resize, resize_adjoint, resolve_align_corners
from ._validate import OpTypeError, OpValueError, check_same, check_tensor


def semantic_fuse_reference(
    levels, semantic: torch.Tensor, mode: str = "bilinear", align_corners: bool | None = None
) -> list[torch.Tensor]:
    """Pure-PyTorch ``semantic_fuse``: the definition the kernels are tested against."""
    align_corners = resolve_align_corners(mode, align_corners)
    return [level + resize(semantic, level.shape[-2:], mode, align_corners) for level in levels]


def _check_semantic_fuse(levels, semantic) -> None:
    check_tensor("semantic", semantic, ndim=4, nonempty=True)
    if isinstance(levels, torch.Tensor) or not isinstance(levels, (list, tuple)):
        raise OpTypeError(f"levels must be a list or tuple of tensors, got {type(levels).__name__}")
    if len(levels) == 0:
        raise OpValueError("levels must hold at least one tensor, got an empty sequence")
    for index, level in enumerate(levels):
        name = f"levels[{index}]"
        check_tensor(name, level, ndim=4, nonempty=True)
        check_same(name, level, "semantic", semantic)
        if level.shape[:2] != semantic.shape[:2]:
            raise OpValueError(
                f"{name} must share batch and channels (N, C) with semantic, got {tuple(level.shape)} "
                f"and semantic {tuple(semantic.shape)}"
            )


def semantic_fuse(
    levels: list[torch.Tensor], semantic: torch.Tensor, mode: str = "bilinear", align_corners: Optional[bool] = None
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
        A list of ``(N, C, H_i, W_i)`` tensors, differentiable (twice) w.r.t. every level and
        ``semantic``.

    Scripts with TorchScript; a scripted call skips the argument checks (TorchScript cannot
    compile them).
    """
    align_corners = resolve_align_corners(mode, align_corners)
    if not torch.jit.is_scripting():
        _check_semantic_fuse(levels, semantic)
    return torch.ops.sfpn.semantic_fuse(list(levels), semantic, mode, align_corners)


# ----------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake, autograd (twice differentiable).


def _semantic_fuse_op_reference(levels, semantic, mode, align_corners):
    return [
        (level + resize(semantic, level.shape[-2:], mode, align_corners)).contiguous(
            memory_format=_library.output_memory_format(level))
        for level in levels
    ]


def _semantic_fuse_backward_reference(grads, semantic_height, semantic_width, mode, align_corners):
    adjoints = sum(resize_adjoint(grad, semantic_height, semantic_width, mode, align_corners) for grad in grads)
    return adjoints.contiguous(memory_format=_library.output_memory_format(grads[0]))


_library.define(
    "semantic_fuse(Tensor[] levels, Tensor semantic, str mode, bool align_corners) -> Tensor[]",
    _semantic_fuse_op_reference,
)
# Gradient w.r.t. `semantic`: sum over levels of the adjoint resize of grads[i].
_library.define(
    "semantic_fuse_backward(Tensor[] grads, SymInt semantic_height, SymInt semantic_width, str mode, "
    "bool align_corners) -> Tensor",
    _semantic_fuse_backward_reference,
)


@torch.library.register_fake("sfpn::semantic_fuse")
def _(levels, semantic, mode, align_corners):
    return [_library.empty_like_layout(level, level.shape) for level in levels]


@torch.library.register_fake("sfpn::semantic_fuse_backward")
def _(grads, semantic_height, semantic_width, mode, align_corners):
    return _library.empty_like_layout(grads[0], (grads[0].shape[0], grads[0].shape[1], semantic_height, semantic_width))


def _setup_context(ctx, inputs, output):
    _, semantic, ctx.mode, ctx.align_corners = inputs
    ctx.semantic_size = semantic.shape[-2:]


def _backward(ctx, grads):
    # An output that took no part in the loss has no gradient: it adds nothing to semantic's.
    defined = [grad for grad in grads if grad is not None]
    grad_semantic = None
    if ctx.needs_input_grad[1] and defined:
        height, width = ctx.semantic_size
        grad_semantic = torch.ops.sfpn.semantic_fuse_backward(defined, height, width, ctx.mode, ctx.align_corners)
    return list(grads), grad_semantic, None, None


def _setup_backward_context(ctx, inputs, output):
    grads, _, _, ctx.mode, ctx.align_corners = inputs
    ctx.grad_shapes = [grad.shape for grad in grads]


def _backward_backward(ctx, grad_grad_semantic):
    zeros = [grad_grad_semantic.new_zeros(shape) for shape in ctx.grad_shapes]
    return torch.ops.sfpn.semantic_fuse(zeros, grad_grad_semantic, ctx.mode, ctx.align_corners), None, None, None, None


torch.library.register_autograd("sfpn::semantic_fuse", _backward, setup_context=_setup_context)
torch.library.register_autograd("sfpn::semantic_fuse_backward", _backward_backward, setup_context=_setup_backward_context)
_library.register(_library.Op("semantic_fuse", _library.COMPILED, backward=("semantic_fuse_backward",)))
