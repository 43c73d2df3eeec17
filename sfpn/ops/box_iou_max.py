"""``box_iou_max``: the pairwise IoU of two box sets reduced both ways, as an anchor matcher reads it.

Schema, reference fallback and fake below (:mod:`sfpn.ops._library`); kernel:
``csrc/cpu/box_iou_max.cpp``, which never forms the ``(G, P)`` IoU matrix. Eagerly the matrix and
its reductions are ~20 passes over G x P values: for the default run's RPN (5 boxes against 20k
anchors per image) they were the larger part of its loss's time. CUDA runs the reference. Not
differentiable: matching is decided under ``torch.no_grad``.
"""
from __future__ import annotations

import torch

from . import _library
from ._validate import OpValueError, check_same, check_tensor

BOX_DTYPES = (torch.float32, torch.float64)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(K, 4)`` xyxy -> ``(K,)``; degenerate boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a (M, 4)`` and ``b (N, 4)`` xyxy -> ``(M, N)``; 0 where the union is empty
    (then the intersection is empty too, and the clamped division gives 0)."""
    # One (M, N) map per step, updated in place: the (M, N, 2) corner maps took twice the time.
    width = torch.minimum(a[:, None, 2], b[None, :, 2]).sub_(torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    height = torch.minimum(a[:, None, 3], b[None, :, 3]).sub_(torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    inter = width.mul_(height)
    union = (box_area(a)[:, None] + box_area(b)[None, :]).sub_(inter).clamp_(min=1e-12)
    return inter.div_(union)


def box_iou_max_reference(
    boxes1: torch.Tensor, boxes2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-PyTorch :func:`box_iou_max`: :func:`box_iou` and its reductions."""
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        zeros = boxes2.new_zeros(boxes2.shape[0])
        return zeros, zeros.long(), zeros.bool()
    iou = box_iou(boxes1, boxes2)
    best, index = iou.max(dim=0)
    box1_best = iou.max(dim=1, keepdim=True).values
    return best, index, ((iou == box1_best) & (box1_best > 0)).any(dim=0)


def box_iou_max(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each box of ``boxes2``, its largest IoU with a box of ``boxes1`` and which; and whether it
    is (or ties with) the best match of some box of ``boxes1``, the IoU matrix never formed.

    Args:
        boxes1: ``(G, 4)`` xyxy, e.g. the ground truth, float32 or float64, finite.
        boxes2: ``(P, 4)`` xyxy, e.g. anchors or proposals, boxes1's dtype and device, finite.

    Returns:
        ``(best_iou (P,), best_index (P,) int64, is_best (P,) bool)``: with ``iou = box_iou(boxes1,
        boxes2)``, ``iou.max(dim=0)`` (the first of equal maxima) and ``is_best[p]`` true where
        ``iou[g, p]`` equals ``iou[g].max() > 0`` for some ``g``. With no boxes1, IoU 0, index 0
        and no best. The IoUs are the same bits as :func:`box_iou`'s. Not differentiable.
    """
    check_tensor("boxes1", boxes1, ndim=2, dtypes=BOX_DTYPES)
    check_tensor("boxes2", boxes2, ndim=2, dtypes=BOX_DTYPES)
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.shape[1] != 4:
            raise OpValueError(f"{name} must be (K, 4) xyxy boxes, got shape {tuple(boxes.shape)}")
    check_same("boxes2", boxes2, "boxes1", boxes1)
    with torch.no_grad():
        return tuple(torch.ops.sfpn.box_iou_max(boxes1, boxes2))


# --------------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake (no autograd: matching is not differentiated).

_library.define("box_iou_max(Tensor boxes1, Tensor boxes2) -> (Tensor, Tensor, Tensor)", box_iou_max_reference)


@torch.library.register_fake("sfpn::box_iou_max")
def _(boxes1, boxes2):
    size = (boxes2.shape[0],)
    return boxes2.new_empty(size), boxes2.new_empty(size, dtype=torch.int64), boxes2.new_empty(size, dtype=torch.bool)


_library.register(_library.Op("box_iou_max", _library.COMPILED_CPU))
