"""Panoptic segmentation from a detector's instances and its semantic class map.

The merge follows Panoptic FPN's heuristic (Kirillov et al. 2019, section 4; detectron2's
``combine_semantic_and_instance_outputs``): instances are painted from the highest score down,
each onto the pixels no earlier instance took, and dropped when too much of it is already taken;
the stuff classes of the semantic map then fill what is left, each class one segment, dropped
under a minimum area. Pixels left over (thing classes of the semantic map that no instance
claimed, background) are void: segment id 0.

Label spaces. Detections carry the detector's labels (1..num_classes); the semantic map carries
semantic class ids, which cover the thing classes and the stuff classes. ``label_to_semantic``
says which semantic class each detector label is, and every segment's ``category_id`` is a
semantic class id, for things and stuff alike, so one table maps a panoptic result to a dataset's
categories.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch._higher_order_ops.scan import scan

from .boxes import box_pixel_masks


def panoptic_merge(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    semantic: torch.Tensor,
    *,
    label_to_semantic: Mapping[int, int],
    stuff_classes: Collection[int],
    score_threshold: float,
    overlap_threshold: float,
    stuff_min_area: int,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """One image's panoptic segmentation.

    Args:
        boxes: ``(D, 4)`` xyxy detections, in the pixels of ``semantic``.
        scores: ``(D,)`` detection scores.
        labels: ``(D,)`` detector labels (thing classes, 1..num_classes).
        semantic: ``(H, W)`` integer semantic class map (the detector's ``semantic`` output).
        label_to_semantic: detector label -> the semantic class id of that thing class; every
            label in ``labels`` must have an entry (the identity ``{k: k}`` where the semantic map
            numbers the thing classes as the detector does).
        stuff_classes: the semantic class ids that are stuff; none of them may be a thing class.
        score_threshold: detections scoring below it are left out.
        overlap_threshold: an instance is dropped when more than this fraction of its mask is
            already taken by higher-scoring instances, in ``[0, 1]``.
        stuff_min_area: a stuff segment with fewer pixels (once the instances are painted) is
            dropped, and its pixels stay void.
        masks: ``(D, H, W)`` bool instance masks (a Mask R-CNN's), or None for a box-only
            detector, whose instance mask is then the pixels inside the box (pixel centres, as
            :func:`~sfpn.modeling.boxes.box_pixel_masks`) where ``semantic`` is the detection's
            own class.

    Returns:
        ``(segment_ids, segments)``: ``segment_ids (H, W)`` int32 on ``semantic``'s device, 0 =
        void, ``k`` = the segment whose ``id`` is ``k``; ``segments`` a list of dicts ``{id,
        category_id, isthing, score, area}`` in id order: the instances first, by descending
        score (``score`` the detection's), then the stuff segments by class id (``score``
        None: the class map carries no confidence). ``category_id`` is a semantic class id,
        ``area`` the segment's pixel count in ``segment_ids``.
    """
    _check_merge_inputs(boxes, scores, labels, semantic, masks, label_to_semantic, stuff_classes,
                        overlap_threshold)
    classes = torch.tensor([label_to_semantic[int(label)] for label in labels.tolist()], dtype=torch.int64)
    stuff = sorted(stuff_classes)
    order, instance_masks = instance_masks_by_score(boxes, scores, classes, semantic, score_threshold, masks)
    segment_ids, instance_ids, stuff_ids = paint_segments(instance_masks, semantic, stuff, overlap_threshold, stuff_min_area)
    areas = torch.bincount(segment_ids.flatten().long(), minlength=int(segment_ids.max()) + 1).tolist()
    segments = [{"id": segment_id, "category_id": int(classes[d]), "isthing": True, "score": float(scores[d]),
                 "area": areas[segment_id]} for d, segment_id in zip(order.tolist(), instance_ids.tolist()) if segment_id]
    segments += [{"id": segment_id, "category_id": category, "isthing": False, "score": None, "area": areas[segment_id]}
                 for category, segment_id in zip(stuff, stuff_ids.tolist()) if segment_id]
    return segment_ids, segments


def instance_masks_by_score(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    semantic: torch.Tensor,
    score_threshold: float,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The instances in the merge's painting order: ``(order (D,) int64, masks (D, H, W) bool)``,
    by descending score (stable), the masks of detections under ``score_threshold`` all False.

    ``classes (D,)`` are the detections' semantic class ids; ``masks``, ``boxes`` and
    ``semantic`` as :func:`panoptic_merge` takes them (without masks, the pixels inside the box
    where ``semantic`` is the detection's class)."""
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    if masks is not None:
        ordered = masks[order].to(device=semantic.device, dtype=torch.bool)
    else:
        ordered = box_pixel_masks(boxes[order].to(semantic.device), tuple(semantic.shape)) & (
            semantic[None] == classes[order].to(semantic.device, semantic.dtype)[:, None, None])
    above = (scores[order] >= score_threshold).to(semantic.device)
    return order, ordered & above[:, None, None]


def paint_segments(
    instance_masks: torch.Tensor,
    semantic: torch.Tensor,
    stuff_classes: Sequence[int],
    overlap_threshold: float,
    stuff_min_area: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The merge on tensors. Traced (``torch.export``, ``torch.compile``) it has no host sync and no
    Python loop over the data: the instances go through a ``scan``. Run eagerly, the same step
    goes over the instances with pixels in a loop, as ``scan`` would compile itself at every call
    (18 ms an image in the default run's evaluation, as long as its detector takes).

    Args:
        instance_masks: ``(D, H, W)`` bool, in painting order (:func:`instance_masks_by_score`).
        semantic: ``(H, W)`` integer semantic class map.
        stuff_classes: the stuff class ids, ascending (a Python sequence: fixed in a trace).
        overlap_threshold, stuff_min_area: as :func:`panoptic_merge`.

    Returns:
        ``segment_ids (H, W)`` int32 (0 void), ``instance_ids (D,)`` int32, the segment id of
        each instance (0: dropped), ``stuff_ids (S,)`` int32, the segment id of each stuff class
        (0: absent or under the minimum area). Ids count from 1: the instances kept, in order,
        then the stuff classes kept, in order.
    """
    height, width = semantic.shape
    device = semantic.device
    # A leading empty mask (never kept): the scan then never runs over zero instances.
    masks = torch.cat([torch.zeros((1, height, width), dtype=torch.bool, device=device), instance_masks])

    def paint(carry: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor):
        segment_ids, next_id = carry
        area = mask.sum()
        free = mask & (segment_ids == 0)
        free_area = free.sum()
        # Panoptic FPN's rule: an instance mostly hidden behind better ones is a duplicate. The
        # share in float64, as Python's division computes it.
        hidden = (area - free_area).double() / area.clamp(min=1).double()
        keep = (free_area > 0) & (hidden <= overlap_threshold)
        segment_id = torch.where(keep, next_id, torch.zeros_like(next_id))
        return (torch.where(free & keep, next_id, segment_ids), next_id + keep.int()), segment_id

    start = (torch.zeros((height, width), dtype=torch.int32, device=device), torch.ones((), dtype=torch.int32, device=device))
    if torch.compiler.is_compiling():
        (segment_ids, next_id), instance_ids = scan(paint, start, masks)
    else:
        # An empty mask (a detection under the score threshold) is never kept and changes nothing.
        carry, instance_ids = start, torch.zeros(len(masks), dtype=torch.int32, device=device)
        for index in masks.flatten(1).any(1).nonzero().flatten().tolist():
            carry, instance_ids[index] = paint(carry, masks[index])
        segment_ids, next_id = carry

    # Stuff: the pixels of each stuff class that no instance took make one segment, if large enough.
    free = segment_ids == 0
    slots = max(stuff_classes, default=-1) + 1  # semantic ids past the last stuff class share slot `slots`
    slot = torch.where(free, semantic.long().clamp(0, slots), slots).flatten()
    free_area = torch.zeros(slots + 1, dtype=torch.int64, device=device).scatter_add_(0, slot, torch.ones_like(slot))
    stuff = torch.tensor(list(stuff_classes), dtype=torch.int64, device=device)
    areas = free_area[stuff]
    keep = (areas > 0) & (areas >= stuff_min_area)
    stuff_ids = torch.where(keep, next_id + torch.cumsum(keep.int(), 0, dtype=torch.int32) - 1, 0).int()
    id_of_slot = torch.zeros(slots + 1, dtype=torch.int32, device=device).index_put_((stuff,), stuff_ids)
    segment_ids = torch.where(free, id_of_slot[semantic.long().clamp(0, slots)], segment_ids)
    return segment_ids, instance_ids[1:], stuff_ids


def _check_merge_inputs(boxes, scores, labels, semantic, masks, label_to_semantic, stuff_classes,
                        overlap_threshold) -> None:
    if semantic.dim() != 2 or semantic.dtype.is_floating_point or semantic.dtype == torch.bool:
        raise ValueError(f"semantic: expected an (H, W) integer class map, got {semantic.dtype} of shape {tuple(semantic.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected a (D, 4) tensor, got shape {tuple(boxes.shape)}")
    count = boxes.shape[0]
    for name, value in (("scores", scores), ("labels", labels)):
        if tuple(value.shape) != (count,):
            raise ValueError(f"{name}: expected shape ({count},) to match boxes, got {tuple(value.shape)}")
    if masks is not None and tuple(masks.shape) != (count, *semantic.shape):
        raise ValueError(f"masks: expected shape ({count}, {semantic.shape[0]}, {semantic.shape[1]}) to match boxes "
                         f"and semantic, got {tuple(masks.shape)}")
    unmapped = sorted(set(labels.tolist()) - set(label_to_semantic))
    if unmapped:
        raise ValueError(f"label_to_semantic: no semantic class for the detector labels {unmapped}")
    shared = sorted(set(stuff_classes) & set(label_to_semantic.values()))
    if shared:
        raise ValueError(f"stuff_classes: {shared} are thing classes too (values of label_to_semantic)")
    if not 0.0 <= overlap_threshold <= 1.0:
        raise ValueError(f"overlap_threshold must be in [0, 1], got {overlap_threshold}")
