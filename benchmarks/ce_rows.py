"""A candidate for the CUDA upsampling cross entropy's gradient, timed against the kernel it would
replace: one GPU call checks it against float64 and times it beside eager and torch.compile.

    python benchmarks/ce_rows.py [--classes 81] [--check-only]

Why (benchmarks/RESULTS.md, 2026-12-04, H200): ``kernels/cross_entropy.py`` takes 16 ms of a 72 ms
SFPN training step at the COCO shape, 1.5x eager interpolate + cross entropy. It scatters each
label pixel's gradient to the 4 coarse logits it was sampled from with float atomics: 4 * K per
label pixel (697M at K=81), ~16 per address at 4x upsampling.

The candidate works a label row at a time, as the CPU kernel does since ``ba65d67``: a program
takes ``x_step`` label pixels of one row, computes their logits, loss and gradient ``g``
``(K, x_step)``, applies the horizontal taps' adjoint as one small matrix product
``g @ M`` (``M`` ``(x_step, J)``: each label column's two weights on the ``J`` coarse columns the
chunk reaches), and adds the ``(K, J)`` result to the two coarse rows of the vertical taps: 2 * K
atomics per ~x_step / 4 label pixels, ~7x fewer at 4x, each warp's on adjacent addresses.
Prediction: the atomics bound today's kernel, so this one should land near eager's forward
(~2-3 ms), not 16. Class weights and label smoothing are left out of the candidate (the default
run's loss uses neither at this shape); ``--check-only`` compares it with float64 on small inputs,
and runs on the CPU under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import argparse
import math

import torch
import triton
import triton.language as tl

from sfpn.kernels import _bilinear
from sfpn.ops import reference


@triton.jit
def _rows_kernel(
    logits_ptr, labels_ptr, grad_ptr, partial_ptr, scale_ptr,
    num_classes, in_height, in_width, out_height, out_width, scale_y, scale_x, ignore_index, x_step,
    BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Grid (label-column chunks, N * H). Writes this program's loss sum to ``partial_ptr`` and adds
    the gradient of ``sum(loss) * scale`` to the float32 ``grad_ptr`` (zeroed beforehand)."""
    row = tl.program_id(1)
    image = (row // out_height).to(tl.int64)
    y = row % out_height
    x_start = tl.program_id(0) * x_step
    offsets = tl.arange(0, BLOCK_X)
    xs = x_start + offsets
    x_mask = (offsets < x_step) & (xs < out_width)
    labels = tl.load(labels_ptr + (image * out_height + y) * out_width + xs, mask=x_mask, other=ignore_index).to(tl.int32)
    valid = x_mask & (labels != ignore_index)

    # The taps: the row's two source rows (scalars), each column's two source columns.
    y0, y1, ly = _bilinear.source_index(y, in_height, scale_y)
    x0, x1, lx = _bilinear.source_index(xs, in_width, scale_x)
    first_column, _, _ = _bilinear.source_index(x_start, in_width, scale_x)

    # 1. Logits at the chunk's pixels, (BLOCK_K, BLOCK_X), -inf past K.
    classes = tl.arange(0, BLOCK_K)
    class_mask = classes < num_classes
    in_hw = in_height * in_width
    plane = logits_ptr + (image * num_classes + classes[:, None]) * in_hw
    mask = class_mask[:, None] & x_mask[None, :]
    upper = (1.0 - lx)[None, :] * tl.load(plane + y0 * in_width + x0[None, :], mask=mask, other=0.0).to(tl.float32)
    upper += lx[None, :] * tl.load(plane + y0 * in_width + x1[None, :], mask=mask, other=0.0).to(tl.float32)
    lower = (1.0 - lx)[None, :] * tl.load(plane + y1 * in_width + x0[None, :], mask=mask, other=0.0).to(tl.float32)
    lower += lx[None, :] * tl.load(plane + y1 * in_width + x1[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.where(class_mask[:, None], (1.0 - ly) * upper + ly * lower, float("-inf"))

    # 2. Loss, and the gradient (softmax - one-hot) * scale, zero at ignored pixels.
    row_max = tl.max(x, axis=0)
    lse = row_max + tl.log(tl.sum(tl.exp(x - row_max[None, :]), axis=0))
    hit = classes[:, None] == labels[None, :]
    loss = lse - tl.sum(tl.where(hit, x, 0.0), axis=0)
    loss = tl.where((labels >= 0) & (labels < num_classes), loss, float("nan"))
    tl.store(partial_ptr + row * tl.num_programs(0) + tl.program_id(0), tl.sum(tl.where(valid, loss, 0.0), axis=0))
    grad = tl.exp(x - lse[None, :]) - tl.where(hit, 1.0, 0.0)
    grad = tl.where(valid[None, :], grad * tl.load(scale_ptr), 0.0)

    # 3. The horizontal adjoint as (BLOCK_K, BLOCK_X) @ (BLOCK_X, BLOCK_J): column x gives 1 - lx
    # to source column x0 and lx to x1 (both to x0 where x0 == x1, at the right edge).
    columns = first_column + tl.arange(0, BLOCK_J)
    taps = tl.where(x0[:, None] == columns[None, :], 1.0 - lx[:, None], 0.0)
    taps += tl.where(x1[:, None] == columns[None, :], lx[:, None], 0.0)
    taps = tl.where(x_mask[:, None], taps, 0.0)
    source_row = tl.dot(grad, taps, input_precision="ieee")

    # 4. The vertical taps: two atomic adds per class and source column.
    column_mask = class_mask[:, None] & (columns < in_width)[None, :]
    out = grad_ptr + (image * num_classes + classes[:, None]) * in_hw + columns[None, :]
    tl.atomic_add(out + y0 * in_width, (1.0 - ly) * source_row, mask=column_mask, sem="relaxed")
    tl.atomic_add(out + y1 * in_width, ly * source_row, mask=column_mask, sem="relaxed")


def chunk_geometry(in_width: int, out_width: int, block_x: int, block_j: int) -> int:
    """The label columns a program takes: as many as fit ``block_x`` while the source columns they
    reach (at most ``floor((x_step - 1) * scale) + 3``, counting both taps and the rounding of the
    first) fit ``block_j``."""
    scale = in_width / out_width
    x_step = block_x
    while x_step > 1 and math.floor((x_step - 1) * scale) + 3 > block_j:
        x_step -= 1
    return x_step


def upsample_cross_entropy_rows(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                                block_x: int = 64, block_j: int = 16, num_warps: int = 8):
    """Mean cross entropy of bilinearly upsampled ``logits`` ``(N, K, h, w)`` against ``labels``
    ``(N, H, W)``, and its gradient w.r.t. ``logits`` (float32): ``(loss, grad)``."""
    batch, num_classes, in_height, in_width = logits.shape
    if num_classes > 256:
        raise ValueError(f"the candidate keeps all classes in one tile: at most 256, got {num_classes}")
    out_height, out_width = labels.shape[-2:]
    block_k = max(16, triton.next_power_of_2(num_classes))
    x_step = chunk_geometry(in_width, out_width, block_x, block_j)
    grid = (triton.cdiv(out_width, x_step), batch * out_height)
    scale = 1.0 / (labels != ignore_index).sum(dtype=torch.float32).reshape(1)
    partial = torch.empty(grid[1], grid[0], dtype=torch.float32, device=logits.device)
    grad = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    _rows_kernel[grid](
        logits, labels, grad, partial, scale,
        num_classes, in_height, in_width, out_height, out_width,
        _bilinear.scale(in_height, out_height), _bilinear.scale(in_width, out_width), ignore_index, x_step,
        BLOCK_K=block_k, BLOCK_X=block_x, BLOCK_J=block_j, num_warps=num_warps,
    )
    return partial.sum() * scale[0], grad


def eager(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255):
    """The definition (``sfpn.ops.reference.upsample_cross_entropy``: F.interpolate, then
    F.cross_entropy), and its gradient by autograd."""
    logits = logits.detach().requires_grad_()
    loss = reference.upsample_cross_entropy(logits, labels, ignore_index)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


def random_inputs(batch, classes, in_size, out_size, device, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, *in_size, generator=generator).to(device, dtype)
    labels = torch.randint(0, classes, (batch, *out_size), generator=generator, dtype=torch.int64)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255  # some ignored pixels
    return logits, labels.to(device, torch.uint8 if classes < 255 else torch.int64)


def check(device: str) -> None:
    """The candidate against float64 eager: exact and inexact scales, no upsampling, K from 5 to
    256 (one tile), float32 and bfloat16 logits (the float64 reference reads the same bf16 values)."""
    cases = [(2, 5, (6, 7), (24, 28), torch.float32), (1, 81, (5, 9), (19, 37), torch.float32),
             (2, 20, (8, 8), (8, 8), torch.float32), (1, 256, (4, 6), (15, 23), torch.float32),
             (2, 11, (7, 9), (28, 36), torch.bfloat16)]
    for batch, classes, in_size, out_size, dtype in cases:
        logits, labels = random_inputs(batch, classes, in_size, out_size, device, dtype)
        loss, grad = upsample_cross_entropy_rows(logits, labels)
        expected_loss, expected_grad = eager(logits.double(), labels)
        torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-7)
        print(f"ok: N={batch} K={classes} {in_size} -> {out_size} {dtype}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[81, 5])
    parser.add_argument("--check-only", action="store_true")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check(device)
    if args.check_only:
        return
    from sfpn.ops import upsample_cross_entropy

    def fwd_bwd(fn):
        def run():
            leaf = logits.detach().requires_grad_()
            torch.autograd.grad(fn(leaf, labels), leaf)
        return run

    compiled = torch.compile(reference.upsample_cross_entropy)
    print("\n| K | variant | ms (CUDA events, median) |\n| --- | --- | ---: |")
    for classes in args.classes:
        logits, labels = random_inputs(2, classes, (200, 336), (800, 1344), device)  # the COCO shape, stride 4
        variants = {
            "sfpn (atomics)": fwd_bwd(upsample_cross_entropy),
            "eager": fwd_bwd(reference.upsample_cross_entropy),
            "compiled": fwd_bwd(compiled),
        }
        for block_x, block_j, warps in [(64, 16, 8), (32, 16, 4), (128, 32, 8), (64, 32, 8)]:
            variants[f"rows x{block_x} j{block_j} w{warps}"] = (
                lambda bx=block_x, bj=block_j, nw=warps: upsample_cross_entropy_rows(logits, labels, 255, bx, bj, nw))
        for name, run in variants.items():
            print(f"| {classes} | {name} | {triton.testing.do_bench(run, return_mode='median'):.3f} |", flush=True)


if __name__ == "__main__":
    main()
