"""From a detector's output on a resized image to results on the original image.

A detector in eval mode returns, per image, detections in the coordinates of the image it saw
(resized by the test transforms): ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)``, and
``masks`` (Mask R-CNN) or ``semantic (H, W)`` (SFPN). Evaluation and the demo both want them on
the original image; they take them from here, and so does the panoptic result
(:func:`panoptic_at_original_size`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..semantic_labels import IGNORE_LABEL
from .boxes import box_pixel_masks
from .panoptic import panoptic_merge

if TYPE_CHECKING:
    from ..config import PanopticConfig
    from ..data.panoptic import PanopticLabelSpace


def instance_masks(output: dict, num_things: int | None = None) -> torch.Tensor | None:
    """``(D, H, W)`` bool instance masks at the model's input size, or None.

    A Mask R-CNN's own masks; for a box-only SFPN detector, the predicted semantic map's things
    inside each box (the semantic branch gives instance masks for free); None for a box-only
    detector without a semantic map. A pixel is inside box ``(x1, y1, x2, y2)`` when its centre
    is. ``num_things``: the semantic classes ``1..num_things`` are things (the detector's
    classes), those after them stuff; None: every class but background (0) is a thing.
    """
    if "masks" in output:
        masks = output["masks"]
        return masks[:, 0] if masks.dim() == 4 else masks
    if "semantic" not in output:
        return None
    semantic = output["semantic"]
    inside = box_pixel_masks(output["boxes"], tuple(semantic.shape))
    # Any thing rather than the box's own class: the box head already decided the class, and
    # the semantic map's class confusions would otherwise punch holes in the masks.
    thing = (semantic > 0) & (semantic != IGNORE_LABEL if num_things is None else semantic <= num_things)
    return inside & thing[None]


def detections_at_original_size(
    output: dict,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    with_masks: bool = True,
    with_semantic: bool = True,
    num_things: int | None = None,
) -> dict:
    """One image's detections on the CPU, mapped from the model's input size to the original.

    Args:
        output: the detector's eval output for the image (see the module docstring).
        input_size: ``(h, w)`` of the image the model saw.
        original_size: ``(H, W)`` of the original image.
        with_masks: add ``masks (D, H, W)`` bool (see :func:`instance_masks`) where the output
            gives them.
        with_semantic: add ``semantic (H, W)`` int64 where the output has a semantic map.
        num_things: the thing classes of the semantic map, for the masks (see :func:`instance_masks`).

    Returns:
        ``boxes (D, 4)`` float32 xyxy, scaled and clamped to the original image, ``scores
        (D,)``, ``labels (D,)``, and ``masks``/``semantic`` as asked and available; both are
        resized with nearest-neighbour sampling.
    """
    height, width = original_size
    in_h, in_w = input_size
    boxes = output["boxes"].detach().float().cpu() * torch.tensor([width / in_w, height / in_h] * 2)
    boxes[:, 0::2].clamp_(0, width)
    boxes[:, 1::2].clamp_(0, height)
    result = {"boxes": boxes, "scores": output["scores"].detach().cpu(), "labels": output["labels"].detach().cpu()}
    masks = instance_masks(output, num_things) if with_masks else None
    if masks is not None:
        result["masks"] = _resize_nearest(masks, original_size).bool()
    if with_semantic and "semantic" in output:
        result["semantic"] = _resize_nearest(output["semantic"][None], original_size)[0].long()
    return result


def panoptic_at_original_size(
    output: dict,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    label_space: PanopticLabelSpace,
    config: PanopticConfig,
) -> tuple[torch.Tensor, list[dict]]:
    """One image's panoptic segmentation on the original image (:func:`~sfpn.modeling.panoptic.panoptic_merge`).

    Args:
        output: the detector's eval output for the image; it must have ``semantic``.
        input_size, original_size: as :func:`detections_at_original_size`.
        label_space: the dataset's :class:`~sfpn.data.panoptic.PanopticLabelSpace`.
        config: the thresholds (the detector config's ``panoptic`` section).

    Returns:
        ``(segment_ids (H, W) int32 on the CPU, segments)`` as ``panoptic_merge`` returns them,
        at the original size, each segment's ``category_id`` the dataset's category id.
    """
    if "semantic" not in output:
        raise ValueError("output: a panoptic result needs the semantic map ('semantic'), which only a detector with "
                         "the semantic branch on (neck.semantic) outputs")
    # Box-only detectors pass no masks: the merge takes the semantic pixels of each detection's
    # own class inside its box (instance_masks' foreground rule is for COCO's segm instead).
    detections = detections_at_original_size(output, input_size, original_size, with_masks="masks" in output)
    segment_ids, segments = panoptic_merge(
        detections["boxes"], detections["scores"], detections["labels"], detections["semantic"],
        label_to_semantic=label_space.label_to_semantic, stuff_classes=label_space.stuff_classes,
        score_threshold=config.score_threshold, overlap_threshold=config.overlap_threshold,
        stuff_min_area=config.stuff_min_area, masks=detections.get("masks"),
    )
    for segment in segments:
        segment["category_id"] = label_space.semantic_to_category_id[segment["category_id"]]
    return segment_ids, segments


def _resize_nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(C, h, w)`` -> ``(C, H, W)`` float32 on the CPU, nearest-neighbour."""
    return F.interpolate(maps[None].detach().float().cpu(), size=tuple(size), mode="nearest")[0]
