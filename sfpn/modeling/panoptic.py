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

from collections.abc import Collection, Mapping

import torch

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
    size = tuple(semantic.shape)
    segment_ids = torch.zeros(size, dtype=torch.int32, device=semantic.device)
    segments: list[dict] = []

    order = torch.argsort(scores.detach(), descending=True, stable=True)
    kept = order[scores[order] >= score_threshold].tolist()
    if masks is not None:
        kept_masks = masks[kept].to(device=semantic.device, dtype=torch.bool)
    else:
        classes = torch.tensor([label_to_semantic[int(labels[d])] for d in kept], dtype=semantic.dtype,
                               device=semantic.device)
        kept_masks = box_pixel_masks(boxes[kept].to(semantic.device), size) & (semantic[None] == classes[:, None, None])
    for d, mask in zip(kept, kept_masks):
        area = int(mask.sum())
        if area == 0:
            continue
        free = mask & (segment_ids == 0)
        free_area = int(free.sum())
        # Panoptic FPN's rule: an instance mostly hidden behind better ones is a duplicate.
        if free_area == 0 or (area - free_area) / area > overlap_threshold:
            continue
        _add_segment(segment_ids, segments, free, free_area, label_to_semantic[int(labels[d])],
                     isthing=True, score=float(scores[d]))

    for category in sorted(set(torch.unique(semantic).tolist()) & set(stuff_classes)):
        free = (semantic == category) & (segment_ids == 0)
        free_area = int(free.sum())
        if free_area == 0 or free_area < stuff_min_area:
            continue
        _add_segment(segment_ids, segments, free, free_area, category, isthing=False, score=None)
    return segment_ids, segments


def _add_segment(segment_ids: torch.Tensor, segments: list[dict], pixels: torch.Tensor, area: int,
                 category_id: int, isthing: bool, score: float | None) -> None:
    """Paints the next segment id over ``pixels`` (``(H, W)`` bool) and lists the segment."""
    segment_id = len(segments) + 1
    segment_ids[pixels] = segment_id
    segments.append({"id": segment_id, "category_id": int(category_id), "isthing": isthing, "score": score, "area": area})


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
