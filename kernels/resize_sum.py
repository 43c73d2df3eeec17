"""Multi-level resize-sum: ``sum_i interpolate(levels[i], size, bilinear)`` in one launch.

Forward: each program owns a block of output elements and gathers the four
bilinear taps of every level, so the output is written once and no resized level exists.
Backward: the adjoint scatters each output gradient to the four taps of every level with atomic
adds into float32 buffers (like ATen's CUDA ``upsample_bilinear2d_backward``, so it is not bitwise
deterministic on CUDA).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _bilinear, launch_device

MAX_LEVELS = 5
_MAX_BLOCK = 256


@triton.jit
def _level_taps(dst_y, dst_x, height, width, scale_y, scale_x):
    """Flat offsets of the four taps within a level plane and their weights."""
    y0, y1, ly = _bilinear.source_index(dst_y, height, scale_y)
    x0, x1, lx = _bilinear.source_index(dst_x, width, scale_x)
    return (
        y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1,
        (1.0 - ly) * (1.0 - lx), (1.0 - ly) * lx, ly * (1.0 - lx), ly * lx,
    )


@triton.jit
def _gather_level(acc, ptr, plane, dst_y, dst_x, mask, height, width, scale_y, scale_x):
    o00, o01, o10, o11, w00, w01, w10, w11 = _level_taps(dst_y, dst_x, height, width, scale_y, scale_x)
    base = ptr + plane * height * width
    acc += w00 * tl.load(base + o00, mask=mask, other=0.0).to(tl.float32)
    acc += w01 * tl.load(base + o01, mask=mask, other=0.0).to(tl.float32)
    acc += w10 * tl.load(base + o10, mask=mask, other=0.0).to(tl.float32)
    acc += w11 * tl.load(base + o11, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _scatter_level(grad, ptr, plane, dst_y, dst_x, mask, height, width, scale_y, scale_x):
    o00, o01, o10, o11, w00, w01, w10, w11 = _level_taps(dst_y, dst_x, height, width, scale_y, scale_x)
    base = ptr + plane * height * width
    tl.atomic_add(base + o00, w00 * grad, mask=mask, sem="relaxed")
    tl.atomic_add(base + o01, w01 * grad, mask=mask, sem="relaxed")
    tl.atomic_add(base + o10, w10 * grad, mask=mask, sem="relaxed")
    tl.atomic_add(base + o11, w11 * grad, mask=mask, sem="relaxed")


@triton.jit
def _resize_sum_kernel(
    out_ptr, total, out_height, out_width,
    p0, h0, w0, sy0, sx0, p1, h1, w1, sy1, sx1, p2, h2, w2, sy2, sx2,
    p3, h3, w3, sy3, sx3, p4, h4, w4, sy4, sx4,
    NUM_LEVELS: tl.constexpr, BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid: blocks of the flattened ``(N * C * H * W)`` output (a block may span planes, so small
    maps need few programs). Forward: out = sum of gathered levels. Backward: ``out_ptr`` is the
    incoming gradient and ``p*`` are float32 gradient buffers to scatter into."""
    out_offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    plane_size = out_height * out_width
    mask = out_offsets < total
    plane = out_offsets // plane_size
    pixel = (out_offsets % plane_size).to(tl.int32)
    dst_y = pixel // out_width
    dst_x = pixel % out_width
    if BACKWARD:
        grad = tl.load(out_ptr + out_offsets, mask=mask, other=0.0).to(tl.float32)
        _scatter_level(grad, p0, plane, dst_y, dst_x, mask, h0, w0, sy0, sx0)
        if NUM_LEVELS > 1:
            _scatter_level(grad, p1, plane, dst_y, dst_x, mask, h1, w1, sy1, sx1)
        if NUM_LEVELS > 2:
            _scatter_level(grad, p2, plane, dst_y, dst_x, mask, h2, w2, sy2, sx2)
        if NUM_LEVELS > 3:
            _scatter_level(grad, p3, plane, dst_y, dst_x, mask, h3, w3, sy3, sx3)
        if NUM_LEVELS > 4:
            _scatter_level(grad, p4, plane, dst_y, dst_x, mask, h4, w4, sy4, sx4)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        acc = _gather_level(acc, p0, plane, dst_y, dst_x, mask, h0, w0, sy0, sx0)
        if NUM_LEVELS > 1:
            acc = _gather_level(acc, p1, plane, dst_y, dst_x, mask, h1, w1, sy1, sx1)
        if NUM_LEVELS > 2:
            acc = _gather_level(acc, p2, plane, dst_y, dst_x, mask, h2, w2, sy2, sx2)
        if NUM_LEVELS > 3:
            acc = _gather_level(acc, p3, plane, dst_y, dst_x, mask, h3, w3, sy3, sx3)
        if NUM_LEVELS > 4:
            acc = _gather_level(acc, p4, plane, dst_y, dst_x, mask, h4, w4, sy4, sx4)
        tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(out: torch.Tensor, levels: list[torch.Tensor], backward: bool) -> None:
    out_height, out_width = out.shape[-2:]
    args = []
    for level in levels:
        height, width = level.shape[-2:]
        args += [level, height, width, _bilinear.scale(height, out_height), _bilinear.scale(width, out_width)]
    args += args[-5:] * (MAX_LEVELS - len(levels))  # unused slots: never read (NUM_LEVELS prunes them)
    total = out.numel()
    block = min(_MAX_BLOCK, triton.next_power_of_2(total))
    grid = (triton.cdiv(total, block),)
    with launch_device(out):
        _resize_sum_kernel[grid](
            out, total, out_height, out_width, *args, NUM_LEVELS=len(levels), BACKWARD=backward, BLOCK=block
        )


def resize_sum(levels: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """``sum_i interpolate(levels[i], (height, width), bilinear)``.

    levels: 1 to 5 contiguous ``(N, C, H_i, W_i)`` tensors of one dtype and device.
    Returns ``(N, C, height, width)`` in the levels' dtype (accumulated in float32).
    """
    batch, channels = levels[0].shape[:2]
    out = torch.empty((batch, channels, height, width), dtype=levels[0].dtype, device=levels[0].device)
    _launch(out, levels, backward=False)
    return out


def resize_sum_backward(grad: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Gradients of :func:`resize_sum` w.r.t. each level, ``(N, C, H_i, W_i)`` in ``grad``'s dtype.

    grad: contiguous ``(N, C, height, width)``; sizes: each level's ``(H_i, W_i)``.
    """
    batch, channels = grad.shape[:2]
    buffers = [grad.new_zeros((batch, channels, h, w), dtype=torch.float32) for h, w in sizes]
    _launch(grad, buffers, backward=True)
    return [b.to(grad.dtype) for b in buffers]
