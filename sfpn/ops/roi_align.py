"""RoIAlign (Mask R-CNN), single-level and over a whole feature pyramid in one pass.

``roi_align`` is a drop-in for ``torchvision.ops.roi_align`` (same signature, same results);
``multilevel_roi_align`` pools every box from its FPN level, chosen inside the kernel with
torchvision's ``MultiScaleRoIAlign`` rule, so there is no per-level gather and scatter in Python.
``RoIAlign`` and ``MultiLevelRoIAlign`` are the module forms (the latter takes
``MultiScaleRoIAlign``'s call). Kernels: ``csrc/cpu/roi_align.cpp`` and
``csrc/cuda/roi_align.cu``; the references below are the definitions they are tested against.

Backward determinism: the CPU backward is always deterministic (each thread owns whole gradient
planes). On CUDA the default backward adds with float atomics; ``deterministic=True`` or
``torch.use_deterministic_algorithms(True)`` selects a sort-by-pixel backward without atomics.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import _extension
from ._validate import FLOATING, check_tensor

#: Pyramid levels one multi-level call takes (the CUDA kernel passes them by value).
MAX_LEVELS = 8
#: torchvision's LevelMapper epsilon.
LEVEL_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# Arguments


def _output_size(output_size) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def _boxes_to_rois(boxes, input: torch.Tensor) -> torch.Tensor:
    """A ``(K, 5)`` tensor ``[batch_index, x1, y1, x2, y2]`` from torchvision's two box formats."""
    if isinstance(boxes, torch.Tensor):
        check_tensor("boxes", boxes, ndim=2, dtypes=FLOATING, device=input.device)
        if boxes.shape[1] != 5:
            raise ValueError(f"boxes as a tensor must be (K, 5) [batch_index, x1, y1, x2, y2], got {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"boxes must be a (K, 5) tensor or a list of (K_i, 4) tensors, got {type(boxes).__name__}")
    if len(boxes) > input.shape[0]:
        raise ValueError(f"boxes has {len(boxes)} entries but the input holds {input.shape[0]} images")
    for i, b in enumerate(boxes):
        check_tensor(f"boxes[{i}]", b, ndim=2, dtypes=FLOATING, device=input.device)
        if b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be (K_i, 4) [x1, y1, x2, y2], got {tuple(b.shape)}")
    if not boxes:
        return input.new_zeros((0, 5))
    dtype = boxes[0].dtype
    return torch.cat([torch.cat([b.new_full((len(b), 1), i, dtype=dtype), b.to(dtype)], 1) for i, b in enumerate(boxes)])


def _check_rois(rois: torch.Tensor, batch_size: int) -> None:
    """Finite coordinates and batch indices in range; one host sync for both checks."""
    if rois.numel() == 0:
        return
    index = rois[:, 0]
    finite, in_range = torch.stack(
        [torch.isfinite(rois).all(), ((index >= 0) & (index < batch_size)).all()]
    ).tolist()
    if not finite:
        raise ValueError("boxes must contain only finite values")
    if not in_range:
        raise ValueError(f"boxes batch indices must lie in [0, {batch_size}) (the input's batch size)")


def _check_input(name: str, input: torch.Tensor) -> None:
    check_tensor(name, input, ndim=4)
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"{name} must have a non-empty spatial size, got {tuple(input.shape)}")


def _single_level_args(input: torch.Tensor, boxes, output_size) -> tuple[tuple[int, int], torch.Tensor]:
    """The ``(PH, PW)`` output size and ``(K, 5)`` rois of a single-level call (op or reference)."""
    output_size = _output_size(output_size)
    _check_input("input", input)
    return output_size, _boxes_to_rois(boxes, input)


def _check_sampling_ratio(sampling_ratio) -> int:
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise TypeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__}")
    return sampling_ratio


def _check_scale(name: str, scale) -> float:
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} must be a positive finite number, got {scale}")
    return scale


def _deterministic(deterministic: bool | None) -> bool:
    return bool(deterministic) or torch.are_deterministic_algorithms_enabled()


def _level_of_scale(scale: float) -> int:
    """The level k of a map of scale 2**-k, as torchvision's MultiScaleRoIAlign computes it."""
    return int(-torch.log2(torch.tensor(scale, dtype=torch.float32)).item())


def _check_levels(levels, scales) -> tuple[list[torch.Tensor], list[float]]:
    if isinstance(levels, torch.Tensor) or not isinstance(levels, Sequence):
        raise TypeError(f"levels must be a list of (N, C, H, W) tensors, got {type(levels).__name__}")
    levels = list(levels)
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"levels must hold 1 to {MAX_LEVELS} feature maps, got {len(levels)}")
    for i, level in enumerate(levels):
        _check_input(f"levels[{i}]", level)
        if level.shape[:2] != levels[0].shape[:2] or level.dtype != levels[0].dtype or level.device != levels[0].device:
            raise ValueError(
                f"levels[{i}] must share batch size, channels, dtype and device with levels[0]: got "
                f"{tuple(level.shape)} {level.dtype} {level.device} and {tuple(levels[0].shape)} "
                f"{levels[0].dtype} {levels[0].device}"
            )
    scales = [_check_scale(f"scales[{i}]", s) for i, s in enumerate(scales)]
    if len(scales) != len(levels):
        raise ValueError(f"scales must give one scale per level: {len(scales)} scales for {len(levels)} levels")
    ks = [_level_of_scale(s) for s in scales]
    if len(levels) > 1 and ks != list(range(ks[0], ks[0] + len(ks))):
        raise ValueError(
            f"scales must be 2**-k for consecutive levels k, finest first (as FPN's), got {scales} (levels {ks})"
        )
    return levels, scales


def _multilevel_args(levels, boxes, output_size, scales):
    """The ``(PH, PW)`` output size, levels, scales and ``(K, 5)`` rois of a multi-level call
    (op or reference)."""
    output_size = _output_size(output_size)
    levels, scales = _check_levels(levels, scales)
    return output_size, levels, scales, _boxes_to_rois(boxes, levels[0])


# ----------------------------------------------------------------------------------------------
# References


def _axis_weights(start, bin_size, grid, pooled: int, size: int) -> torch.Tensor:
    """Dense interpolation weights ``(K, pooled, size)`` along one axis, divided by the grid.

    A sample's bilinear weight is the product of a row and a column weight (and so is "outside
    the map counts zero"), so a bin is ``wy @ plane @ wx.T``. ``start``, ``bin_size``: ``(K,)``;
    ``grid``: ``(K,)`` samples per bin.
    """
    max_grid = max(int(grid.max()) if grid.numel() else 0, 1)
    p = torch.arange(pooled, device=start.device, dtype=start.dtype).view(1, -1, 1)
    i = torch.arange(max_grid, device=start.device).view(1, 1, -1)
    g = grid.clamp(min=1).to(start.dtype).view(-1, 1, 1)
    coord = start.view(-1, 1, 1) + p * bin_size.view(-1, 1, 1) + (i + 0.5).to(start.dtype) * bin_size.view(-1, 1, 1) / g
    valid = (i < grid.view(-1, 1, 1)) & (coord >= -1) & (coord <= size)
    v = coord.clamp(min=0)
    low = v.long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, size - 1, low + 1)
    v = torch.where(at_edge, low.to(v.dtype), v)
    w_high = torch.where(valid, v - low, 0) / g
    w_low = torch.where(valid, 1 - (v - low), 0) / g
    weights = start.new_zeros((start.shape[0], pooled, size))
    weights.scatter_add_(2, low.clamp(0, size - 1), w_low).scatter_add_(2, high.clamp(0, size - 1), w_high)
    return weights


def _roi_grid(rois, spatial_scale, output_size, sampling_ratio, aligned):
    """torchvision's RoI geometry: (start_h, start_w, bin_h, bin_w, grid_h, grid_w), each ``(K,)``."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    pooled_h, pooled_w = output_size
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.long)
    else:
        grid_h = torch.ceil(roi_h / pooled_h).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / pooled_w).long().clamp(min=0)
    return y1, x1, roi_h / pooled_h, roi_w / pooled_w, grid_h, grid_w


# RoIs per chunk so that the (k, C, PH, W) intermediate stays near 2**24 elements.
_REFERENCE_CHUNK_ELEMENTS = 1 << 24


def _roi_align_reference_rois(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    compute = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(compute)
    rois = rois.detach().to(compute)
    batch_size, channels, height, width = x.shape
    pooled_h, pooled_w = output_size
    start_h, start_w, bin_h, bin_w, grid_h, grid_w = _roi_grid(rois, spatial_scale, output_size, sampling_ratio, aligned)
    wy = _axis_weights(start_h, bin_h, grid_h, pooled_h, height)  # (K, PH, H)
    wx = _axis_weights(start_w, bin_w, grid_w, pooled_w, width)  # (K, PW, W)
    batch_index = rois[:, 0].long()
    chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // max(1, channels * pooled_h * width))
    pieces, order = [], []
    for n in range(batch_size):
        index = torch.nonzero(batch_index == n).flatten()
        for part in index.split(chunk) or (index,):  # an empty part keeps x[n] in the graph
            # (k, 1, PH, H) @ (C, H, W) @ (k, 1, W, PW) -> (k, C, PH, PW)
            pieces.append(wy[part].unsqueeze(1) @ x[n] @ wx[part].transpose(1, 2).unsqueeze(1))
            order.append(part)
    if not pieces:  # no images, hence no RoIs
        return input.new_zeros((0, channels, pooled_h, pooled_w))
    return _in_order(pieces, order).to(input.dtype)


def _in_order(pieces: list[torch.Tensor], order: list[torch.Tensor]) -> torch.Tensor:
    """Concatenates the ``pieces`` (rows ``order[i]`` of the result) back into RoI order."""
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]


def roi_align_reference(
    input: torch.Tensor,
    boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """Pure-PyTorch ``roi_align``: the definition the kernels are tested against (differentiable
    w.r.t. ``input``). Computes in fp32 for fp16/bf16 inputs."""
    output_size, rois = _single_level_args(input, boxes, output_size)
    return _roi_align_reference_rois(input, rois, output_size, float(spatial_scale), sampling_ratio, aligned)


def map_levels_reference(boxes: torch.Tensor, scales, canonical_scale=224, canonical_level=4) -> torch.Tensor:
    """torchvision's LevelMapper: the index into ``scales`` of each ``(K, 4)`` box's FPN level,
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to the levels.
    Inverted boxes (NaN size) go to the finest level."""
    k_min, k_max = _level_of_scale(scales[0]), _level_of_scale(scales[-1])
    if k_min == k_max:
        return torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(canonical_level + torch.log2(size / canonical_scale) + torch.tensor(LEVEL_EPS, dtype=size.dtype))
    level = torch.nan_to_num(level, nan=k_min).clamp(k_min, k_max)
    return level.long() - k_min


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
    output_size, levels, scales, rois = _multilevel_args(levels, boxes, output_size, scales)
    compute = torch.float64 if levels[0].dtype == torch.float64 else torch.float32
    level_index = map_levels_reference(rois[:, 1:].detach().to(compute), scales, canonical_scale, canonical_level)
    pieces, order = [], []
    for i, (level, scale) in enumerate(zip(levels, scales)):
        index = torch.nonzero(level_index == i).flatten()
        pieces.append(_roi_align_reference_rois(level, rois[index], output_size, scale, sampling_ratio, aligned))
        order.append(index)
    return _in_order(pieces, order)


# ----------------------------------------------------------------------------------------------
# Public ops


def roi_align(
    input: torch.Tensor,
    boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """RoIAlign with torchvision's signature and results.

    Args:
        input: ``(N, C, H, W)`` feature map, fp16/bf16/fp32/fp64.
        boxes: ``(K, 5)`` tensor ``[batch_index, x1, y1, x2, y2]`` or a list of N' <= N ``(K_i, 4)``
            tensors (boxes of image i), in image coordinates; floating point, on ``input``'s device.
        output_size: ``int`` or ``(PH, PW)``.
        spatial_scale: feature-map pixels per image pixel (0.25 for a stride-4 map).
        sampling_ratio: samples per bin along each axis; ``<= 0`` adapts it to the box
            (``ceil(box_size / output_size)``).
        aligned: shift boxes by -0.5 pixel (Detectron2's alignment); False is the legacy mode.
        deterministic: force the atomics-free CUDA backward (also chosen by
            ``torch.use_deterministic_algorithms(True)``); the CPU backward always is.

    Returns:
        ``(K, C, PH, PW)``, differentiable w.r.t. ``input``.

    Raises:
        ValueError: non-finite box coordinates, batch indices outside ``[0, N)``, bad shapes.
        TypeError: non-tensor or non-floating arguments.
    """
    (pooled_h, pooled_w), rois = _single_level_args(input, boxes, output_size)
    spatial_scale = _check_scale("spatial_scale", spatial_scale)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    _check_rois(rois, input.shape[0])
    if _extension.has_kernel("roi_align", input.device):
        return torch.ops.sfpn.roi_align(
            input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, bool(aligned), _deterministic(deterministic)
        )
    return _roi_align_reference_rois(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, bool(aligned))


def multilevel_roi_align(
    levels: Sequence[torch.Tensor],
    boxes,
    output_size,
    scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    *,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """RoIAlign over an FPN pyramid in one launch: each box is pooled from level
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to the levels
    given (torchvision's ``MultiScaleRoIAlign`` rule), at that level's scale.

    Args:
        levels: 1..8 maps ``(N, C, H_l, W_l)`` sharing N, C, dtype and device, finest first.
        boxes: as in :func:`roi_align`, in image coordinates.
        output_size: ``int`` or ``(PH, PW)``.
        scales: the scale of each level, ``2**-k`` for consecutive k (``[1/4, 1/8, 1/16, 1/32]``
            for P2-P5).
        sampling_ratio, aligned, deterministic: as in :func:`roi_align`.
        canonical_scale, canonical_level: the box size that maps to ``canonical_level``.

    Returns:
        ``(K, C, PH, PW)``, differentiable w.r.t. every level.
    """
    (pooled_h, pooled_w), levels, scales, rois = _multilevel_args(levels, boxes, output_size, scales)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    canonical_scale = _check_scale("canonical_scale", canonical_scale)
    _check_rois(rois, levels[0].shape[0])
    if _extension.has_kernel("multilevel_roi_align", levels[0].device):
        return torch.ops.sfpn.multilevel_roi_align(
            levels,
            rois,
            scales,
            pooled_h,
            pooled_w,
            sampling_ratio,
            bool(aligned),
            canonical_scale,
            int(canonical_level),
            _deterministic(deterministic),
        )
    return multilevel_roi_align_reference(
        levels, rois, (pooled_h, pooled_w), scales, sampling_ratio, aligned, canonical_scale, canonical_level
    )


# ----------------------------------------------------------------------------------------------
# Modules


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision's ``RoIAlign``)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = _output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois) -> torch.Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """torchvision's scale of a feature map: ``2**round(log2(feature_h / image_h))``."""
    approx = float(feature_size[0]) / float(image_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


class MultiLevelRoIAlign(nn.Module):
    """Drop-in for ``torchvision.ops.MultiScaleRoIAlign`` running :func:`multilevel_roi_align`.

    ``forward(x, boxes, image_shapes)``: ``x`` a dict of feature maps (those named in
    ``featmap_names`` are pooled, in ``x``'s order, finest first), ``boxes`` a list of ``(K_i, 4)``
    per image in image coordinates, ``image_shapes`` the ``(h, w)`` of each image before the
    backbone. Scales are inferred as torchvision does (``2**round(log2(feature / largest
    image))``); unlike torchvision they are recomputed at every call rather than frozen at the
    first. ``aligned`` (not in torchvision, default False as there) selects the half-pixel shift.
    """

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
        self.output_size = _output_size(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned

    def forward(
        self, x: Mapping[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        levels = [v for k, v in x.items() if k in self.featmap_names]
        if not levels:
            raise ValueError(f"x holds none of the feature maps {self.featmap_names}")
        if not image_shapes:
            raise ValueError("image_shapes must not be empty")
        largest = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [infer_scale(level.shape[-2:], largest) for level in levels]
        return multilevel_roi_align(
            levels,
            boxes,
            self.output_size,
            scales,
            self.sampling_ratio,
            self.aligned,
            self.canonical_scale,
            self.canonical_level,
        )

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


# ----------------------------------------------------------------------------------------------
# Registration (fake tensors for torch.compile and opcheck, autograd)


def _register() -> None:
    @torch.library.register_fake("sfpn::roi_align")
    def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, deterministic=False):
        return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))

    @torch.library.register_fake("sfpn::roi_align_backward")
    def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, *_):
        return grad.new_empty((batch_size, channels, height, width))

    @torch.library.register_fake("sfpn::multilevel_roi_align")
    def _(levels, rois, scales, pooled_height, pooled_width, *_):
        return levels[0].new_empty((rois.shape[0], levels[0].shape[1], pooled_height, pooled_width))

    @torch.library.register_fake("sfpn::multilevel_roi_align_backward")
    def _(grad, rois, scales, batch_size, channels, heights, widths, *_):
        return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]

    def setup_roi_align(ctx, inputs, output):
        input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, *rest = inputs
        ctx.save_for_backward(rois)
        ctx.input_shape = input.shape
        ctx.arguments = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, bool(rest and rest[0]))

    def backward_roi_align(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return (None,) * 8
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, deterministic = ctx.arguments
        batch_size, channels, height, width = ctx.input_shape
        grad_input = torch.ops.sfpn.roi_align_backward(
            grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
            sampling_ratio, aligned, deterministic or torch.are_deterministic_algorithms_enabled(),
        )
        return (grad_input,) + (None,) * 7

    torch.library.register_autograd("sfpn::roi_align", backward_roi_align, setup_context=setup_roi_align)

    def setup_multilevel(ctx, inputs, output):
        levels, rois, scales, _, _, sampling_ratio, aligned, canonical_scale, canonical_level, *rest = inputs
        ctx.save_for_backward(rois)
        ctx.level_shape = (levels[0].shape[0], levels[0].shape[1], [l.shape[2] for l in levels], [l.shape[3] for l in levels])
        ctx.arguments = (scales, sampling_ratio, aligned, canonical_scale, canonical_level, bool(rest and rest[0]))

    def backward_multilevel(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return (None,) * 10
        (rois,) = ctx.saved_tensors
        batch_size, channels, heights, widths = ctx.level_shape
        scales, sampling_ratio, aligned, canonical_scale, canonical_level, deterministic = ctx.arguments
        grad_levels = torch.ops.sfpn.multilevel_roi_align_backward(
            grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned,
            canonical_scale, canonical_level, deterministic or torch.are_deterministic_algorithms_enabled(),
        )
        return (list(grad_levels),) + (None,) * 9

    torch.library.register_autograd("sfpn::multilevel_roi_align", backward_multilevel, setup_context=setup_multilevel)


if _extension.STATUS.loaded:
    _register()
