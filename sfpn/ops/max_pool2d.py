"""``max_pool2d``: max pooling without the indices, for the ResNet stem at inference.

Schema, reference fallback, fake and autograd below (:mod:`sfpn.ops._library`); kernel:
``csrc/cpu/max_pool2d.cpp``. ATen's CPU max pooling writes int64 indices beside every output
value whether or not a gradient will need them; the kernel writes the maxima alone, reading a
channels_last map as it is (an NCHW map takes ATen's kernel). The backward, which the indices
serve, recomputes them with ATen's kernel: where a gradient is needed, ATen's ``F.max_pool2d``
saves them once instead, so :func:`sfpn.modeling.backbone.ResNet` calls this op only where nothing
needs a gradient.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _library
from ._validate import OpValueError, check_tensor


def max_pool2d_reference(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Pure-PyTorch :func:`max_pool2d`: ``F.max_pool2d``."""
    return F.max_pool2d(x, kernel_size, stride, padding)


def max_pool2d(x: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
               padding: int | Sequence[int] = 0) -> torch.Tensor:
    """The maximum of each ``kernel_size`` window, windows ``stride`` apart (``kernel_size`` by
    default) over ``x`` padded with ``-inf`` by ``padding``, as ``F.max_pool2d`` (no dilation,
    floor mode): ``(N, C, H, W)`` -> ``(N, C, (H + 2 p - k) // s + 1, (W + 2 p - k) // s + 1)``, in
    x's dtype and layout. A NaN in a window is its maximum. Differentiable w.r.t. ``x``.

    Args:
        x: ``(N, C, H, W)``.
        kernel_size, stride, padding: an int or ``(h, w)``; padding at most half the kernel.
    """
    kernel = _pair("kernel_size", kernel_size)
    steps = kernel if stride is None else _pair("stride", stride)
    pads = _pair("padding", padding, minimum=0)
    check_tensor("x", x, ndim=4)
    if any(2 * p > k for p, k in zip(pads, kernel)):
        raise OpValueError(f"padding must be at most half of kernel_size {kernel}, got {pads}")
    if any(size + 2 * p < k for size, p, k in zip(x.shape[2:], pads, kernel)):
        raise OpValueError(f"x's H, W {tuple(x.shape[2:])} are too small for kernel_size {kernel} and padding {pads}")
    return torch.ops.sfpn.max_pool2d(x, kernel, steps, pads)


def _pair(name: str, value, minimum: int = 1) -> list[int]:
    values = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(values, (list, tuple)) or len(values) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)):
        raise OpValueError(f"{name} must be an int >= {minimum} or two of them (h, w), got {value!r}")
    return list(values)


# --------------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake, autograd.


def _max_pool2d_op_reference(x, kernel_size, stride, padding):
    return F.max_pool2d(x, kernel_size, stride, padding)


_library.define("max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor",
                _max_pool2d_op_reference)


@torch.library.register_fake("sfpn::max_pool2d")
def _(x, kernel_size, stride, padding):
    size = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(x.shape[2:], kernel_size, stride, padding)]
    # The layout F.max_pool2d (the reference) gives on any device, and the CPU kernel too.
    layout = torch.channels_last if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) else (
        torch.contiguous_format)
    return x.new_empty((*x.shape[:2], *size)).contiguous(memory_format=layout)


def _setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding = inputs
    ctx.save_for_backward(x)
    ctx.window = (kernel_size, stride, padding)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    kernel_size, stride, padding = ctx.window
    # ATen's gradient, from the indices its forward recomputes: the op serves calls that need none.
    _, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding)
    grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, kernel_size, stride, padding, [1, 1], False,
                                                             indices)
    return grad_x, None, None, None


torch.library.register_autograd("sfpn::max_pool2d", _backward, setup_context=_setup_context)
_library.register(_library.Op("max_pool2d", _library.COMPILED_CPU))
