"""``batch_norm_relu``: ``relu(batch_norm(x) + residual)`` with the batch's statistics, as a
BatchNorm normalises while it trains: statistics, then one fused pass.

Schema, reference fallback, fake and autograd below (:mod:`sfpn.ops._library`); kernels:
``csrc/cpu/batch_norm_relu.cpp`` (forward and backward), which read a channels_last or NCHW ``x``
as it is, bf16/fp16 without a copy, and give a result and gradients in its layout. The reference
(ATen's BatchNorm, the sum, the ReLU) serves every other device: on CUDA, cuDNN's BatchNorm is the
peer to beat and no kernel of ours is written yet. Where a ResNet block trains its BatchNorm on
the CPU, :func:`sfpn.modeling.backbone.conv_norm` calls this op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _library
from ._validate import OpValueError, check_same, check_tensor


def batch_norm_relu_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Pure-PyTorch :func:`batch_norm_relu`: ``F.batch_norm`` in training mode, computed in float32
    at least, the sum and the ReLU, returned in x's dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)
    out = F.batch_norm(
        x.to(compute), running_mean, running_var, weight.to(compute), bias.to(compute), True, momentum, eps
    )
    if residual is not None:
        out = out + residual.to(compute)
    return F.relu(out).to(x.dtype)


def batch_norm_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``relu(batch_norm(x, weight, bias) + residual)``, normalised by the batch's statistics (the
    mean and biased variance of each channel over the batch and the pixels), as ``nn.BatchNorm2d``
    normalises while training; the running statistics, when given, are updated in place as it
    updates them.

    Args:
        x: ``(N, C, H, W)`` with more than one value per channel (``N * H * W > 1``).
        weight, bias: the affine parameters ``(C,)``, any floating dtype (float32 under AMP).
        running_mean, running_var: ``(C,)`` buffers updated in place,
            ``running = (1 - momentum) * running + momentum * batch`` (the variance unbiased), or
            both None.
        residual: ``(N, C, H, W)`` like x, added before the ReLU (a ResNet block's shortcut), or
            None.
        momentum: the running statistics' update factor, in ``[0, 1]``.
        eps: added to the variance.

    Returns:
        ``(N, C, H, W)`` in x's dtype, differentiable w.r.t. ``x``, ``weight``, ``bias`` and
        ``residual``.
    """
    _check_batch_norm_relu(x, weight, bias, running_mean, running_var, residual, momentum, eps)
    out, mean, _, variance = torch.ops.sfpn.batch_norm_relu(x, weight, bias, residual, float(eps))
    if running_mean is not None:
        # running = (1 - momentum) * running + momentum * batch, as nn.BatchNorm2d updates them.
        torch._foreach_lerp_([running_mean, running_var], [mean, variance], momentum)
    return out


def _check_batch_norm_relu(x, weight, bias, running_mean, running_var, residual, momentum, eps) -> None:
    check_tensor("x", x, ndim=4)
    channels = x.shape[1]
    if x.numel() <= channels:
        raise OpValueError(
            f"x must hold more than one value per channel to be normalised by the batch's statistics, "
            f"got shape {tuple(x.shape)}"
        )
    parameters = {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var}
    for name, param in parameters.items():
        if param is None and name.startswith("running"):
            continue
        check_tensor(name, param, ndim=1)
        if param.shape[0] != channels:
            raise OpValueError(f"{name} must have shape ({channels},) to match x's channels, got {tuple(param.shape)}")
        if param.device != x.device:
            raise OpValueError(f"{name} must be on the same device as x ({x.device}), got {param.device}")
    check_same("bias", bias, "weight", weight)
    if (running_mean is None) != (running_var is None):
        raise OpValueError("running_mean and running_var must be given together, or neither")
    if residual is not None:
        check_tensor("residual", residual, ndim=4)
        check_same("residual", residual, "x", x)
        if residual.shape != x.shape:
            raise OpValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
        raise OpValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise OpValueError(f"eps must be a non-negative number, got {eps!r}")


# --------------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake, autograd. The op returns ``(out, mean,
# rstd, variance)``: the statistics ``(C,)`` (float32, float64 for float64 x), mean and rstd for
# the backward, mean and the unbiased variance for the running statistics. Its backward returns
# the residual's gradient too (the gradient the ReLU passed), or an empty tensor where there is
# no residual.


def _batch_norm_relu_op_reference(x, weight, bias, residual, eps):
    compute = _library.statistics_dtype(x)
    out, mean, rstd = torch.native_batch_norm(
        _library.in_statistics_dtype(x), weight.to(compute), bias.to(compute), None, None, True, 0.0, eps
    )
    if residual is not None:
        out = out.add_(residual)
    out = F.relu_(out).to(x.dtype)
    count = x.numel() // x.shape[1]
    variance = ((rstd.double().pow(-2) - eps).clamp_(min=0) * (count / max(count - 1, 1))).to(rstd.dtype)
    return out.contiguous(memory_format=_library.output_memory_format(x)), mean, rstd, variance


def _batch_norm_relu_backward_op_reference(grad, out, x, mean, rstd, weight, residual):
    compute = mean.dtype
    # The ReLU passes the gradient where the forward's output is positive; the residual's gradient
    # is what it passed.
    grad_y = torch.ops.aten.threshold_backward(grad, out, 0)
    grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
        _library.in_statistics_dtype(grad_y), _library.in_statistics_dtype(x), weight.to(compute), None, None, mean,
        rstd, True, 0.0, [True, True, True],
    )
    layout = _library.output_memory_format(x)
    grad_residual = grad_y.contiguous(memory_format=layout) if residual else x.new_empty(0)
    return (grad_x.to(x.dtype).contiguous(memory_format=layout), grad_residual, grad_weight.to(weight.dtype),
            grad_bias.to(weight.dtype))


_library.define(
    "batch_norm_relu(Tensor x, Tensor weight, Tensor bias, Tensor? residual, float eps) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _batch_norm_relu_op_reference,
)
_library.define(
    "batch_norm_relu_backward(Tensor grad, Tensor out, Tensor x, Tensor mean, Tensor rstd, Tensor weight, "
    "bool residual) -> (Tensor, Tensor, Tensor, Tensor)",
    _batch_norm_relu_backward_op_reference,
)


@torch.library.register_fake("sfpn::batch_norm_relu")
def _(x, weight, bias, residual, eps):
    stats = x.new_empty((x.shape[1],), dtype=_library.statistics_dtype(x))
    return _library.empty_like_layout(x, x.shape), stats, torch.empty_like(stats), torch.empty_like(stats)


@torch.library.register_fake("sfpn::batch_norm_relu_backward")
def _(grad, out, x, mean, rstd, weight, residual):
    grad_residual = _library.empty_like_layout(x, x.shape) if residual else x.new_empty(0)
    return _library.empty_like_layout(x, x.shape), grad_residual, torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, _, residual, _ = inputs
    out, mean, rstd, variance = output
    ctx.mark_non_differentiable(mean, rstd, variance)
    ctx.residual = residual is not None
    # Saving the output costs no memory in a ResNet: it is the next convolution's input, saved there.
    ctx.save_for_backward(out, x, mean, rstd, weight)


def _backward(ctx, grad, grad_mean, grad_rstd, grad_variance):
    # The statistics are auxiliary outputs: the running statistics are updated without a gradient.
    out, x, mean, rstd, weight = ctx.saved_tensors
    grad_x, grad_residual, grad_weight, grad_bias = torch.ops.sfpn.batch_norm_relu_backward(
        grad, out, x, mean, rstd, weight, ctx.residual
    )
    return grad_x, grad_weight, grad_bias, grad_residual if ctx.residual else None, None


torch.library.register_autograd("sfpn::batch_norm_relu", _backward, setup_context=_setup_context)
_library.register(_library.Op("batch_norm_relu", _library.COMPILED_CPU, backward=("batch_norm_relu_backward",)))
