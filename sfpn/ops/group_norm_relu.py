"""``group_norm_relu``: ``relu(group_norm(x))`` as statistics, then one fused pass.

Schema, reference fallback and the Triton kernel's registration for CUDA below
(:mod:`sfpn.ops._library`); kernel: ``kernels/group_norm_relu.py``. The kernel computes in
float32: float64 and empty inputs run the reference. Under ``torch.autocast`` it runs in x's dtype
(computing in float32 at least, as autocast runs GroupNorm). On the CPU the C++ kernels of
``csrc/cpu/group_norm_relu.cpp`` serve both ops (the references, on ATen's GroupNorm kernels,
without the extension); a channels_last ``x`` gives a channels_last result and gradient, and
bf16/fp16 ``x`` is read as it is: no layout or dtype copy of ``x``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _library
from .. import kernels
from ._validate import OpValueError, check_tensor


def group_norm_relu_reference(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Pure-PyTorch :func:`group_norm_relu`, computed in float32 at least (as the kernel, and as
    autocast runs GroupNorm), returned in x's dtype; the parameters may have another dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)
    out = F.group_norm(x.to(compute), num_groups, weight.to(compute), bias.to(compute), eps)
    return F.relu(out).to(x.dtype)


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

    Scripts with TorchScript; a scripted call skips the argument checks (TorchScript cannot
    compile them).
    """
    if not torch.jit.is_scripting():
        _check_group_norm_relu(x, num_groups, weight, bias, eps)
    return torch.ops.sfpn.group_norm_relu(x, num_groups, weight, bias, float(eps))[0]


def _check_group_norm_relu(x, num_groups, weight, bias, eps) -> None:
    check_tensor("x", x, ndim=4)
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups <= 0:
        raise OpValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if x.shape[1] % num_groups:
        raise OpValueError(f"x's channels ({x.shape[1]}) must be divisible by num_groups ({num_groups})")
    for name, param in (("weight", weight), ("bias", bias)):
        check_tensor(name, param, ndim=1)
        if param.shape[0] != x.shape[1]:
            raise OpValueError(f"{name} must have shape ({x.shape[1]},) to match x's channels, got {tuple(param.shape)}")
        if param.device != x.device:
            raise OpValueError(f"{name} must be on the same device as x ({x.device}), got {param.device}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise OpValueError(f"eps must be a non-negative number, got {eps!r}")


# --------------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, Triton kernel, fake, autograd. The op returns
# ``(out, mean, rstd)``; the statistics ``(N, G)`` (float32, float64 for float64 x) feed the
# backward only.


def _group_norm_relu_op_reference(x, num_groups, weight, bias, eps):
    compute = _library.statistics_dtype(x)
    batch, channels = x.shape[:2]
    out, mean, rstd = torch.native_group_norm(
        _library.in_statistics_dtype(x), weight.to(compute), bias.to(compute), batch, channels, x.shape[2] * x.shape[3],
        num_groups, eps,
    )
    out = F.relu_(out).to(x.dtype)
    return out.contiguous(memory_format=_library.output_memory_format(x)), mean, rstd


def _group_norm_relu_backward_op_reference(grad, out, x, mean, rstd, weight, bias):
    batch, channels, groups = x.shape[0], x.shape[1], mean.shape[1]
    compute = mean.dtype
    # The ReLU passes the gradient where the forward's output is positive: one pass over the saved
    # output, where recomputing the normalised input took a float32 temporary and three passes.
    grad_y = torch.ops.aten.threshold_backward(grad, out, 0)
    grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
        _library.in_statistics_dtype(grad_y), _library.in_statistics_dtype(x), mean, rstd, weight.to(compute), batch,
        channels, x.shape[2] * x.shape[3], groups, [True, True, True],
    )
    grad_x = grad_x.to(x.dtype).contiguous(memory_format=_library.output_memory_format(x))
    return grad_x, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype)


def _group_norm_relu_triton(x, num_groups, weight, bias, eps):
    if not kernels.takes(x):
        return _group_norm_relu_op_reference(x, num_groups, weight, bias, eps)
    kernels.check_launchable(x, "group_norm_relu")
    from ..kernels import group_norm_relu as launcher

    out, mean, rstd = launcher.group_norm_relu(x.contiguous(), num_groups, weight.contiguous(), bias.contiguous(), eps)
    return out.contiguous(memory_format=_library.output_memory_format(x)), mean, rstd


def _group_norm_relu_backward_triton(grad, out, x, mean, rstd, weight, bias):
    if not kernels.takes(x):
        return _group_norm_relu_backward_op_reference(grad, out, x, mean, rstd, weight, bias)
    kernels.check_launchable(x, "group_norm_relu_backward")
    from ..kernels import group_norm_relu as launcher

    # The kernel recomputes the ReLU's mask from x, which it reads anyway: ``out`` stays unread.
    grad_x, grad_weight, grad_bias = launcher.group_norm_relu_backward(
        grad.contiguous(), x.contiguous(), mean, rstd, weight.contiguous(), bias.contiguous()
    )
    return grad_x.contiguous(memory_format=_library.output_memory_format(x)), grad_weight, grad_bias


_library.define(
    "group_norm_relu(Tensor x, int num_groups, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)",
    _group_norm_relu_op_reference,
)
_library.define(
    "group_norm_relu_backward(Tensor grad, Tensor out, Tensor x, Tensor mean, Tensor rstd, Tensor weight, Tensor bias) "
    "-> (Tensor, Tensor, Tensor)",
    _group_norm_relu_backward_op_reference,
)


@torch.library.register_fake("sfpn::group_norm_relu")
def _(x, num_groups, weight, bias, eps):
    stats = x.new_empty((x.shape[0], num_groups), dtype=_library.statistics_dtype(x))
    return _library.empty_like_layout(x, x.shape), stats, torch.empty_like(stats)


@torch.library.register_fake("sfpn::group_norm_relu_backward")
def _(grad, out, x, mean, rstd, weight, bias):
    return _library.empty_like_layout(x, x.shape), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, _, weight, bias, _ = inputs
    out, mean, rstd = output
    # Saving the output costs no memory in SFPN: it is the next convolution's input, saved there.
    ctx.save_for_backward(out, x, mean, rstd, weight, bias)


def _backward(ctx, grad, grad_mean, grad_rstd):
    # mean and rstd are auxiliary outputs: the public function does not return them.
    out, x, mean, rstd, weight, bias = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.sfpn.group_norm_relu_backward(grad, out, x, mean, rstd, weight, bias)
    return grad_x, None, grad_weight, grad_bias, None


torch.library.register_autograd("sfpn::group_norm_relu", _backward, setup_context=_setup_context)
_library.register(_library.Op(
    "group_norm_relu", _library.TRITON, backward=("group_norm_relu_backward",),
    triton={"group_norm_relu": _group_norm_relu_triton, "group_norm_relu_backward": _group_norm_relu_backward_triton},
    compiled_on_cpu=True,
))
