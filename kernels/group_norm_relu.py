"""Fused GroupNorm + affine + ReLU over ``(N, C, H, W)``, forward and backward.

Every kernel runs on a grid of (pixel blocks, N * C planes), so a large group is spread over many
programs instead of one program per group (64 groups at the head's shape would leave most of a
GPU idle). Per-block partial statistics (exact block mean and centred sum of squares, combined with
Chan's formula in float32, which avoids the cancellation of sum/sum-of-squares) are reduced in a
few tiny tensor ops. The backward recomputes the normalised input and the ReLU mask from ``x`` and
the saved mean and reciprocal std, so it reads nothing of the activation's size besides ``x`` and
the gradient. (The op's autograd saves the output too, for the CPU reference's mask; in SFPN that
output is the next convolution's input, saved there anyway.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch_device

_MAX_BLOCK = 1024


def _block(hw: int) -> int:
    """Pixels per program: up to 1024, fewer for small maps (no wasted lanes)."""
    return min(_MAX_BLOCK, triton.next_power_of_2(hw))


@triton.jit
def _moments_kernel(x_ptr, mean_ptr, m2_ptr, hw, BLOCK: tl.constexpr):
    """Per (plane, block): the block's mean and centred sum of squares."""
    plane = tl.program_id(1).to(tl.int64)
    block = tl.program_id(0)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < hw
    x = tl.load(x_ptr + plane * hw + offsets, mask=mask, other=0.0).to(tl.float32)
    count = tl.minimum(hw - block * BLOCK, BLOCK).to(tl.float32)
    mean = tl.sum(x, axis=0) / count
    centred = tl.where(mask, x - mean, 0.0)
    out = plane * tl.num_programs(0) + block
    tl.store(mean_ptr + out, mean)
    tl.store(m2_ptr + out, tl.sum(centred * centred, axis=0))


@triton.jit
def _normalize(x_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, plane, offsets, mask, channels, hw,
               groups, CHANNELS_PER_GROUP: tl.constexpr):
    """x's normalised values, the affine output before the ReLU, and the channel's weight."""
    batch = plane // channels
    channel = plane % channels
    stat = batch * groups + channel // CHANNELS_PER_GROUP
    mean = tl.load(mean_ptr + stat)
    rstd = tl.load(rstd_ptr + stat)
    weight = tl.load(weight_ptr + channel).to(tl.float32)
    bias = tl.load(bias_ptr + channel).to(tl.float32)
    x = tl.load(x_ptr + plane * hw + offsets, mask=mask, other=0.0).to(tl.float32)
    x_hat = (x - mean) * rstd
    return x_hat, x_hat * weight + bias, weight, rstd, stat


@triton.jit
def _forward_kernel(x_ptr, out_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, channels, hw, groups,
                    CHANNELS_PER_GROUP: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(1).to(tl.int64)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < hw
    _, z, _, _, _ = _normalize(x_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, plane, offsets, mask,
                               channels, hw, groups, CHANNELS_PER_GROUP)
    tl.store(out_ptr + plane * hw + offsets, tl.maximum(z, 0.0).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_sums_kernel(grad_ptr, x_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, sum_dz_ptr,
                          sum_dz_xhat_ptr, channels, hw, groups,
                          CHANNELS_PER_GROUP: tl.constexpr, BLOCK: tl.constexpr):
    """Per (plane, block): sum of dz and of dz * x_hat, dz being the gradient through the ReLU."""
    plane = tl.program_id(1).to(tl.int64)
    block = tl.program_id(0)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < hw
    x_hat, z, _, _, _ = _normalize(x_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, plane, offsets, mask,
                                   channels, hw, groups, CHANNELS_PER_GROUP)
    grad = tl.load(grad_ptr + plane * hw + offsets, mask=mask, other=0.0).to(tl.float32)
    dz = tl.where(mask & (z > 0.0), grad, 0.0)
    out = plane * tl.num_programs(0) + block
    tl.store(sum_dz_ptr + out, tl.sum(dz, axis=0))
    tl.store(sum_dz_xhat_ptr + out, tl.sum(dz * x_hat, axis=0))


@triton.jit
def _backward_input_kernel(grad_ptr, x_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, mean_dxhat_ptr,
                           mean_dxhat_xhat_ptr, grad_x_ptr, channels, hw, groups,
                           CHANNELS_PER_GROUP: tl.constexpr, BLOCK: tl.constexpr):
    """dx = rstd * (dz * w - mean_g(dz * w) - x_hat * mean_g(dz * w * x_hat))."""
    plane = tl.program_id(1).to(tl.int64)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < hw
    x_hat, z, weight, rstd, stat = _normalize(x_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, plane, offsets,
                                              mask, channels, hw, groups, CHANNELS_PER_GROUP)
    grad = tl.load(grad_ptr + plane * hw + offsets, mask=mask, other=0.0).to(tl.float32)
    dx_hat = tl.where(z > 0.0, grad, 0.0) * weight
    grad_x = rstd * (dx_hat - tl.load(mean_dxhat_ptr + stat) - x_hat * tl.load(mean_dxhat_xhat_ptr + stat))
    tl.store(grad_x_ptr + plane * hw + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _grid(x: torch.Tensor, block: int):
    batch, channels, height, width = x.shape
    return (triton.cdiv(height * width, block), batch * channels)


def group_norm_relu(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """``relu(group_norm(x, num_groups, weight, bias, eps))`` and the group statistics.

    x: contiguous ``(N, C, H, W)`` with ``C % num_groups == 0`` and ``H * W > 0``; weight, bias: ``(C,)``.
    Returns ``(out (N, C, H, W) in x's dtype, mean (N, G) float32, rstd (N, G) float32)``.
    """
    batch, channels, height, width = x.shape
    hw = height * width
    block = _block(hw)
    grid = _grid(x, block)
    block_mean = x.new_empty((batch * channels, grid[0]), dtype=torch.float32)
    block_m2 = torch.empty_like(block_mean)
    with launch_device(x):
        _moments_kernel[grid](x, block_mean, block_m2, hw, BLOCK=block)
    # Chan's parallel combination of the blocks of every group.
    counts = (hw - torch.arange(grid[0], device=x.device) * block).clamp(max=block).float()
    block_mean = block_mean.view(batch, num_groups, -1)
    block_m2 = block_m2.view(batch, num_groups, -1)
    counts = counts.repeat(channels // num_groups)
    group_size = float(hw * (channels // num_groups))
    mean = (block_mean * counts).sum(-1) / group_size
    m2 = block_m2.sum(-1) + (counts * (block_mean - mean.unsqueeze(-1)).square()).sum(-1)
    rstd = torch.rsqrt(m2 / group_size + eps)
    out = torch.empty_like(x)
    with launch_device(x):
        _forward_kernel[grid](x, out, mean, rstd, weight, bias, channels, hw, num_groups,
                              CHANNELS_PER_GROUP=channels // num_groups, BLOCK=block)
    return out, mean, rstd


def group_norm_relu_backward(grad, x, mean, rstd, weight, bias):
    """Gradients of :func:`group_norm_relu`'s output w.r.t. ``x``, ``weight`` and ``bias``.

    grad, x: contiguous ``(N, C, H, W)``; mean, rstd: ``(N, G)`` float32 from the forward.
    Returns ``(grad_x in x's dtype, grad_weight, grad_bias in weight's and bias's dtypes)``.
    """
    batch, channels, height, width = x.shape
    num_groups = mean.shape[1]
    per_group = channels // num_groups
    hw = height * width
    block = _block(hw)
    grid = _grid(x, block)
    sum_dz = x.new_empty((batch * channels, grid[0]), dtype=torch.float32)
    sum_dz_xhat = torch.empty_like(sum_dz)
    with launch_device(x):
        _backward_sums_kernel[grid](grad, x, mean, rstd, weight, bias, sum_dz, sum_dz_xhat, channels, hw,
                                    num_groups, CHANNELS_PER_GROUP=per_group, BLOCK=block)
    sum_dz = sum_dz.sum(-1).view(batch, channels)
    sum_dz_xhat = sum_dz_xhat.sum(-1).view(batch, channels)
    weight32 = weight.float()
    group_size = float(hw * per_group)
    mean_dxhat = (sum_dz * weight32).view(batch, num_groups, per_group).sum(-1) / group_size
    mean_dxhat_xhat = (sum_dz_xhat * weight32).view(batch, num_groups, per_group).sum(-1) / group_size
    grad_x = torch.empty_like(x)
    with launch_device(x):
        _backward_input_kernel[grid](grad, x, mean, rstd, weight, bias, mean_dxhat, mean_dxhat_xhat, grad_x,
                                     channels, hw, num_groups, CHANNELS_PER_GROUP=per_group, BLOCK=block)
    return grad_x, sum_dz_xhat.sum(0).to(weight.dtype), sum_dz.sum(0).to(bias.dtype)
