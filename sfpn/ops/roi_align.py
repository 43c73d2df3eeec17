"""``roi_align``: RoIAlign (Mask R-CNN) with torchvision's signature and results.

Schema and reference fallback below (:mod:`sfpn.ops._library`); kernels:
``csrc/cpu/roi_align.cpp``, ``csrc/cuda/roi_align.cu``; the references below are the
definitions they are tested against (and the multi-level op's, ``multilevel_roi_align.py``).

Precision: every backend computes fp16/bf16 maps in float32 (the coordinates, the weights and
the sums) and rounds the result once, so under ``torch.autocast`` the op runs in the input's
dtype as it is: the result is torchvision's (which casts the input to float32 and the result
back) without a float32 copy of the feature maps. Layout: the CPU kernel reads a channels_last
input as it is (NHWC, no copy); the result is ``(K, C, PH, PW)`` contiguous for any input, as
the box head's fully connected layers read it. On the CPU the input's gradient has the input's
layout: the kernel writes a channels_last input's NHWC itself (the backward op's
``channels_last``), as autograd would otherwise add it to the other consumers' channels_last
gradients in a mixed-layout sum that is 4x slower and hands NCHW gradients on to every
convolution behind it. On CUDA, whose kernels take NCHW (``_library.output_memory_format``), it
is planar.

Backward determinism: the CPU backward is always deterministic (each thread owns whole gradient
planes, or blocks of 32 channels of an NHWC map, whatever the thread count). On CUDA the default
backward adds with float atomics; ``deterministic=True`` or
``torch.use_deterministic_algorithms(True)`` selects a sort-by-pixel backward without atomics.

TorchScript: ``roi_align`` and ``RoIAlign`` script with torchvision's signatures (so a scripted
torchvision model may call them). A scripted call skips the Python argument checks below, which
TorchScript cannot compile: the kernels' own checks (``csrc/roi_align.h``) raise instead, as
``RuntimeError`` (torchvision's scripted ``roi_align`` checks little more).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _library
from ._validate import FLOATING, OpTypeError, OpValueError, RoIBoxesError, check_tensor

# ----------------------------------------------------------------------------------------------
# Arguments (shared with multilevel_roi_align). The checks run in eager calls only.


def output_size_pair(output_size) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise OpValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def check_boxes(boxes, input: torch.Tensor) -> None:
    """torchvision's two box formats: a ``(K, 5)`` tensor or a list of ``(K_i, 4)`` tensors, one
    per image. A wrong shape is a :class:`RoIBoxesError` (torchvision asserts there)."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise RoIBoxesError(f"boxes as a tensor must be (K, 5) [batch_index, x1, y1, x2, y2], got {tuple(boxes.shape)}")
        check_tensor("boxes", boxes, dtypes=FLOATING, device=input.device)
        return
    if not isinstance(boxes, (list, tuple)):
        raise OpTypeError(f"boxes must be a (K, 5) tensor or a list of (K_i, 4) tensors, got {type(boxes).__name__}")
    if len(boxes) > input.shape[0]:
        raise OpValueError(f"boxes has {len(boxes)} entries but the input holds {input.shape[0]} images")
    for i, b in enumerate(boxes):
        name = f"boxes[{i}]"
        check_tensor(name, b, dtypes=FLOATING, device=input.device)
        if b.dim() != 2 or b.shape[1] != 4:
            raise RoIBoxesError(f"{name} must be (K_i, 4) [x1, y1, x2, y2], got {tuple(b.shape)}")


def boxes_to_rois(boxes: Union[torch.Tensor, list[torch.Tensor]], input: torch.Tensor) -> torch.Tensor:
    """A ``(K, 5)`` tensor ``[batch_index, x1, y1, x2, y2]`` from either box format (checked by
    :func:`check_boxes`), in the first list entry's dtype."""
    if isinstance(boxes, torch.Tensor):
        return boxes
    if len(boxes) == 0:
        return input.new_zeros((0, 5))
    dtype = boxes[0].dtype
    rois = []
    for i, b in enumerate(boxes):
        rois.append(torch.cat([b.new_full((b.shape[0], 1), i, dtype=dtype), b.to(dtype)], 1))
    return torch.cat(rois)


def check_rois(rois: torch.Tensor, batch_size: int) -> None:
    """Finite coordinates and batch indices in ``[0, batch_size)``, without a host sync.

    The checks run on the device (``torch._assert_async``), so they trace into compiled graphs.
    On the CPU a failed check raises here, as :class:`OpValueError`; on CUDA it is a device-side
    assert at the next synchronisation (the kernels check the same conditions).
    """
    index = rois[:, 0]
    checks = (
        (torch.isfinite(rois).all(), "boxes must contain only finite values"),
        (((index >= 0) & (index < batch_size)).all(), f"boxes batch indices must lie in [0, {batch_size}) (the input's batch size)"),
    )
    for condition, message in checks:
        try:
            torch._assert_async(condition, message)
        except RuntimeError as error:
            raise OpValueError(message) from error


def check_input(name: str, input: torch.Tensor) -> None:
    check_tensor(name, input, ndim=4)
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise OpValueError(f"{name} must have a non-empty spatial size, got {tuple(input.shape)}")


def check_sampling_ratio(sampling_ratio) -> None:
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise OpTypeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__}")


def check_scale(name: str, scale) -> float:
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise OpValueError(f"{name} must be a positive finite number, got {scale}")
    return scale


def deterministic_requested(deterministic: Optional[bool]) -> bool:
    """The ops' ``deterministic`` argument from the public functions' (None: not asked for). The
    global ``torch.use_deterministic_algorithms`` switch is read when the backward runs
    (:func:`deterministic_backward`), which also keeps it out of scripted code (TorchScript cannot
    read it)."""
    return deterministic is not None and deterministic


def deterministic_backward(deterministic: bool) -> bool:
    return deterministic or torch.are_deterministic_algorithms_enabled()


def _check_single_level(input: torch.Tensor, boxes, output_size) -> tuple[int, int]:
    """Checks the tensors and output size of a single-level call (op or reference); returns the
    ``(PH, PW)`` output size."""
    output_size = output_size_pair(output_size)
    check_input("input", input)
    check_boxes(boxes, input)
    return output_size


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


def roi_align_reference_rois(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
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
    return in_order(pieces, order).to(input.dtype)


def in_order(pieces: list[torch.Tensor], order: list[torch.Tensor]) -> torch.Tensor:
    """Concatenates the ``pieces`` (rows ``order[i]`` of the result) back into RoI order."""
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]


def roi_align_backward_reference_rois(grad, rois, spatial_scale, output_size, input_shape, sampling_ratio, aligned):
    """The adjoint of :func:`roi_align_reference_rois` (it is linear in the input): ``grad``
    ``(K, C, PH, PW)`` -> ``(N, C, H, W)``."""
    compute = torch.float64 if grad.dtype == torch.float64 else torch.float32
    g = grad.to(compute)
    rois = rois.detach().to(compute)
    batch_size, channels, height, width = input_shape
    pooled_h, pooled_w = output_size
    start_h, start_w, bin_h, bin_w, grid_h, grid_w = _roi_grid(rois, spatial_scale, output_size, sampling_ratio, aligned)
    wy = _axis_weights(start_h, bin_h, grid_h, pooled_h, height)  # (K, PH, H)
    wx = _axis_weights(start_w, bin_w, grid_w, pooled_w, width)  # (K, PW, W)
    grad_input = g.new_zeros((batch_size, channels, height, width))
    batch_index = rois[:, 0].long()
    chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // max(1, channels * height * width))
    for part in torch.arange(rois.shape[0], device=rois.device).split(chunk):
        # (k, 1, H, PH) @ (k, C, PH, PW) @ (k, 1, PW, W) -> (k, C, H, W)
        spread = wy[part].transpose(1, 2).unsqueeze(1) @ g[part] @ wx[part].unsqueeze(1)
        grad_input.index_add_(0, batch_index[part], spread)
    return grad_input.to(grad.dtype)


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
    output_size = _check_single_level(input, boxes, output_size)
    return roi_align_reference_rois(input, boxes_to_rois(boxes, input), output_size, float(spatial_scale), sampling_ratio, aligned)


# ----------------------------------------------------------------------------------------------
# Public op


def roi_align(
    input: torch.Tensor,
    boxes: Union[torch.Tensor, list[torch.Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    deterministic: Optional[bool] = None,
) -> torch.Tensor:
    """RoIAlign with torchvision's signature and results (scriptable, see the module docstring).

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
        ``(K, C, PH, PW)``, differentiable (twice) w.r.t. ``input``.

    Raises (eager calls; :mod:`sfpn.ops._validate` has the hierarchy):
        OpValueError: non-finite box coordinates, batch indices outside ``[0, N)`` (on CUDA: a
            device-side assert, see :func:`check_rois`), bad shapes; boxes of the wrong shape
            raise its subclass :class:`RoIBoxesError`, an ``AssertionError`` too.
        OpTypeError: non-tensor or non-floating arguments.
    """
    if not torch.jit.is_scripting():
        _check_single_level(input, boxes, output_size)
        check_scale("spatial_scale", spatial_scale)
        check_sampling_ratio(sampling_ratio)
    size = _pair(output_size)
    rois = boxes_to_rois(boxes, input)
    if not torch.jit.is_scripting():
        check_rois(rois, input.shape[0])
    return torch.ops.sfpn.roi_align(
        input, rois, float(spatial_scale), size[0], size[1], sampling_ratio, bool(aligned),
        deterministic_requested(deterministic),
    )


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision's ``RoIAlign``)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size_pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: Union[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


# ----------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake, autograd (twice differentiable: linear in
# the input, so the backward of the backward is roi_align again).


def _roi_align_op_reference(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, deterministic=False):
    return roi_align_reference_rois(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned)


def _roi_align_backward_op_reference(grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
                                     sampling_ratio, aligned, deterministic, channels_last=False):
    return roi_align_backward_reference_rois(
        grad, rois, spatial_scale, (pooled_h, pooled_w), (batch_size, channels, height, width), sampling_ratio, aligned
    ).contiguous(memory_format=gradient_layout(channels_last))


def gradient_layout(channels_last: bool) -> torch.memory_format:
    """The memory format that the backward ops' ``channels_last`` argument asks for."""
    return torch.channels_last if channels_last else torch.contiguous_format


# rois are (K, 5) [batch_index, x1, y1, x2, y2]. The forward ignores `deterministic`; it is there
# so that autograd can hand it to the backward.
_library.define(
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned, bool deterministic=False) -> Tensor",
    _roi_align_op_reference,
)
_library.define(
    "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned, "
    "bool deterministic, bool channels_last=False) -> Tensor",
    _roi_align_backward_op_reference,
)


@torch.library.register_fake("sfpn::roi_align")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, deterministic=False):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("sfpn::roi_align_backward")
def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio,
      aligned, deterministic, channels_last=False):
    return torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=grad.device,
                       memory_format=gradient_layout(channels_last))


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, *rest = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape
    ctx.channels_last = _library.output_memory_format(input) == torch.channels_last
    ctx.arguments = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, bool(rest and rest[0]))


def _backward(ctx, grad):
    # One gradient per input the op received: the dispatcher leaves out a trailing
    # deterministic=False (setup_context sees it filled in), and torch before 2.13 rejects a
    # backward that returns more entries than that.
    input_count = len(ctx.needs_input_grad)
    if not ctx.needs_input_grad[0]:
        return (None,) * input_count
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, deterministic = ctx.arguments
    batch_size, channels, height, width = ctx.input_shape
    grad_input = torch.ops.sfpn.roi_align_backward(
        grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
        sampling_ratio, aligned, deterministic_backward(deterministic), ctx.channels_last,
    )
    return (grad_input,) + (None,) * (input_count - 1)


def _setup_backward_context(ctx, inputs, output):
    _, rois, spatial_scale, pooled_h, pooled_w, _, _, _, _, sampling_ratio, aligned, deterministic, *_ = inputs
    ctx.save_for_backward(rois)
    ctx.arguments = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, deterministic)


def _backward_backward(ctx, grad_grad_input):
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.sfpn.roi_align(grad_grad_input, rois, *ctx.arguments)
    return (grad_grad,) + (None,) * (len(ctx.needs_input_grad) - 1)


torch.library.register_autograd("sfpn::roi_align", _backward, setup_context=_setup_context)
torch.library.register_autograd("sfpn::roi_align_backward", _backward_backward, setup_context=_setup_backward_context)
_library.register(_library.Op("roi_align", _library.COMPILED, backward=("roi_align_backward",)))
