"""Convolutions with their sum and ReLU in one oneDNN call where nothing needs a gradient.

``torch.ops.mkldnn._convolution_pointwise`` is the fused convolution that ``torch.compile``'s CPU
backend emits: the bias, a residual's sum and a ReLU applied as the convolution writes its output.
In eager mode ATen runs each as its own pass over the output, and in bfloat16 those passes are
slow on the CPU: at the small presets' shapes a 3x3 conv with its ReLU (and sum) takes 1.3-1.5x
the fused call, and at the COCO shape the R50 detectors' bf16 inference runs 1.2-1.3x faster
fused (float32: 1.02x; ``benchmarks/RESULTS.md``, 2026-12-04 (late night)). The call has no
backward, so training and any graph that needs gradients keep ATen's ops, as do other devices,
layouts and traced graphs.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

_FUSED_DTYPES = (torch.float32, torch.bfloat16)


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))``: ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``, one oneDNN call where
    :func:`onednn_conv` applies."""
    fused = onednn_conv(conv, x, conv.weight, conv.bias, relu=True)
    return F.relu(conv(x), inplace=True) if fused is None else fused  # in place: the conv's fresh output


@functools.cache
def _onednn_post_ops_built() -> bool:
    """Whether this torch has oneDNN's convolution with post-ops (x86 builds; not Arm's ACL)."""
    return torch.backends.mkldnn.is_available() and not torch.ops.mkldnn._is_mkldnn_acl_supported()


def onednn_conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor | None:
    """``conv2d(x, weight, bias)`` with ``conv``'s stride, padding, dilation and groups, plus
    ``residual`` (the output's shape) when given, through a ReLU when ``relu``, as one oneDNN call;
    None where that call does not apply, and the caller runs ATen's ops. It applies to a CPU
    ``(N, C, H, W)`` channels_last ``x`` of float32 or bfloat16 (after autocast's cast, which it
    does as autocast would), a residual of the output's dtype and layout, in eager mode (traced and
    exported graphs keep the portable ``conv2d``), when no argument needs a gradient. oneDNN adds
    the residual before it rounds, so a bf16 result is at least as exact as ATen's."""
    if not (not torch.compiler.is_compiling() and type(x) is torch.Tensor and x.device.type == "cpu"
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and torch.backends.mkldnn.enabled and _onednn_post_ops_built()):
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual)):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        if dtype not in _FUSED_DTYPES or x.dtype not in _FUSED_DTYPES or weight.dtype not in _FUSED_DTYPES:
            return None
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif x.dtype not in _FUSED_DTYPES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return None
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    unary = "relu" if relu else "none"
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, unary, [None], "")
    size = [x.shape[0], weight.shape[0]] + [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
        x.shape[2:], conv.padding, conv.dilation, weight.shape[2:], conv.stride)]
    if (type(residual) is not torch.Tensor or list(residual.shape) != size or residual.dtype != x.dtype
            or not residual.is_contiguous(memory_format=torch.channels_last)):
        return None  # ATen's conv2d and add_ then say what is wrong, if anything
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, *args, "add", 1.0,
                                                          unary if relu else None, [None], "")
