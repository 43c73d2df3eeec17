"""Ops of SFPN's semantic head: multi-level resize-sum, fused GroupNorm + ReLU, and softmax
cross-entropy over pixel logits (on the logits' grid, or against full-size labels with the
bilinear upsampling fused into the loss).

Each public function validates its arguments, then runs the Triton kernel (``sfpn.kernels``)
when it serves the input's device and its pure-PyTorch reference otherwise:
  * CUDA tensors: the Triton kernel, when Triton imports.
  * CPU tensors: the reference, unless inside ``sfpn.kernels.interpret_on_cpu()`` with
    ``TRITON_INTERPRET=1`` (the kernel tests do that: the interpreter runs the real kernels).
  * float64 and empty inputs: the reference (the kernels compute in float32).

The kernels are registered as ``torch.library.custom_op``s (``torch.ops.sfpn.*``) with fake
implementations and autograd, so ``torch.compile(fullgraph=True)`` traces them and
``torch.library.opcheck`` passes. Not ``triton_op``: its fake-tensor check fails under the Triton
interpreter, where CI tests them. The C++ extension's ``TORCH_LIBRARY(sfpn)`` and these Python
fragments share the namespace; the op names do not overlap.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import kernels
from ._validate import check_choice, check_same, check_tensor

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
REDUCTIONS = ("mean", "sum")
MAX_LEVELS = 5


# --------------------------------------------------------------------------------------------------
# References: the definitions the kernels are tested against.


def resize_sum_reference(levels: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Pure-PyTorch :func:`resize_sum`."""
    size = tuple(size)
    return sum(F.interpolate(level, size=size, mode="bilinear", align_corners=False) for level in levels)


def group_norm_relu_reference(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Pure-PyTorch :func:`group_norm_relu`, computed in float32 at least (as the kernel, and as
    autocast runs GroupNorm), returned in x's dtype; the parameters may have another dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)
    out = F.group_norm(x.to(compute), num_groups, weight.to(compute), bias.to(compute), eps)
    return F.relu(out).to(x.dtype)


def semantic_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Pure-PyTorch :func:`semantic_cross_entropy` (computed in float32 at least, as the kernel)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(
        logits, labels.long(), ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )


def upsample_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Pure-PyTorch :func:`upsample_cross_entropy`: resize the logits, then the cross-entropy."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    return semantic_cross_entropy_reference(logits, labels, ignore_index, reduction, label_smoothing)


# --------------------------------------------------------------------------------------------------
# Dispatcher ops around the Triton launchers (bodies import the kernel modules lazily, so sfpn
# imports without Triton).


def _kernels_serve(tensor: torch.Tensor) -> bool:
    return tensor.dtype in KERNEL_DTYPES and tensor.numel() > 0 and kernels.serves(tensor.device)


@torch.library.custom_op("sfpn::resize_sum", mutates_args=())
def _resize_sum_op(levels: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    kernels.check_launchable(levels[0], "resize_sum")
    from ..kernels import resize_sum as launcher

    return launcher.resize_sum([level.contiguous() for level in levels], height, width)


@_resize_sum_op.register_fake
def _(levels, height, width):
    return levels[0].new_empty((levels[0].shape[0], levels[0].shape[1], height, width))


@torch.library.custom_op("sfpn::resize_sum_backward", mutates_args=())
def _resize_sum_backward_op(grad: torch.Tensor, heights: list[int], widths: list[int]) -> list[torch.Tensor]:
    kernels.check_launchable(grad, "resize_sum_backward")
    from ..kernels import resize_sum as launcher

    return launcher.resize_sum_backward(grad.contiguous(), list(zip(heights, widths)))


@_resize_sum_backward_op.register_fake
def _(grad, heights, widths):
    return [grad.new_empty((grad.shape[0], grad.shape[1], h, w)) for h, w in zip(heights, widths)]


def _resize_sum_setup_context(ctx, inputs, output):
    levels = inputs[0]
    ctx.heights = [level.shape[-2] for level in levels]
    ctx.widths = [level.shape[-1] for level in levels]


def _resize_sum_backward(ctx, grad):
    return _resize_sum_backward_op(grad, ctx.heights, ctx.widths), None, None


_resize_sum_op.register_autograd(_resize_sum_backward, setup_context=_resize_sum_setup_context)


@torch.library.custom_op("sfpn::group_norm_relu", mutates_args=())
def _group_norm_relu_op(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(out, mean, rstd)``; the statistics (N, G) float32 feed the backward only."""
    kernels.check_launchable(x, "group_norm_relu")
    from ..kernels import group_norm_relu as launcher

    return launcher.group_norm_relu(x.contiguous(), num_groups, weight.contiguous(), bias.contiguous(), eps)


@_group_norm_relu_op.register_fake
def _(x, num_groups, weight, bias, eps):
    stats = x.new_empty((x.shape[0], num_groups), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.custom_op("sfpn::group_norm_relu_backward", mutates_args=())
def _group_norm_relu_backward_op(
    grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernels.check_launchable(x, "group_norm_relu_backward")
    from ..kernels import group_norm_relu as launcher

    return launcher.group_norm_relu_backward(
        grad.contiguous(), x.contiguous(), mean, rstd, weight.contiguous(), bias.contiguous()
    )


@_group_norm_relu_backward_op.register_fake
def _(grad, x, mean, rstd, weight, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight), torch.empty_like(bias)


def _group_norm_relu_setup_context(ctx, inputs, output):
    x, _, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight, bias)


def _group_norm_relu_backward(ctx, grad, grad_mean, grad_rstd):
    # mean and rstd are auxiliary outputs: the public function does not return them.
    x, mean, rstd, weight, bias = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = _group_norm_relu_backward_op(grad, x, mean, rstd, weight, bias)
    return grad_x, None, grad_weight, grad_bias, None


_group_norm_relu_op.register_autograd(_group_norm_relu_backward, setup_context=_group_norm_relu_setup_context)


def _cross_entropy_fake(logits, labels, ignore_index, reduction, label_smoothing, compute_grad):
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else logits.new_empty((0,))
    return logits.new_empty((), dtype=torch.float32), grad


def _cross_entropy_body(op, logits, labels, ignore_index, reduction, label_smoothing, compute_grad):
    kernels.check_launchable(logits, op)
    from ..kernels import cross_entropy as launcher

    return launcher.cross_entropy(
        logits.contiguous(), labels.contiguous(), ignore_index, reduction, label_smoothing, compute_grad
    )


@torch.library.custom_op("sfpn::semantic_cross_entropy", mutates_args=())
def _semantic_cross_entropy_op(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str, label_smoothing: float,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(loss, grad)``: the float32 loss and, with ``compute_grad``, d loss / d logits
    written by the same pass (else an empty tensor)."""
    return _cross_entropy_body("semantic_cross_entropy", logits, labels, ignore_index, reduction, label_smoothing,
                               compute_grad)


@torch.library.custom_op("sfpn::upsample_cross_entropy", mutates_args=())
def _upsample_cross_entropy_op(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str, label_smoothing: float,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``sfpn::semantic_cross_entropy``, the logits resized to the labels' size in the kernel."""
    return _cross_entropy_body("upsample_cross_entropy", logits, labels, ignore_index, reduction, label_smoothing,
                               compute_grad)


def _cross_entropy_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _cross_entropy_backward(ctx, grad_loss, grad_of_grad):
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0 and grad_loss is not None:
        raise RuntimeError("the cross-entropy op ran with compute_grad=False; call it with compute_grad=True")
    # The forward wrote d loss / d logits. Eagerly, scaling it in place keeps the peak memory at
    # logits + one gradient; a second backward through the same graph (retain_graph) then fails
    # loudly on the saved tensor's version counter instead of reusing a scaled gradient. Traced
    # (torch.compile, AOTAutograd: tensors are fake/functional subclasses there), AOTAutograd cannot
    # partition a backward that mutates a forward output, so the product is out of place and
    # Inductor plans the buffers.
    if torch.compiler.is_compiling() or type(grad) is not torch.Tensor:
        return grad * grad_loss, None, None, None, None, None
    return grad.mul_(grad_loss), None, None, None, None, None


for _op in (_semantic_cross_entropy_op, _upsample_cross_entropy_op):
    _op.register_fake(_cross_entropy_fake)
    _op.register_autograd(_cross_entropy_backward, setup_context=_cross_entropy_setup_context)


# --------------------------------------------------------------------------------------------------
# Public functions.


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, torch.Size):
        size = tuple(size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be a pair of positive ints (height, width), got {size!r}")
    return size[0], size[1]  # SymInts stay symbolic under torch.compile(dynamic=True)


def resize_sum(levels: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Sum of every level bilinearly resized to ``size`` (align_corners False), in one kernel.

    Args:
        levels: 1 to 5 maps ``(N, C, H_i, W_i)`` of one dtype and device, any sizes (levels larger
            than ``size`` are down-sampled bilinearly, without anti-aliasing, as F.interpolate).
        size: the target ``(H, W)``, e.g. the stride-8 level's.

    Returns:
        ``(N, C, H, W)`` in the levels' dtype, differentiable w.r.t. every level.
    """
    if not isinstance(levels, (list, tuple)) or not 1 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"levels must be a list of 1 to {MAX_LEVELS} tensors, got {type(levels).__name__}"
                         + (f" of length {len(levels)}" if isinstance(levels, (list, tuple)) else ""))
    height, width = _check_size(size)
    for i, level in enumerate(levels):
        check_tensor(f"levels[{i}]", level, ndim=4, nonempty=True)
        if i:
            check_same(f"levels[{i}]", level, "levels[0]", levels[0])
            if level.shape[:2] != levels[0].shape[:2]:
                raise ValueError(
                    f"levels[{i}] must share batch and channels (N, C) with levels[0] "
                    f"{tuple(levels[0].shape[:2])}, got {tuple(level.shape)}"
                )
    if _kernels_serve(levels[0]):
        return _resize_sum_op(list(levels), height, width)
    return resize_sum_reference(levels, (height, width))


def group_norm_relu(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """``relu(group_norm(x, num_groups, weight, bias, eps))``: statistics, then one fused pass.

    Args:
        x: ``(N, C, H, W)``, C divisible by ``num_groups``.
        num_groups: number of groups G.
        weight, bias: the affine parameters ``(C,)``, any floating dtype (float32 under AMP).
        eps: added to the variance.

    Returns:
        ``(N, C, H, W)`` in x's dtype, differentiable w.r.t. ``x``, ``weight`` and ``bias``.
    """
    check_tensor("x", x, ndim=4)
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if x.shape[1] % num_groups:
        raise ValueError(f"x's channels ({x.shape[1]}) must be divisible by num_groups ({num_groups})")
    for name, param in (("weight", weight), ("bias", bias)):
        check_tensor(name, param, ndim=1)
        if param.shape[0] != x.shape[1]:
            raise ValueError(f"{name} must have shape ({x.shape[1]},) to match x's channels, got {tuple(param.shape)}")
        if param.device != x.device:
            raise ValueError(f"{name} must be on the same device as x ({x.device}), got {param.device}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    if _kernels_serve(x):
        return _group_norm_relu_op(x, num_groups, weight, bias, float(eps))[0]
    return group_norm_relu_reference(x, num_groups, weight, bias, eps)


def _check_cross_entropy(logits, labels, ignore_index, reduction, label_smoothing, same_size: bool) -> None:
    check_tensor("logits", logits, ndim=4)
    check_tensor("labels", labels, ndim=3, dtypes=LABEL_DTYPES)
    if labels.device != logits.device:
        raise ValueError(f"labels must be on the same device as logits ({logits.device}), got {labels.device}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have logits' batch size {logits.shape[0]}, got shape {tuple(labels.shape)}")
    if same_size and labels.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"labels must have logits' spatial size {tuple(logits.shape[2:])}, got {tuple(labels.shape[1:])} "
            "(use upsample_cross_entropy for full-size labels)"
        )
    if logits.shape[1] < 1 or logits.shape[2] * logits.shape[3] == 0:
        raise ValueError(f"logits must have at least one class and one pixel, got shape {tuple(logits.shape)}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    check_choice("reduction", reduction, REDUCTIONS)
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")


def _cross_entropy(op, reference, logits, labels, ignore_index, reduction, label_smoothing):
    if _kernels_serve(logits) and labels.numel() > 0:
        compute_grad = logits.requires_grad and torch.is_grad_enabled()
        return op(logits, labels, ignore_index, reduction, float(label_smoothing), compute_grad)[0]
    return reference(logits, labels, ignore_index, reduction, label_smoothing)


def semantic_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy, ``F.cross_entropy(logits, labels, ...)`` in one pass.

    Args:
        logits: ``(N, K, H, W)`` class scores.
        labels: ``(N, H, W)`` integer classes in ``[0, K)`` or ``ignore_index`` (uint8 label maps
            are fine). On the kernel path another value makes the loss NaN instead of raising.
        ignore_index: label of pixels that take no part in the loss (255 by default).
        reduction: ``"mean"`` over the labelled pixels (NaN when there are none, as F.cross_entropy)
            or ``"sum"``.
        label_smoothing: as in F.cross_entropy.

    Returns:
        A float32 scalar (float64 for float64 logits). When logits require grad, the gradient is
        written during the forward pass; the backward only scales it.
    """
    _check_cross_entropy(logits, labels, ignore_index, reduction, label_smoothing, same_size=True)
    return _cross_entropy(_semantic_cross_entropy_op, semantic_cross_entropy_reference, logits, labels, ignore_index,
                          reduction, label_smoothing)


def upsample_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of coarse logits, bilinearly resized to the labels' size, against full-size labels.

    Equals ``semantic_cross_entropy(interpolate(logits, labels.shape[-2:], bilinear,
    align_corners=False), labels)`` but the kernel samples the logits in place and scatters the
    gradient back to the coarse grid: no full-size logits exist.

    Args:
        logits: ``(N, K, h, w)`` on the head's grid (stride 8).
        labels: ``(N, H, W)`` at image size (any size), classes or ``ignore_index``.
        ignore_index, reduction, label_smoothing: as :func:`semantic_cross_entropy`.

    Returns:
        A float32 scalar (float64 for float64 logits).
    """
    _check_cross_entropy(logits, labels, ignore_index, reduction, label_smoothing, same_size=False)
    return _cross_entropy(_upsample_cross_entropy_op, upsample_cross_entropy_reference, logits, labels, ignore_index,
                          reduction, label_smoothing)
