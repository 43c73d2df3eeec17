"""Convolutions with their sum and ReLU in one oneDNN call where nothing needs a gradient.

``torch.ops.mkldnn._convolution_pointwise`` is the fused convolution that ``torch.compile``'s CPU
backend emits: the bias, a residual's sum and a ReLU applied as the convolution writes its output.
In eager mode ATen runs each as its own pass over the output, and in bfloat16 those passes are
slow on the CPU: at the small presets' shapes a 3x3 conv with its ReLU (and sum) takes 1.3-1.5x
the fused call, and at the COCO shape the R50 detectors' bf16 inference runs 1.2-1.3x faster
fused (float32: 1.02x; ``benchmarks/RESULTS.md``, 2026-12-04 (late night)). The call has no
backward, so training and any graph that needs gradients keep ATen's ops, as do other devices,
layouts and traced graphs. In a loop of inference calls, :class:`InferenceWeightCache` keeps
each convolution's folded, cast weights between calls.

Before either, a float32 3x3 convolution (stride 1, padding 1) on the CPU runs by Winograd's
F(4x4, 3x3) (:func:`winograd_conv`, :func:`sfpn.ops.winograd_conv2d`) where that is faster: oneDNN
runs these at the CPU's FMA peak, and Winograd does a quarter of the multiplies. ``SFPN_WINOGRAD=0``
in the environment turns it off (its rounding is larger: module docstring of
:mod:`sfpn.ops.winograd`).
"""
from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.winograd import winograd_tiles, winograd_weight

_FUSED_DTYPES = (torch.float32, torch.bfloat16)


class InferenceWeightCache:
    """Inside ``with cache:``, the fused inference convolutions (:func:`onednn_conv`) compute each
    convolution's weights once, with any BatchNorm folded in and cast to autocast's dtype, and
    reuse them in later calls inside any ``with`` block of the same cache (so do the box heads'
    fully connected layers, :func:`linear`): for loops of inference
    calls over one model (sfpn's evaluation enters one around its loop). Outside a block, every
    call folds and casts again, as autocast casts every call's weights.

    A cached entry is reused while each tensor it was computed from keeps its storage and its
    version counter: parameters loaded or updated in place (``load_state_dict``, an optimizer
    step) are seen. Edits through ``.data``, which bypass the version counter, are not: make them
    outside the block. The cache holds one copy of the weights it has served (a bf16 copy is half
    the float32 weights' size; a convolution's in oneDNN's blocked layout, so that oneDNN need not
    reorder it at every call) until it is dropped."""

    def __init__(self):
        self._weights: dict = {}
        self._tokens: list = []

    def __enter__(self) -> "InferenceWeightCache":
        self._tokens.append(_ACTIVE_CACHE.set(self._weights))
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE_CACHE.reset(self._tokens.pop())


_ACTIVE_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("sfpn_inference_weights", default=None)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (the same parameters and state dict) whose eager calls on the CPU take
    :func:`cpu_conv`: Winograd's algorithm for float32 3x3 convolutions where it is faster, and for
    inference one oneDNN call, inside an :class:`InferenceWeightCache` with its weights cast and
    packed once, where ``nn.Conv2d`` casts them under autocast and oneDNN reorders them at every
    call. Scripted and traced graphs run ``nn.Conv2d``'s own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            fast = self._cpu_forward(x)
            if fast is not None:
                return fast
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _cpu_forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        return cpu_conv(self, x, lambda: (self.weight, self.bias), (self.weight, self.bias))


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))``: ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``, by :func:`cpu_conv` where it
    applies."""
    fast = cpu_conv(conv, x, lambda: (conv.weight, conv.bias), (conv.weight, conv.bias), relu=True)
    return F.relu(conv(x), inplace=True) if fast is None else fast  # in place: the conv's fresh output


def _eager_cpu_map(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain CPU ``(N, C, H, W)`` channels_last map, in eager mode, for a
    zero-padded ``conv``: what both of :func:`cpu_conv`'s kernels need."""
    return (not torch.compiler.is_compiling() and type(x) is torch.Tensor and x.device.type == "cpu"
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and conv.padding_mode == "zeros")


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a call on ``tensors`` (None ones ignored)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def cpu_conv(conv: nn.Conv2d, x: torch.Tensor, weights: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
             sources: Sequence[torch.Tensor | None], residual: torch.Tensor | None = None,
             relu: bool = False) -> torch.Tensor | None:
    """``relu(conv2d(x, weight, bias) + residual)`` as :func:`onednn_conv` (the same arguments), by
    :func:`winograd_conv` where it applies (the sum and the ReLU then in place on its output), else
    by :func:`onednn_conv`; None where neither applies, and the caller runs ATen's ops."""
    out = winograd_conv(conv, x, weights, sources)
    if out is None:
        return onednn_conv(conv, x, weights, sources, residual, relu)
    if residual is not None:
        out = out.add_(residual)
    return out.relu_() if relu else out


#: Where a convolution that needs gradients runs by Winograd: ``(channels, tiles)`` pairs, the
#: convolution's smaller channel count (in or out) at least the first and its tile count
#: (N ceil(H / 4) ceil(W / 4)) at least the second, for one pair. Below them its backward is
#: slower than oneDNN's: the weight gradient's products over few tiles run below the FMA peak, and
#: at 32 channels the transforms move as much memory as the products take time, which only many
#: tiles repay (fwd + bwd, Xeon model 207, ``benchmarks/RESULTS.md``, 2026-12-06 (morning)). Its
#: forward alone is faster at every size measured, so inference takes it at any size.
WINOGRAD_TRAINING_SIZES = ((64, 64), (32, 640))


def _winograd_switched_off() -> bool:
    return os.environ.get("SFPN_WINOGRAD", "1") == "0"


@functools.cache
def _winograd_available() -> bool:
    """Whether sfpn's C++ kernel serves the Winograd op on the CPU (its reference is no faster than
    ATen's convolution) and ``SFPN_WINOGRAD`` is not ``0``."""
    return not _winograd_switched_off() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "sfpn::winograd_conv2d", "CPU")


def describe_winograd() -> str:
    """Which convolutions serve float32 3x3 convolutions of stride 1 on the CPU, and why, in words
    (``python -m sfpn.info``)."""
    if _winograd_switched_off():
        return "oneDNN's (SFPN_WINOGRAD=0)"
    if not _winograd_available():
        return "oneDNN's (sfpn's C++ Winograd kernel is not loaded)"
    return "Winograd's F(4x4, 3x3) where it pays, else oneDNN's (SFPN_WINOGRAD=0: oneDNN's)"


def winograd_conv(conv: nn.Conv2d, x: torch.Tensor, weights: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
                  sources: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """``conv2d(x, weight, bias)`` by Winograd's F(4x4, 3x3) (:func:`sfpn.ops.winograd_conv2d`),
    ``(weight, bias) = weights()`` computed from ``sources`` as in :func:`onednn_conv`; None where it
    does not apply. It applies to a 3x3 ``conv`` with stride 1, padding 1, no dilation or groups,
    on a CPU float32 channels_last ``(N, C, H, W)`` ``x`` (the detectors' CPU layout, which the
    kernel reads as it is) outside autocast, in eager mode; where an argument needs
    a gradient, only at sizes where its backward is faster too (:data:`WINOGRAD_TRAINING_SIZES`).
    Where nothing needs a gradient, an :class:`InferenceWeightCache` keeps the transformed weights."""
    if not (_eager_cpu_map(conv, x) and not torch.jit.is_tracing() and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and _winograd_available()):
        return None

    def transformed() -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = weights()
        return winograd_weight(weight), bias

    if _needs_grad(x, *sources):
        channels = min(conv.in_channels, conv.out_channels)
        tiles = winograd_tiles(x.shape[0], x.shape[2], x.shape[3])
        if not any(channels >= c and tiles >= t for c, t in WINOGRAD_TRAINING_SIZES):
            return None
        weight, bias = transformed()
    else:
        weight, bias = _weights_in(conv, x.dtype, transformed, sources)
    return torch.ops.sfpn.winograd_conv2d(x, weight, bias)


def linear(fc: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``fc(x)``: ``(R, in)`` -> ``(R, out)``. Inside an :class:`InferenceWeightCache`, under
    autocast and where nothing needs a gradient, with ``fc``'s weights cast once per cache instead
    of at every call (a box head's first layer holds the largest weights of a small detector)."""
    device = x.device.type
    if (_ACTIVE_CACHE.get() is None or not torch.is_autocast_enabled(device) or torch.compiler.is_compiling()
            or _needs_grad(x, fc.weight, fc.bias)):
        return fc(x)
    dtype = torch.get_autocast_dtype(device)
    weight, bias = _weights_in(fc, dtype, lambda: (fc.weight, fc.bias), (fc.weight, fc.bias))
    return F.linear(x.to(dtype), weight, bias)


@functools.cache
def _onednn_post_ops_built() -> bool:
    """Whether this torch has oneDNN's convolution with post-ops (x86 builds; not Arm's ACL)."""
    return torch.backends.mkldnn.is_available() and not torch.ops.mkldnn._is_mkldnn_acl_supported()


def onednn_conv(conv: nn.Conv2d, x: torch.Tensor, weights: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
                sources: Sequence[torch.Tensor | None], residual: torch.Tensor | None = None,
                relu: bool = False) -> torch.Tensor | None:
    """``conv2d(x, weight, bias)`` with ``conv``'s stride, padding, dilation and groups, where
    ``weights()`` gives ``(weight, bias)`` in ``conv.weight``'s dtype, computed from the tensors
    ``sources`` (``conv.weight`` first), plus ``residual`` (the output's shape) when given,
    through a ReLU when ``relu``, as one oneDNN call; None where that call does not apply, and the
    caller runs ATen's ops. It applies to a CPU ``(N, C, H, W)`` channels_last ``x`` of float32
    or bfloat16 (after autocast's cast, which it does as autocast would), a residual of the
    output's dtype and layout, in eager mode (traced and exported graphs keep the portable
    ``conv2d``), when no argument needs a gradient. ``weights()`` runs only where the call applies,
    and once per :class:`InferenceWeightCache` while its sources are unchanged. oneDNN adds the
    residual before it rounds, so a bf16 result is at least as exact as ATen's."""
    if not (_eager_cpu_map(conv, x) and not isinstance(conv.padding, str)
            and torch.backends.mkldnn.enabled and _onednn_post_ops_built()):
        return None
    if _needs_grad(x, residual, *sources):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        if dtype not in _FUSED_DTYPES or x.dtype not in _FUSED_DTYPES or conv.weight.dtype not in _FUSED_DTYPES:
            return None
        x = x.to(dtype)
    elif x.dtype not in _FUSED_DTYPES or any(t is not None and t.dtype != x.dtype for t in (conv.weight, conv.bias)):
        return None
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    unary = "relu" if relu else "none"
    if residual is not None:
        size = [x.shape[0], conv.out_channels] + [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
            x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
        if (type(residual) is not torch.Tensor or list(residual.shape) != size or residual.dtype != x.dtype
                or not residual.is_contiguous(memory_format=torch.channels_last)):
            return None  # ATen's conv2d and add_ then say what is wrong, if anything
    weight, bias = _weights_in(conv, x.dtype, weights, sources, pack=lambda w: _onednn_packed(w, args, x.shape))
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, unary, [None], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, *args, "add", 1.0,
                                                          unary if relu else None, [None], "")


def _onednn_packed(weight: torch.Tensor, args: tuple, input_shape: torch.Size) -> torch.Tensor:
    """``weight`` reordered once into the blocked layout oneDNN's convolution reads for an input
    of ``input_shape`` (an opaque oneDNN tensor): otherwise the convolution reorders the plain
    weights at every call. The same bits (tested); for another input shape oneDNN reorders it
    again where its layout differs. At the small presets' deep layers the bf16 call takes 0.6x the
    time (256 x 256 x 3 x 3 weights on an 8 x 10 map), the stem's 0.8x (float32 too)."""
    padding, stride, dilation, groups = args
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), padding, stride, dilation, groups,
                                                      list(input_shape))


def _weights_in(conv: nn.Module, dtype: torch.dtype, weights, sources,
                pack: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weights()`` cast to ``dtype``, from the active :class:`InferenceWeightCache` when it holds
    them for ``conv`` and ``dtype`` and ``sources`` are unchanged (same storage, same version). An
    entry keeps its sources' storages alive, so that no other tensor can take their addresses.
    Inside a cache the weight is also ``pack``-ed once, when given. (A convolution's weights take
    one form for a dtype: :func:`winograd_conv`'s transformed ones wherever it applies at
    inference, whatever the map's size, else oneDNN's.)"""
    cache = _ACTIVE_CACHE.get()
    if cache is not None:
        key = tuple(None if t is None else (t.data_ptr(), -1 if t.is_inference() else t._version) for t in sources)
        entry = cache.get((conv, dtype))
        if entry is not None and entry[0] == key:
            return entry[1]
    weight, bias = weights()
    cast = (weight.to(dtype), None if bias is None else bias.to(dtype))
    if cache is not None:
        if pack is not None:
            cast = (pack(cast[0]), cast[1])
        cache[(conv, dtype)] = (key, cast, [t.detach() for t in sources if t is not None])
    return cast
