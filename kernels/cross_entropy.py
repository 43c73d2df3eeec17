"""Softmax cross-entropy over NCHW pixel logits, loss and gradient in one kernel.

Each program owns ``BLOCK_P`` pixels of one image and walks the classes, which sit ``H * W``
elements apart in NCHW (so every class row of the tile is a coalesced load). When all ``K``
classes fit one tile (``K <= max_block_k``, 256 by default: COCO's 81, 134 and 183 do) the logits
are read once and the gradient ``(softmax - target) * scale`` is written from registers: one pass,
no temporary the size of the logits besides the gradient. Wider heads take two passes over class
chunks (an online log-sum-exp, then the gradient).

The upsampling variant takes logits on a coarse grid ``(N, K, h, w)`` and labels at full size
``(N, H, W)``: it samples the logits bilinearly (``align_corners=False``) inside the kernel and
scatters the gradient to the coarse grid with atomic adds (float32), so no full-size logits exist.

Optional class weights multiply each pixel's loss and gradient by its label's weight. The mean's
divisor (the labelled pixels' count, or their summed weight) is computed on the device
beforehand, which lets the kernel write the final gradient; the backward only multiplies it by the incoming scalar.
Labels outside ``[0, K)`` other than ``ignore_index`` make the loss NaN (checking them on the host
would cost a device sync every step).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _bilinear, launch_device

MAX_BLOCK_K = 256
_TILE_ELEMENTS = 4096  # BLOCK_K * BLOCK_P: a tile that keeps a GPU's registers busy, not spilling


@triton.jit
def _logits_tile(logits_ptr, image, classes, class_mask, pixel_mask, y0, y1, x0, x1, w00, w01, w10, w11,
                 num_classes, in_hw, UPSAMPLE: tl.constexpr):
    """The ``(BLOCK_K, BLOCK_P)`` float32 logits of ``classes`` at the tile's pixels; -inf past K."""
    base = logits_ptr + (image * num_classes + classes[:, None]) * in_hw
    mask = class_mask[:, None] & pixel_mask[None, :]
    if UPSAMPLE:
        x = w00[None, :] * tl.load(base + y0[None, :] + x0[None, :], mask=mask, other=0.0).to(tl.float32)
        x += w01[None, :] * tl.load(base + y0[None, :] + x1[None, :], mask=mask, other=0.0).to(tl.float32)
        x += w10[None, :] * tl.load(base + y1[None, :] + x0[None, :], mask=mask, other=0.0).to(tl.float32)
        x += w11[None, :] * tl.load(base + y1[None, :] + x1[None, :], mask=mask, other=0.0).to(tl.float32)
    else:  # y0 holds the flat pixel index
        x = tl.load(base + y0[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.where(class_mask[:, None], x, float("-inf"))


@triton.jit
def _write_grad(grad_ptr, x, lse, classes, class_mask, labels, pixel_mask, valid, scale, smoothing, num_classes,
                image, y0, y1, x0, x1, w00, w01, w10, w11, in_hw, UPSAMPLE: tl.constexpr):
    """Store (or, upsampling, scatter) ``(softmax - smoothed one-hot) * scale`` for one class
    tile; ``scale`` holds one factor per pixel."""
    target = tl.where(classes[:, None] == labels[None, :], 1.0 - smoothing, 0.0) + smoothing / num_classes
    grad = tl.exp(x - lse[None, :]) - target
    grad = tl.where(valid[None, :], grad * scale[None, :], 0.0)
    base = grad_ptr + (image * num_classes + classes[:, None]) * in_hw
    if UPSAMPLE:
        mask = class_mask[:, None] & valid[None, :]
        tl.atomic_add(base + y0[None, :] + x0[None, :], w00[None, :] * grad, mask=mask, sem="relaxed")
        tl.atomic_add(base + y0[None, :] + x1[None, :], w01[None, :] * grad, mask=mask, sem="relaxed")
        tl.atomic_add(base + y1[None, :] + x0[None, :], w10[None, :] * grad, mask=mask, sem="relaxed")
        tl.atomic_add(base + y1[None, :] + x1[None, :], w11[None, :] * grad, mask=mask, sem="relaxed")
    else:  # ignored pixels get an explicit zero
        mask = class_mask[:, None] & pixel_mask[None, :]
        tl.store(base + y0[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cross_entropy_kernel(
    logits_ptr, labels_ptr, weight_ptr, grad_ptr, partial_ptr, scale_ptr,
    num_classes, in_height, in_width, out_height, out_width, scale_y, scale_x,
    ignore_index, smoothing,
    UPSAMPLE: tl.constexpr, COMPUTE_GRAD: tl.constexpr, SINGLE_TILE: tl.constexpr, WEIGHTED: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Grid (pixel blocks, N). Writes this program's (weighted) loss sum to ``partial_ptr`` and,
    with COMPUTE_GRAD, the gradient of ``sum(loss) * scale`` w.r.t. the logits to ``grad_ptr``."""
    image = tl.program_id(1).to(tl.int64)
    out_hw = out_height * out_width
    in_hw = in_height * in_width
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < out_hw
    labels = tl.load(labels_ptr + image * out_hw + pixels, mask=pixel_mask, other=ignore_index).to(tl.int32)
    valid = pixel_mask & (labels != ignore_index)
    if UPSAMPLE:
        ys, ys1, ly = _bilinear.source_index(pixels // out_width, in_height, scale_y)
        xs, xs1, lx = _bilinear.source_index(pixels % out_width, in_width, scale_x)
        y0 = ys * in_width
        y1 = ys1 * in_width
        x0 = xs
        x1 = xs1
        w00 = (1.0 - ly) * (1.0 - lx)
        w01 = (1.0 - ly) * lx
        w10 = ly * (1.0 - lx)
        w11 = ly * lx
    else:
        y0 = pixels
        y1 = pixels
        x0 = pixels
        x1 = pixels
        w00 = tl.zeros([BLOCK_P], dtype=tl.float32)
        w01 = w00
        w10 = w00
        w11 = w00
    classes = tl.arange(0, BLOCK_K)
    if SINGLE_TILE:
        class_mask = classes < num_classes
        x = _logits_tile(logits_ptr, image, classes, class_mask, pixel_mask, y0, y1, x0, x1, w00, w01, w10, w11,
                         num_classes, in_hw, UPSAMPLE)
        row_max = tl.max(x, axis=0)
        lse = row_max + tl.log(tl.sum(tl.exp(x - row_max[None, :]), axis=0))
        target_logit = tl.sum(tl.where(classes[:, None] == labels[None, :], x, 0.0), axis=0)
        logit_sum = tl.sum(tl.where(class_mask[:, None], x, 0.0), axis=0)
    else:  # online log-sum-exp over class chunks
        row_max = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
        exp_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
        target_logit = tl.zeros([BLOCK_P], dtype=tl.float32)
        logit_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
        for start in range(0, num_classes, BLOCK_K):
            chunk = start + classes
            chunk_mask = chunk < num_classes
            x = _logits_tile(logits_ptr, image, chunk, chunk_mask, pixel_mask, y0, y1, x0, x1, w00, w01, w10, w11,
                             num_classes, in_hw, UPSAMPLE)
            new_max = tl.maximum(row_max, tl.max(x, axis=0))
            exp_sum = exp_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max[None, :]), axis=0)
            row_max = new_max
            target_logit += tl.sum(tl.where(chunk[:, None] == labels[None, :], x, 0.0), axis=0)
            logit_sum += tl.sum(tl.where(chunk_mask[:, None], x, 0.0), axis=0)
        lse = row_max + tl.log(exp_sum)
    in_range = (labels >= 0) & (labels < num_classes)
    loss = lse - (1.0 - smoothing) * target_logit - smoothing * logit_sum / num_classes
    loss = tl.where(in_range, loss, float("nan"))
    if WEIGHTED:  # the label's weight; an out-of-range label keeps its NaN
        pixel_weight = tl.load(weight_ptr + labels, mask=valid & in_range, other=1.0)
    else:
        pixel_weight = tl.full([BLOCK_P], 1.0, dtype=tl.float32)
    loss *= pixel_weight
    tl.store(partial_ptr + image * tl.num_programs(0) + tl.program_id(0), tl.sum(tl.where(valid, loss, 0.0), axis=0))
    if COMPUTE_GRAD:
        scale = tl.load(scale_ptr) * pixel_weight
        if SINGLE_TILE:
            _write_grad(grad_ptr, x, lse, classes, class_mask, labels, pixel_mask, valid, scale, smoothing,
                        num_classes, image, y0, y1, x0, x1, w00, w01, w10, w11, in_hw, UPSAMPLE)
        else:
            for start in range(0, num_classes, BLOCK_K):
                chunk = start + classes
                chunk_mask = chunk < num_classes
                x = _logits_tile(logits_ptr, image, chunk, chunk_mask, pixel_mask, y0, y1, x0, x1, w00, w01, w10,
                                 w11, num_classes, in_hw, UPSAMPLE)
                _write_grad(grad_ptr, x, lse, chunk, chunk_mask, labels, pixel_mask, valid, scale, smoothing,
                            num_classes, image, y0, y1, x0, x1, w00, w01, w10, w11, in_hw, UPSAMPLE)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    compute_grad: bool,
    max_block_k: int = MAX_BLOCK_K,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean or summed cross-entropy of ``logits`` against ``labels`` and its gradient.

    logits: contiguous ``(N, K, h, w)``; labels: contiguous integer ``(N, H, W)``. When ``(H, W)``
    differs from ``(h, w)`` the logits are bilinearly resized to it (align_corners=False) inside
    the kernel. ``max_block_k`` caps the class tile (tests lower it to exercise the chunked path).
    ``weight``: None or contiguous float32 ``(K,)`` class weights (F.cross_entropy's, without
    label smoothing).
    Returns ``(loss, grad)``: a float32 scalar and the gradient of ``loss`` w.r.t. ``logits``
    (``(N, K, h, w)`` in logits' dtype), or an empty tensor without ``compute_grad``.
    """
    batch, num_classes, in_height, in_width = logits.shape
    out_height, out_width = labels.shape[-2:]
    upsample = (out_height, out_width) != (in_height, in_width)
    block_k = min(triton.next_power_of_2(num_classes), max_block_k)
    block_p = max(16, min(128, _TILE_ELEMENTS // block_k))
    grid = (triton.cdiv(out_height * out_width, block_p), batch)
    if reduction == "mean":  # mean over labelled pixels; 0 of them gives NaN, as F.cross_entropy
        labelled = labels != ignore_index
        if weight is None:
            total = labelled.sum(dtype=torch.float32)
        else:  # summed weight of the labelled pixels, without a host sync (a label past K is NaN's business)
            classes = torch.where(labelled, labels.long(), 0).clamp_(max=num_classes - 1)
            total = torch.where(labelled, weight.take(classes), 0.0).sum()
        scale = 1.0 / total.reshape(1)
    else:
        scale = torch.ones(1, dtype=torch.float32, device=logits.device)
    partial = logits.new_empty((batch, grid[0]), dtype=torch.float32)
    if not compute_grad:
        grad = logits.new_empty((0,))
    elif upsample:
        grad = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    else:
        grad = torch.empty_like(logits)
    with launch_device(logits):
        _cross_entropy_kernel[grid](
            logits, labels, logits if weight is None else weight, grad if compute_grad else logits, partial, scale,
            num_classes, in_height, in_width, out_height, out_width,
            _bilinear.scale(in_height, out_height), _bilinear.scale(in_width, out_width),
            ignore_index, float(label_smoothing),
            UPSAMPLE=upsample, COMPUTE_GRAD=compute_grad, SINGLE_TILE=num_classes <= block_k, WEIGHTED=weight is not None,
            BLOCK_K=block_k, BLOCK_P=block_p, num_warps=8 if block_k * block_p >= 4096 else 4,
        )
    loss = partial.sum() * scale[0]
    if compute_grad and upsample and logits.dtype != torch.float32:
        grad = grad.to(logits.dtype)
    return loss, grad
