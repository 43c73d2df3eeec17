"""``nms``, ``batched_nms`` and ``batched_nms_padded``: non-maximum suppression with
torchvision's signatures, per class, without host syncs on CUDA.

``nms(boxes, scores, iou_threshold)`` and ``batched_nms(boxes, scores, idxs, iou_threshold)``
are drop-in replacements for ``torchvision.ops.nms`` / ``batched_nms``;
``batched_nms_padded(..., max_out)`` is the fixed-size variant for CUDA graphs and compiled code.

Semantics shared by every backend (the compiled kernels and the reference below):

* Boxes are ``(x1, y1, x2, y2)``; a box suppresses a later box of its class when their IoU is
  strictly greater than ``iou_threshold``. The IoU is computed in float32 for float16, bfloat16
  and float32 boxes and in float64 for float64 boxes, as
  ``inter / ((area_a + area_b) - inter)``, the same expression as torchvision's CPU kernel, and
  compared as torchvision's CPU kernel compares it: as a float64 with the float64 threshold (a
  float32 IoU of ``float32(0.3)``, 0.30000001, is above 0.3). So float32 and float64 results
  equal torchvision's CPU results; float16 and bfloat16 boxes give the results of their float32
  copies (torchvision's CPU kernel takes neither; for its CUDA kernel see the README).
* Order: boxes are visited, and kept indices returned, by decreasing score; equal scores are
  ordered by increasing index (a stable sort); NaN scores rank above every number
  (``torch.sort``'s descending order).
* Bad values are a documented behaviour, not an error, because checking them would cost a
  device-to-host sync on CUDA: a box with a NaN or infinite coordinate neither suppresses nor is
  suppressed (its IoU with any box is NaN or 0); a box with ``x2 < x1`` or ``y2 < y1`` has no
  intersection with anything, so it is kept too (both as in torchvision). This holds for
  ``iou_threshold >= 0``; with a negative threshold a box suppresses every later box of its
  class whose IoU with it is a number (disjoint ones included).
* Shape, dtype and device errors raise ``OpValueError`` / ``OpTypeError`` naming the argument:
  ``ValueError`` / ``TypeError`` and also ``RuntimeError``, which torchvision raises
  (:mod:`sfpn.ops._validate`).

CUDA kernel: the boxes are sorted by score and then by class on the device, the overlap bitmask
is computed in 64 x 64 tiles only where a tile's rows and columns share a class, and the greedy
scan runs on the GPU (one thread block per class). Its mask scratch is sized for the worst case
of a single class, about ``N**2 / 16`` bytes (torchvision's is ``N**2 / 8``), because class sizes
are only known on the device. That scratch is the practical limit on boxes per call (about
400k boxes take 10 GB).

Schemas and reference fallbacks below (:mod:`sfpn.ops._library`); kernels: ``csrc/cpu/nms.cpp``
and ``csrc/cuda/nms.cu`` (IoU shared in ``csrc/nms_iou.h``). Under ``torch.autocast`` the boxes
and scores are cast to float32, as torchvision does, so there they may differ in dtype (bfloat16
scores of a head under autocast with float32 boxes decoded in float32).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

from . import _library
from ._validate import OpTypeError, OpValueError, check_same, check_tensor

INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Rows per step of the reference's blocked greedy scan: bounds its temporaries to
# _REFERENCE_BLOCK x (boxes left in the block's classes).
_REFERENCE_BLOCK = 256


def _check_threshold(iou_threshold) -> float:
    """A Python float from a real number (numpy scalars included) or a 0-dim real tensor, which
    torchvision accepts too (a CUDA tensor costs a host sync to read, there as here)."""
    is_scalar_tensor = (
        isinstance(iou_threshold, torch.Tensor) and iou_threshold.dim() == 0 and iou_threshold.dtype != torch.bool
        and not iou_threshold.is_complex()
    )
    if isinstance(iou_threshold, bool) or not (isinstance(iou_threshold, numbers.Real) or is_scalar_tensor):
        raise OpTypeError(f"iou_threshold must be a float or a 0-dim tensor, got {type(iou_threshold).__name__}")
    iou_threshold = float(iou_threshold)
    if math.isnan(iou_threshold):
        raise OpValueError("iou_threshold must be a number, got nan")
    return iou_threshold


def _check_nms(boxes, scores, idxs=None) -> None:
    check_tensor("boxes", boxes, ndim=2)
    if boxes.shape[1] != 4:
        raise OpValueError(f"boxes must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    check_tensor("scores", scores, ndim=1)
    # Under autocast both are cast to float32 before the kernel (below): their dtypes may differ.
    if not (torch.is_autocast_enabled(boxes.device.type) and scores.device == boxes.device):
        check_same("scores", scores, "boxes", boxes)
    if scores.shape[0] != boxes.shape[0]:
        raise OpValueError(f"scores must have shape (N,) = ({boxes.shape[0]},) like boxes, got {tuple(scores.shape)}")
    if idxs is not None:
        check_tensor("idxs", idxs, ndim=1, dtypes=INTEGER)
        if idxs.device != boxes.device:
            raise OpValueError(f"idxs must be on the same device as boxes ({boxes.device}), got {idxs.device}")
        if idxs.shape[0] != boxes.shape[0]:
            raise OpValueError(f"idxs must have shape (N,) = ({boxes.shape[0]},) like boxes, got {tuple(idxs.shape)}")


def _check_max_out(max_out) -> int:
    if isinstance(max_out, bool) or not isinstance(max_out, int):
        raise OpTypeError(f"max_out must be an int, got {type(max_out).__name__}")
    if max_out < 0:
        raise OpValueError(f"max_out must be >= 0, got {max_out}")
    return max_out


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------


def _overlaps(rows: torch.Tensor, cols: torch.Tensor, threshold: float) -> torch.Tensor:
    """``iou(rows[i], cols[j]) > threshold`` for boxes ``(R, 4)`` x ``(C, 4)`` -> ``(R, C)`` bool.

    The IoU's expression and evaluation order match csrc/nms_iou.h, so the IoUs are identical; the
    comparison is in float64 against the unrounded threshold (the kernels make the same decision in
    the IoU's type with a threshold rounded down, ``threshold_in``).
    """
    rx1, ry1, rx2, ry2 = (c[:, None] for c in rows.unbind(1))
    cx1, cy1, cx2, cy2 = cols.unbind(1)
    area_rows = (rx2 - rx1) * (ry2 - ry1)
    area_cols = (cx2 - cx1) * (cy2 - cy1)
    width = (torch.minimum(rx2, cx2) - torch.maximum(rx1, cx1)).clamp_(min=0)
    height = (torch.minimum(ry2, cy2) - torch.maximum(ry1, cy1)).clamp_(min=0)
    inter = width * height
    return (inter / ((area_rows + area_cols) - inter)).double() > threshold


def _visit_order(scores: torch.Tensor, idxs: torch.Tensor | None) -> torch.Tensor:
    """Indices by class (ascending), then decreasing score, then increasing index."""
    order = torch.sort(scores, descending=True, stable=True).indices
    if idxs is not None:
        order = order[torch.sort(idxs[order], stable=True).indices]
    return order


def batched_nms_reference(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None, iou_threshold: float
) -> torch.Tensor:
    """Pure-PyTorch ``batched_nms`` (``idxs=None``: plain ``nms``): the kernels' definition.

    A blocked greedy scan over the boxes grouped by class: each block of ``_REFERENCE_BLOCK``
    boxes is resolved on its own (the greedy keep flags are the unique fixed point of "kept iff no
    earlier kept box of the block overlaps it", found by iterating), then its kept boxes suppress
    the later boxes of their classes in one IoU matrix. Cross-class pairs are only computed inside
    a block. It reads a few sizes back to the host, so it syncs on CUDA.
    """
    count = boxes.shape[0]
    if count == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    accumulate = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    order = _visit_order(scores, idxs)
    sorted_boxes = boxes[order].to(accumulate)
    classes = idxs[order].long() if idxs is not None else torch.zeros(count, dtype=torch.int64, device=boxes.device)
    class_ends = torch.searchsorted(classes, classes, right=True).tolist()  # end of each box's class run
    suppressed = torch.zeros(count, dtype=torch.bool, device=boxes.device)
    for start in range(0, count, _REFERENCE_BLOCK):
        stop = min(start + _REFERENCE_BLOCK, count)
        block, block_classes = sorted_boxes[start:stop], classes[start:stop]
        same_class = block_classes[:, None] == block_classes[None, :]
        earlier_overlaps = _overlaps(block, block, iou_threshold).triu_(1) & same_class
        alive = ~suppressed[start:stop]
        kept = alive
        while True:
            updated = alive & ~(earlier_overlaps & kept[:, None]).any(0)
            if torch.equal(updated, kept):
                break
            kept = updated
        suppressed[start:stop] = ~kept
        tail_end = class_ends[stop - 1]
        if tail_end > stop and bool(kept.any()):
            tail_classes = classes[stop:tail_end]
            hits = _overlaps(block[kept], sorted_boxes[stop:tail_end], iou_threshold)
            hits &= block_classes[kept][:, None] == tail_classes[None, :]
            suppressed[stop:tail_end] |= hits.any(0)
    keep = torch.zeros(count, dtype=torch.bool, device=boxes.device)
    keep[order[~suppressed]] = True
    score_order = torch.sort(scores, descending=True, stable=True).indices
    return score_order[keep[score_order]]


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Pure-PyTorch ``nms``: ``batched_nms_reference`` with every box in one class."""
    return batched_nms_reference(boxes, scores, None, iou_threshold)


def _pad(kept: torch.Tensor, max_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    count = min(kept.shape[0], max_out)
    indices = torch.full((max_out,), -1, dtype=torch.int64, device=kept.device)
    indices[:count] = kept[:count]
    return indices, torch.tensor(count, dtype=torch.int64, device=kept.device)


def batched_nms_padded_reference(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, max_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch ``batched_nms_padded``."""
    return _pad(batched_nms_reference(boxes, scores, idxs, iou_threshold), max_out)


# ---------------------------------------------------------------------------------------------
# Public ops
# ---------------------------------------------------------------------------------------------


# The public functions script with TorchScript (torchvision's detectors call batched_nms from
# scripted code). A scripted call skips the Python argument checks, which TorchScript cannot
# compile; the kernels' checks (csrc/nms.h) raise instead, as RuntimeError.


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``.

    Args:
        boxes: ``(N, 4)`` boxes ``(x1, y1, x2, y2)``, float16, bfloat16, float32 or float64.
        scores: ``(N,)`` scores, same dtype and device as ``boxes``.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is
            ``> iou_threshold``.

    Returns:
        int64 ``(K,)``: indices of the kept boxes by decreasing score (ties by increasing index).
        On CUDA the kernel runs without a host sync except one size read at the end (a
        variable-length result needs its length on the host); ``batched_nms_padded`` has none.
        See the module docstring for NaN, infinite and inverted boxes.
    """
    if not torch.jit.is_scripting():
        iou_threshold = _check_threshold(iou_threshold)
        _check_nms(boxes, scores)
    return torch.ops.sfpn.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression within each category, as ``torchvision.ops.batched_nms``.

    Boxes of different ``idxs`` never suppress each other. The kernels group boxes by category and
    only test pairs within a category (no coordinate-offset trick, so no precision lost for half
    types and no cross-category pairs computed).

    Args:
        boxes: ``(N, 4)`` boxes ``(x1, y1, x2, y2)``, float16, bfloat16, float32 or float64.
        scores: ``(N,)`` scores, same dtype and device as ``boxes``.
        idxs: ``(N,)`` integer category of each box (any values; int64 is used internally).
        iou_threshold: IoU above which a lower-scoring box of the same category is dropped.

    Returns:
        int64 ``(K,)``: kept indices by decreasing score (ties by increasing index). On CUDA the
        only host sync is the final read of ``K``; use ``batched_nms_padded`` to avoid it.
        Empty ``boxes`` give an empty result before the other arguments are looked at, as in
        torchvision.
    """
    if torch.jit.is_scripting():
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    else:
        # guard_or_false: under torch.export the box count may be data-dependent (unbacked); such
        # a count is not known to be 0, so the op below runs and returns its own empty result.
        if isinstance(boxes, torch.Tensor) and guard_or_false(boxes.numel() == 0):
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        iou_threshold = _check_threshold(iou_threshold)
        _check_nms(boxes, scores, idxs)
    return torch.ops.sfpn.batched_nms(boxes, scores, idxs.long(), iou_threshold)


def batched_nms_padded(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, max_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batched_nms`` with a fixed-size result: no host sync on CUDA (usable in CUDA graphs).

    Args:
        boxes, scores, idxs, iou_threshold: as ``batched_nms``.
        max_out: length of the result (>= 0).

    Returns:
        ``(indices, count)``: int64 ``(max_out,)`` holding the first ``count`` indices that
        ``batched_nms`` returns (the highest-scoring kept boxes) followed by ``-1`` padding, and
        ``count = min(K, max_out)`` as an int64 scalar tensor on the boxes' device.
    """
    if not torch.jit.is_scripting():
        iou_threshold = _check_threshold(iou_threshold)
        max_out = _check_max_out(max_out)
        _check_nms(boxes, scores, idxs)
    return torch.ops.sfpn.batched_nms_padded(boxes, scores, idxs.long(), iou_threshold, max_out)


# ---------------------------------------------------------------------------------------------
# The dispatcher ops: schemas, reference fallbacks, fakes, autocast
# ---------------------------------------------------------------------------------------------

_library.define("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor", nms_reference)
_library.define("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor",
                batched_nms_reference)
# Fixed-size variant for CUDA graphs and compiled code: (indices padded with -1, count).
_library.define(
    "batched_nms_padded(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, int max_out) -> (Tensor, Tensor)",
    batched_nms_padded_reference,
)


def _variable_length(boxes):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.register_fake("sfpn::nms")
def _(boxes, scores, iou_threshold):
    return _variable_length(boxes)


@torch.library.register_fake("sfpn::batched_nms")
def _(boxes, scores, idxs, iou_threshold):
    return _variable_length(boxes)


@torch.library.register_fake("sfpn::batched_nms_padded")
def _(boxes, scores, idxs, iou_threshold, max_out):
    return boxes.new_empty((max_out,), dtype=torch.int64), boxes.new_empty((), dtype=torch.int64)


for _name in ("nms", "batched_nms", "batched_nms_padded"):
    _library.autocast_to_float32(_name)
    _library.register(_library.Op(_name, _library.COMPILED))
