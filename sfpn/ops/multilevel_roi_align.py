"""``multilevel_roi_align``: RoIAlign over a whole feature pyramid in one pass, and
``MultiLevelRoIAlign``, a drop-in for ``torchvision.ops.MultiScaleRoIAlign`` running it.

Each box is pooled from its FPN level, chosen inside the kernel with torchvision's
``MultiScaleRoIAlign`` rule, so there is no per-level gather and scatter in Python. Schema and
reference fallback below (:mod:`sfpn.ops._library`); kernels: ``csrc/cpu/roi_align.cpp``,
``csrc/cuda/roi_align.cu`` (shared with ``roi_align``). Precision and layout as ``roi_align``:
under ``torch.autocast`` it runs in the levels' dtype (computing in float32), the CPU kernel
reads channels_last levels as they are (every level in the layout of ``levels[0]``), and the
gradients have that layout. Both script with TorchScript, as ``roi_align`` does (the Python
argument checks are left out of a scripted call).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _library
from ._validate import OpTypeError, OpValueError
from .roi_align import (
    boxes_to_rois,
    check_boxes,
    check_input,
    check_rois,
    check_sampling_ratio,
    check_scale,
    deterministic_backward,
    deterministic_requested,
    gradient_layout,
    in_order,
    output_size_pair,
    roi_align_backward_reference_rois,
    roi_align_reference_rois,
)

#: Pyramid levels one multi-level call takes (the CUDA kernel passes them by value).
MAX_LEVELS = 8
#: torchvision's LevelMapper epsilon.
LEVEL_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# torchvision's scale and level rules (one implementation, used by the op and the module)


def level_of_scale(scale: float) -> int:
    """The level k of a map of scale 2**-k, as torchvision's MultiScaleRoIAlign computes it."""
    return int(-math.log2(scale))


def infer_scale(feature_size: list[int], image_size: list[int]) -> float:
    """torchvision's scale of a feature map: ``2**round(log2(feature_h / image_h))``
    (``math.log(x, 2.0)``: TorchScript has no ``math.log2``; a ratio of sizes is never near enough
    to a half-integer power of 2 for the two to round apart)."""
    return 2.0 ** round(math.log(float(feature_size[0]) / float(image_size[0]), 2.0))


def infer_scales(levels: list[torch.Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """torchvision's scales of pyramid ``levels`` for a batch of ``image_shapes`` ``(h, w)``: each
    level's :func:`infer_scale` against the largest image (written in TorchScript's subset)."""
    if len(image_shapes) == 0:
        raise OpValueError("image_shapes must not be empty")
    largest = [0, 0]
    for height, width in image_shapes:
        largest = [max(largest[0], height), max(largest[1], width)]
    return [infer_scale(level.shape[-2:], largest) for level in levels]


def map_levels_reference(boxes: torch.Tensor, scales, canonical_scale=224, canonical_level=4) -> torch.Tensor:
    """torchvision's LevelMapper: the index into ``scales`` of each ``(K, 4)`` box's FPN level,
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to the levels.
    Inverted boxes (NaN size) go to the finest level."""
    k_min, k_max = level_of_scale(scales[0]), level_of_scale(scales[-1])
    if k_min == k_max:
        return torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(canonical_level + torch.log2(size / canonical_scale) + torch.tensor(LEVEL_EPS, dtype=size.dtype))
    level = torch.nan_to_num(level, nan=k_min).clamp(k_min, k_max)
    return level.long() - k_min


# ----------------------------------------------------------------------------------------------
# Arguments


def _check_levels(levels, scales) -> tuple[list[torch.Tensor], list[float]]:
    if isinstance(levels, torch.Tensor) or not isinstance(levels, Sequence):
        raise OpTypeError(f"levels must be a list of (N, C, H, W) tensors, got {type(levels).__name__}")
    levels = list(levels)
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise OpValueError(f"levels must hold 1 to {MAX_LEVELS} feature maps, got {len(levels)}")
    for i, level in enumerate(levels):
        check_input(f"levels[{i}]", level)
        if level.shape[:2] != levels[0].shape[:2] or level.dtype != levels[0].dtype or level.device != levels[0].device:
            raise OpValueError(
                f"levels[{i}] must share batch size, channels, dtype and device with levels[0]: got "
                f"{tuple(level.shape)} {level.dtype} {level.device} and {tuple(levels[0].shape)} "
                f"{levels[0].dtype} {levels[0].device}"
            )
    scales = [check_scale(f"scales[{i}]", s) for i, s in enumerate(scales)]
    if len(scales) != len(levels):
        raise OpValueError(f"scales must give one scale per level: {len(scales)} scales for {len(levels)} levels")
    ks = [level_of_scale(s) for s in scales]
    if len(levels) > 1 and ks != list(range(ks[0], ks[0] + len(ks))):
        raise OpValueError(
            f"scales must be 2**-k for consecutive levels k, finest first (as FPN's), got {scales} (levels {ks})"
        )
    return levels, scales


def _multilevel_args(levels, boxes, output_size, scales):
    """The checked ``(PH, PW)`` output size, levels and scales of a multi-level call (op or
    reference)."""
    output_size = output_size_pair(output_size)
    levels, scales = _check_levels(levels, scales)
    check_boxes(boxes, levels[0])
    return output_size, levels, scales


# ----------------------------------------------------------------------------------------------
# Reference


def _level_index(rois, scales, canonical_scale, canonical_level, dtype):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return map_levels_reference(rois[:, 1:].detach().to(compute), scales, canonical_scale, canonical_level)


def _multilevel_reference_rois(levels, rois, output_size, scales, sampling_ratio, aligned, canonical_scale, canonical_level):
    level_index = _level_index(rois, scales, canonical_scale, canonical_level, levels[0].dtype)
    pieces, order = [], []
    for i, (level, scale) in enumerate(zip(levels, scales)):
        index = torch.nonzero(level_index == i).flatten()
        pieces.append(roi_align_reference_rois(level, rois[index], output_size, scale, sampling_ratio, aligned))
        order.append(index)
    return in_order(pieces, order)


def multilevel_roi_align_reference(
    levels,
    boxes,
    output_size,
    scales,
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> torch.Tensor:
    """Pure-PyTorch ``multilevel_roi_align``: the single-level reference applied per level."""
    output_size, levels, scales = _multilevel_args(levels, boxes, output_size, scales)
    return _multilevel_reference_rois(levels, boxes_to_rois(boxes, levels[0]), output_size, scales, sampling_ratio,
                                      aligned, canonical_scale, canonical_level)


# ----------------------------------------------------------------------------------------------
# Public op and module


def multilevel_roi_align(
    levels: list[torch.Tensor],
    boxes: Union[torch.Tensor, list[torch.Tensor]],
    output_size: BroadcastingList2[int],
    scales: list[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    deterministic: Optional[bool] = None,
) -> torch.Tensor:
    """RoIAlign over an FPN pyramid in one launch: each box is pooled from level
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to the levels
    given (torchvision's ``MultiScaleRoIAlign`` rule), at that level's scale.

    Args:
        levels: 1..8 maps ``(N, C, H_l, W_l)`` sharing N, C, dtype and device, finest first.
        boxes: as in :func:`sfpn.ops.roi_align`, in image coordinates.
        output_size: ``int`` or ``(PH, PW)``.
        scales: the scale of each level, ``2**-k`` for consecutive k (``[1/4, 1/8, 1/16, 1/32]``
            for P2-P5).
        sampling_ratio, aligned, deterministic: as in :func:`sfpn.ops.roi_align`.
        canonical_scale, canonical_level: the box size that maps to ``canonical_level``.

    Returns:
        ``(K, C, PH, PW)``, differentiable (twice) w.r.t. every level.
    """
    if not torch.jit.is_scripting():
        _, levels, scales = _multilevel_args(levels, boxes, output_size, scales)
        check_sampling_ratio(sampling_ratio)
        check_scale("canonical_scale", canonical_scale)
    size = _pair(output_size)
    rois = boxes_to_rois(boxes, levels[0])
    if not torch.jit.is_scripting():
        check_rois(rois, levels[0].shape[0])
    return torch.ops.sfpn.multilevel_roi_align(
        levels, rois, scales, size[0], size[1], sampling_ratio, bool(aligned), float(canonical_scale),
        int(canonical_level), deterministic_requested(deterministic),
    )


class MultiLevelRoIAlign(nn.Module):
    """Drop-in for ``torchvision.ops.MultiScaleRoIAlign`` running :func:`multilevel_roi_align`.

    Same constructor, attributes (``featmap_names``, ``output_size``, ``sampling_ratio``,
    ``canonical_scale``, ``canonical_level``, ``scales``) and call as torchvision's:
    ``forward(x, boxes, image_shapes)``: ``x`` a dict of feature maps (those named in
    ``featmap_names`` are pooled, in ``x``'s order, finest first), ``boxes`` a list of ``(K_i, 4)``
    per image in image coordinates, ``image_shapes`` the ``(h, w)`` of each image before the
    backbone; returns ``(sum K_i, C, PH, PW)``. As torchvision, the scales are inferred
    (:func:`infer_scales`) at the first call and then kept in ``self.scales``. ``aligned`` (not in
    torchvision, default False as there) selects the half-pixel shift. It scripts with
    TorchScript, as torchvision's does.
    """

    # TorchScript reads attribute types here (not from a postponed annotation): None until the
    # first call infers the scales.
    __annotations__ = {"scales": Optional[list[float]]}

    def __init__(
        self,
        featmap_names: list[str],
        output_size,
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
    ):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = output_size_pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.scales: list[float] | None = None

    @classmethod
    def from_torchvision(cls, pooler: nn.Module) -> MultiLevelRoIAlign:
        """The same pooler as a ``torchvision.ops.MultiScaleRoIAlign`` (settings and any scales it
        has already inferred) on sfpn's op."""
        replacement = cls(
            pooler.featmap_names,
            pooler.output_size,
            pooler.sampling_ratio,
            canonical_scale=pooler.canonical_scale,
            canonical_level=pooler.canonical_level,
        )
        replacement.scales = pooler.scales
        return replacement

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        levels: list[torch.Tensor] = []
        for name, level in x.items():
            if name in self.featmap_names:
                levels.append(level)
        if len(levels) == 0:
            raise OpValueError(f"x holds none of the feature maps {self.featmap_names}, only {list(x.keys())}")
        scales = self.scales
        if scales is None:
            scales = infer_scales(levels, image_shapes)
            self.scales = scales
        return multilevel_roi_align(
            levels,
            boxes,
            self.output_size,
            scales,
            self.sampling_ratio,
            self.aligned,
            float(self.canonical_scale),
            self.canonical_level,
        )

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


# ----------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake, autograd (twice differentiable).


def _multilevel_op_reference(levels, rois, scales, pooled_h, pooled_w, sampling_ratio, aligned, canonical_scale,
                             canonical_level, deterministic=False):
    return _multilevel_reference_rois(levels, rois, (pooled_h, pooled_w), scales, sampling_ratio, aligned,
                                      canonical_scale, canonical_level)


def _multilevel_backward_op_reference(grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio,
                                      aligned, canonical_scale, canonical_level, deterministic, channels_last=False):
    level_index = _level_index(rois, scales, canonical_scale, canonical_level, grad.dtype)
    output_size = tuple(grad.shape[-2:])
    grads = []
    for i, (scale, height, width) in enumerate(zip(scales, heights, widths)):
        index = torch.nonzero(level_index == i).flatten()
        grads.append(roi_align_backward_reference_rois(
            grad[index], rois[index], scale, output_size, (batch_size, channels, height, width), sampling_ratio, aligned
        ).contiguous(memory_format=gradient_layout(channels_last)))
    return grads


# All FPN levels in one launch; the level of each RoI is chosen inside the kernel.
_library.define(
    "multilevel_roi_align(Tensor[] levels, Tensor rois, float[] scales, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned, float canonical_scale, int canonical_level, bool deterministic=False) -> Tensor",
    _multilevel_op_reference,
)
# The level sizes instead of the levels themselves, so that autograd need not keep them alive.
_library.define(
    "multilevel_roi_align_backward(Tensor grad, Tensor rois, float[] scales, SymInt batch_size, SymInt channels, "
    "SymInt[] heights, SymInt[] widths, int sampling_ratio, bool aligned, float canonical_scale, "
    "int canonical_level, bool deterministic, bool channels_last=False) -> Tensor[]",
    _multilevel_backward_op_reference,
)


@torch.library.register_fake("sfpn::multilevel_roi_align")
def _(levels, rois, scales, pooled_height, pooled_width, *_):
    return levels[0].new_empty((rois.shape[0], levels[0].shape[1], pooled_height, pooled_width))


@torch.library.register_fake("sfpn::multilevel_roi_align_backward")
def _(grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned, canonical_scale,
      canonical_level, deterministic, channels_last=False):
    return [torch.empty((batch_size, channels, h, w), dtype=grad.dtype, device=grad.device,
                        memory_format=gradient_layout(channels_last)) for h, w in zip(heights, widths)]


def _setup_context(ctx, inputs, output):
    levels, rois, scales, pooled_h, pooled_w, sampling_ratio, aligned, canonical_scale, canonical_level, *rest = inputs
    ctx.save_for_backward(rois)
    ctx.level_shape = (levels[0].shape[0], levels[0].shape[1], [l.shape[2] for l in levels], [l.shape[3] for l in levels])
    # The gradients' layout (roi_align.py): the levels share one, as the forward reads them.
    ctx.channels_last = _library.output_memory_format(levels[0]) == torch.channels_last
    ctx.arguments = (scales, sampling_ratio, aligned, canonical_scale, canonical_level, bool(rest and rest[0]))


def _backward(ctx, grad):
    input_count = len(ctx.needs_input_grad)  # as in roi_align.py's _backward
    if not ctx.needs_input_grad[0]:
        return (None,) * input_count
    (rois,) = ctx.saved_tensors
    batch_size, channels, heights, widths = ctx.level_shape
    scales, sampling_ratio, aligned, canonical_scale, canonical_level, deterministic = ctx.arguments
    grad_levels = torch.ops.sfpn.multilevel_roi_align_backward(
        grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned,
        canonical_scale, canonical_level, deterministic_backward(deterministic), ctx.channels_last,
    )
    return (grad_levels,) + (None,) * (input_count - 1)


def _setup_backward_context(ctx, inputs, output):
    grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned, canonical_scale, canonical_level, deterministic, *_ = inputs
    ctx.save_for_backward(rois)
    ctx.level_shapes = [(batch_size, channels, h, w) for h, w in zip(heights, widths)]
    ctx.arguments = (scales, grad.shape[-2], grad.shape[-1], sampling_ratio, aligned, canonical_scale, canonical_level,
                     deterministic)


def _backward_backward(ctx, grad_grad_levels):
    (rois,) = ctx.saved_tensors
    defined = next(g for g in grad_grad_levels if g is not None)
    # A level whose gradient took no part in the loss contributes zeros.
    levels = [g if g is not None else defined.new_zeros(shape) for g, shape in zip(grad_grad_levels, ctx.level_shapes)]
    grad_grad = torch.ops.sfpn.multilevel_roi_align(levels, rois, *ctx.arguments)
    return (grad_grad,) + (None,) * (len(ctx.needs_input_grad) - 1)


torch.library.register_autograd("sfpn::multilevel_roi_align", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "sfpn::multilevel_roi_align_backward", _backward_backward, setup_context=_setup_backward_context
)
_library.register(_library.Op("multilevel_roi_align", _library.COMPILED, backward=("multilevel_roi_align_backward",)))
