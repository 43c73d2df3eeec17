"""``winograd_conv2d``: a 3x3 convolution (stride 1, padding 1) by Winograd's F(4x4, 3x3).

Schema, reference fallback, fake and autograd below (:mod:`sfpn.ops._library`); kernel:
``csrc/cpu/winograd.cpp``. The float32 3x3 convolutions of the detectors run at the CPU's FMA peak
in oneDNN (``benchmarks/RESULTS.md``, 2026-12-05 (morning)), so only fewer FLOPs can make them
faster: F(4x4, 3x3) computes each 4x4 tile of outputs from its 6x6 input window with 36 multiplies
per channel pair where the direct convolution does 144, as 36 matrix products (one per position of
the transformed window) between transforms that move memory. Its float32 rounding is larger than
the direct convolution's: about 1e-5 of the outputs' largest magnitude at 256 channels (the
direct convolution's about 3e-7); a NaN or an infinity in the input makes every output of the tiles
whose windows read it NaN, where a direct convolution's spread to the 3x3 neighbours only.
:class:`sfpn.modeling.layers.Conv2d` uses it for float32 on the CPU where it is faster.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from . import _library
from ._validate import OpValueError, check_same, check_tensor

#: The transform matrices of F(4x4, 3x3) with the points 0, +-1, +-2 (Lavin & Gray, 2016):
#: ``y = A^T [(G w G^T) * (B^T d B)] A`` for a 6x6 window ``d`` and a 3x3 filter ``w``.
INPUT_TRANSFORM = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
                   (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))  # B^T, 6x6
WEIGHT_TRANSFORM = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
                    (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))  # G, 6x3
OUTPUT_TRANSFORM = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))  # A^T, 4x6
TILE, WINDOW = 4, 6


@functools.cache
def _matrix(rows: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).to(dtype=dtype, device=device)


@functools.cache
def _kronecker(rows: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``G (x) G`` (36, 9): row ``6 i + m``, column ``3 j + l`` holds ``G[i, j] G[m, l]``."""
    g = torch.tensor(rows, dtype=torch.float64)
    return torch.kron(g, g).to(dtype=dtype, device=device)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """The transformed filters ``G w G^T`` of ``weight`` ``(K, C, 3, 3)``: ``(36, C, K)``, the
    matrices :func:`winograd_conv2d` multiplies the input's tiles by (position ``6 i + j`` first).
    Differentiable; a loop of inference calls can transform once and call the op itself."""
    k, c = weight.shape[:2]
    # One (36, 9) x (9, C K) product, G (x) G by the filters' taps: einsum's G w G^T moved the
    # (K, C) filters through memory several times, as long as the convolution's own backward at
    # 256 channels on a 25 x 42 map.
    taps = weight.permute(2, 3, 1, 0).reshape(9, c * k)
    return torch.mm(_kronecker(WEIGHT_TRANSFORM, weight.dtype, weight.device), taps).view(WINDOW * WINDOW, c, k)


def winograd_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-PyTorch :func:`winograd_conv2d`: the same transforms and products, in ATen's ops."""
    return _forward_reference(x, winograd_weight(weight), bias)


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` for a 3x3 ``weight``, by Winograd's
    F(4x4, 3x3) (module docstring: faster for float32 on the CPU, with more rounding).

    Args:
        x: ``(N, C, H, W)``, float32 or float64 (half precision would round the transforms too
            coarsely). The CPU kernel reads a channels_last ``x`` as it is and copies any other.
        weight: ``(K, C, 3, 3)``, x's dtype and device.
        bias: ``(K)`` or None.

    Returns:
        ``(N, K, H, W)``, channels_last; differentiable (once) w.r.t. all three.
    """
    check_tensor("x", x, ndim=4, dtypes=(torch.float32, torch.float64))
    check_tensor("weight", weight, ndim=4)
    check_same("weight", weight, "x", x)
    if weight.shape[1:] != (x.shape[1], 3, 3):
        raise OpValueError(f"weight must be (K, C, 3, 3) with x's C = {x.shape[1]}, got shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_same("bias", bias, "x", x)
        if bias.shape[0] != weight.shape[0]:
            raise OpValueError(f"bias must be (K) = ({weight.shape[0]},), got shape {tuple(bias.shape)}")
    return torch.ops.sfpn.winograd_conv2d(x, winograd_weight(weight), bias)


# --------------------------------------------------------------------------------------------------
# The reference of the transforms: tiles (36, T, C) in (n, ty, tx) order, maps channels_last.


def _tile_grid(height: int, width: int) -> tuple[int, int]:
    return -(-height // TILE), -(-width // TILE)


def winograd_tiles(batch: int, height: int, width: int) -> int:
    """How many 4x4 output tiles :func:`winograd_conv2d` cuts a batch of ``height x width`` maps
    into (its matrix products' rows): ``N ceil(H / 4) ceil(W / 4)``."""
    th, tw = _tile_grid(height, width)
    return batch * th * tw


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """``B^T d B`` of each 6x6 window ``d`` of ``x`` ``(N, C, H, W)`` padded by one (zeros):
    ``(36, T, C)``."""
    n, c, h, w = x.shape
    th, tw = _tile_grid(h, w)
    if th * tw == 0:
        return x.new_zeros(WINDOW * WINDOW, 0, c)
    padded = torch.nn.functional.pad(x, (1, TILE * tw + 1 - w, 1, TILE * th + 1 - h))
    windows = padded.unfold(2, WINDOW, TILE).unfold(3, WINDOW, TILE)  # (N, C, th, tw, 6, 6)
    bt = _matrix(INPUT_TRANSFORM, x.dtype, x.device)
    return torch.einsum("ij,nctwjk,lk->ilntwc", bt, windows, bt).reshape(WINDOW * WINDOW, n * th * tw, c)


def _tiles_adjoint(grad: torch.Tensor, size) -> torch.Tensor:
    """The adjoint of :func:`_tiles`: ``B dV B^T`` of each tile of ``grad`` ``(36, T, C)`` summed
    into its window, ``(N, C, H, W)``."""
    n, c, h, w = size
    th, tw = _tile_grid(h, w)
    if th * tw == 0:
        return grad.new_zeros(size).contiguous(memory_format=torch.channels_last)
    bt = _matrix(INPUT_TRANSFORM, grad.dtype, grad.device)
    windows = torch.einsum("ij,ilntwc,lk->ncjktw", bt, grad.reshape(WINDOW, WINDOW, n, th, tw, c), bt)
    padded = torch.nn.functional.fold(windows.reshape(n, c * WINDOW * WINDOW, th * tw),
                                      (TILE * th + 2, TILE * tw + 2), WINDOW, stride=TILE)
    return padded[:, :, 1:h + 1, 1:w + 1].contiguous(memory_format=torch.channels_last)


def _untile(products: torch.Tensor, size, bias: torch.Tensor | None) -> torch.Tensor:
    """``A^T M A`` of each tile of ``products`` ``(36, T, K)``, cropped to ``size`` ``(N, K, H, W)``,
    plus ``bias``."""
    n, k, h, w = size
    th, tw = _tile_grid(h, w)
    at = _matrix(OUTPUT_TRANSFORM, products.dtype, products.device)
    y = torch.einsum("ai,ijntwk,bj->nktawb", at, products.reshape(WINDOW, WINDOW, n, th, tw, k), at)
    y = y.reshape(n, k, TILE * th, TILE * tw)[:, :, :h, :w]
    if bias is not None:
        y = y + bias.view(1, k, 1, 1)
    return y.contiguous(memory_format=torch.channels_last)


def _untile_adjoint(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_untile`: ``A dy A^T`` of each 4x4 tile of ``grad`` ``(N, K, H, W)``
    (zeros outside the map), ``(36, T, K)``."""
    n, k, h, w = grad.shape
    th, tw = _tile_grid(h, w)
    padded = torch.nn.functional.pad(grad, (0, TILE * tw - w, 0, TILE * th - h))
    tiles = padded.reshape(n, k, th, TILE, tw, TILE)
    at = _matrix(OUTPUT_TRANSFORM, grad.dtype, grad.device)
    return torch.einsum("ai,nktawb,bj->ijntwk", at, tiles, at).reshape(WINDOW * WINDOW, n * th * tw, k)


def _forward_reference(x, weight, bias):
    return _untile(torch.bmm(_tiles(x), weight), (x.shape[0], weight.shape[2], *x.shape[2:]), bias)


def _backward_reference(grad, x, weight, output_mask):
    grad_products = _untile_adjoint(grad)
    grad_x = _tiles_adjoint(torch.bmm(grad_products, weight.transpose(1, 2)), x.shape) if output_mask[0] else (
        x.new_empty(0))
    grad_weight = torch.bmm(_tiles(x).transpose(1, 2), grad_products) if output_mask[1] else x.new_empty(0)
    grad_bias = grad.sum((0, 2, 3)) if output_mask[2] else x.new_empty(0)
    return grad_x, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake, autograd. The backward returns an empty
# tensor for each gradient its mask does not ask for.

_library.define("winograd_conv2d(Tensor x, Tensor weight, Tensor? bias) -> Tensor", _forward_reference)
_library.define(
    "winograd_conv2d_backward(Tensor grad, Tensor x, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
    _backward_reference,
)


@torch.library.register_fake("sfpn::winograd_conv2d")
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[2], *x.shape[2:])).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("sfpn::winograd_conv2d_backward")
def _(grad, x, weight, output_mask):
    return (torch.empty_like(x, memory_format=torch.channels_last) if output_mask[0] else x.new_empty(0),
            torch.empty_like(weight) if output_mask[1] else x.new_empty(0),
            grad.new_empty(grad.shape[1]) if output_mask[2] else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grads = torch.ops.sfpn.winograd_conv2d_backward(grad, x, weight, needs)
    return tuple(g if need else None for g, need in zip(grads, needs))


torch.library.register_autograd("sfpn::winograd_conv2d", _backward, setup_context=_setup_context)
_library.register(_library.Op("winograd_conv2d", _library.COMPILED_CPU, backward=("winograd_conv2d_backward",)))
