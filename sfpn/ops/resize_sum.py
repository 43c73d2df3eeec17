"""``resize_sum``: the semantic head's multi-level sum, every level bilinearly resized to one size,
in one kernel.

Schema, reference fallback and the Triton kernel's registration for CUDA below
(:mod:`sfpn.ops._library`); kernel: ``kernels/resize_sum.py``. The kernel computes in float32:
float64 and empty inputs run the reference. Under ``torch.autocast`` it runs in its inputs' dtype.
On the CPU the C++ kernels of ``csrc/cpu/resize_sum.cpp`` serve both ops (each output row summed
over the levels in float32, float64 for float64, and written once); channels_last levels give a
channels_last sum, and a channels_last gradient channels_last level gradients.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _library
from .. import kernels
from ._validate import OpValueError, check_same, check_tensor

MAX_LEVELS = 5


def resize_sum_reference(levels: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Pure-PyTorch :func:`resize_sum`: summed in place into the first level's resized copy, and a
    level already at ``size`` taken as it is (bilinear resizing to its own size is the identity):
    a plain copy of the first, a later one added without a copy; no partial sums are allocated."""
    size = tuple(size)
    first = levels[0]
    if tuple(first.shape[-2:]) == size:
        total = first.clone()
    else:
        total = F.interpolate(first, size=size, mode="bilinear", align_corners=False)
    for level in levels[1:]:
        total.add_(level if tuple(level.shape[-2:]) == size else F.interpolate(level, size=size, mode="bilinear", align_corners=False))
    return total


def check_size(size) -> None:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise OpValueError(f"size must be a pair of positive ints (height, width), got {size!r}")


def resize_sum(levels: list[torch.Tensor], size: list[int]) -> torch.Tensor:
    """Sum of every level bilinearly resized to ``size`` (align_corners False), in one kernel.

    Args:
        levels: 1 to 5 maps ``(N, C, H_i, W_i)`` of one dtype and device, any sizes (levels larger
            than ``size`` are down-sampled bilinearly, without anti-aliasing, as F.interpolate).
        size: the target ``(H, W)``, e.g. the stride-8 level's.

    Returns:
        ``(N, C, H, W)`` in the levels' dtype, differentiable w.r.t. every level.

    Scripts with TorchScript; a scripted call skips the argument checks (TorchScript cannot
    compile them).
    """
    if not torch.jit.is_scripting():
        _check_resize_sum(levels, size)
    # Indexed, not converted: SymInts stay symbolic under torch.compile(dynamic=True).
    return torch.ops.sfpn.resize_sum(list(levels), size[0], size[1])


def _check_resize_sum(levels, size) -> None:
    if not isinstance(levels, (list, tuple)) or not 1 <= len(levels) <= MAX_LEVELS:
        raise OpValueError(f"levels must be a list of 1 to {MAX_LEVELS} tensors, got {type(levels).__name__}"
                         + (f" of length {len(levels)}" if isinstance(levels, (list, tuple)) else ""))
    check_size(size)
    for i, level in enumerate(levels):
        check_tensor(f"levels[{i}]", level, ndim=4, nonempty=True)
        if i:
            check_same(f"levels[{i}]", level, "levels[0]", levels[0])
            if level.shape[:2] != levels[0].shape[:2]:
                raise OpValueError(
                    f"levels[{i}] must share batch and channels (N, C) with levels[0] "
                    f"{tuple(levels[0].shape[:2])}, got {tuple(level.shape)}"
                )


# --------------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, Triton kernel, fake, autograd.


def _resize_sum_op_reference(levels, height, width):
    return resize_sum_reference(levels, (height, width)).contiguous(memory_format=_library.output_memory_format(levels[0]))


def _resize_sum_backward_op_reference(grad, heights, widths):
    return [
        torch.ops.aten.upsample_bilinear2d_backward(grad, list(grad.shape[-2:]), [*grad.shape[:2], h, w], False)
        .contiguous(memory_format=_library.output_memory_format(grad))
        for h, w in zip(heights, widths)
    ]


def _resize_sum_triton(levels, height, width):
    if not kernels.takes(levels[0]):
        return _resize_sum_op_reference(levels, height, width)
    kernels.check_launchable(levels[0], "resize_sum")
    from ..kernels import resize_sum as launcher

    out = launcher.resize_sum([level.contiguous() for level in levels], height, width)
    return out.contiguous(memory_format=_library.output_memory_format(levels[0]))


def _resize_sum_backward_triton(grad, heights, widths):
    if not kernels.takes(grad):
        return _resize_sum_backward_op_reference(grad, heights, widths)
    kernels.check_launchable(grad, "resize_sum_backward")
    from ..kernels import resize_sum as launcher

    grads = launcher.resize_sum_backward(grad.contiguous(), list(zip(heights, widths)))
    return [g.contiguous(memory_format=_library.output_memory_format(grad)) for g in grads]


_library.define("resize_sum(Tensor[] levels, SymInt height, SymInt width) -> Tensor", _resize_sum_op_reference)
_library.define("resize_sum_backward(Tensor grad, SymInt[] heights, SymInt[] widths) -> Tensor[]",
                _resize_sum_backward_op_reference)


@torch.library.register_fake("sfpn::resize_sum")
def _(levels, height, width):
    return _library.empty_like_layout(levels[0], (levels[0].shape[0], levels[0].shape[1], height, width))


@torch.library.register_fake("sfpn::resize_sum_backward")
def _(grad, heights, widths):
    return [_library.empty_like_layout(grad, (grad.shape[0], grad.shape[1], h, w)) for h, w in zip(heights, widths)]


def _setup_context(ctx, inputs, output):
    levels = inputs[0]
    ctx.heights = [level.shape[-2] for level in levels]
    ctx.widths = [level.shape[-1] for level in levels]


def _backward(ctx, grad):
    return torch.ops.sfpn.resize_sum_backward(grad, ctx.heights, ctx.widths), None, None


torch.library.register_autograd("sfpn::resize_sum", _backward, setup_context=_setup_context)
_library.register(_library.Op(
    "resize_sum", _library.TRITON, backward=("resize_sum_backward",),
    triton={"resize_sum": _resize_sum_triton, "resize_sum_backward": _resize_sum_backward_triton},
    compiled_on_cpu=True,
))
