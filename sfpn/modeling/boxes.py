"""Box utilities: pairwise IoU (defined beside ``sfpn.ops.box_iou_max``, which reduces it without
forming it), clipping, the pixels inside boxes, NMS per image of a batch, and the (dx, dy, dw, dh)
box coder of R-CNN."""
from __future__ import annotations

import math

import torch

from ..ops import batched_nms
from ..ops.box_iou_max import box_iou  # noqa: F401 (sfpn.modeling.box_iou)


def clip_boxes_(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Clip ``(..., 4)`` xyxy boxes to an image of ``(height, width)``, in place; returns ``boxes``."""
    height, width = image_size
    boxes[..., 0::2].clamp_(min=0, max=width)
    boxes[..., 1::2].clamp_(min=0, max=height)
    return boxes


def box_pixel_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(D, 4)`` xyxy -> ``(D, H, W)`` bool: the pixels whose centre ``(x + 0.5, y + 0.5)`` lies in
    the box, edges included; ``size`` is ``(H, W)``."""
    height, width = size
    ys = torch.arange(height, device=boxes.device).view(1, -1, 1) + 0.5
    xs = torch.arange(width, device=boxes.device).view(1, 1, -1) + 0.5
    # The rows and the columns inside, (D, H, 1) and (D, 1, W): one pass over (D, H, W), not seven.
    rows = (ys >= boxes[:, 1, None, None]) & (ys <= boxes[:, 3, None, None])
    columns = (xs >= boxes[:, 0, None, None]) & (xs <= boxes[:, 2, None, None])
    return rows & columns


def nonempty_boxes(boxes: torch.Tensor, min_size: float = 0.0) -> torch.Tensor:
    """``(K,)`` bool: boxes wider and taller than ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)


def nms_per_image(
    boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor, images: torch.Tensor, num_images: int,
    iou_threshold: float, max_per_image: int,
) -> list[torch.Tensor]:
    """Non-maximum suppression of a batch's boxes in one ``batched_nms`` call, then each image's
    ``max_per_image`` best survivors.

    ``boxes (K, 4)``, ``scores (K,)``; ``categories (K,)`` int64: boxes of different categories
    never suppress each other, so a category must not span images (``image * C + class``);
    ``images (K,)`` int64 in ``[0, num_images)``. Returns per image the int64 indices into the
    ``K`` boxes of its kept boxes by decreasing score (ties by increasing index): what NMS of
    each image's boxes alone, within categories, gives. One call instead of one per image spreads
    the categories of every image over the threads.
    """
    keep = batched_nms(boxes, scores, categories, iou_threshold)
    kept_images = images[keep]
    return [keep[kept_images == image][:max_per_image] for image in range(num_images)]


class BoxCoder:
    """Encodes a target box relative to a reference box as ``(dx, dy, dw, dh)`` scaled by ``weights``:
    ``dx = wx * (gx - rx) / rw``, ``dw = ww * log(gw / rw)`` (centres, widths without the +1).

    Decoding clamps ``dw, dh`` at ``log(1000 / 16)`` so no prediction overflows ``exp``.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = math.log(1000.0 / 16)):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``reference (K, 4)``, ``target (K, 4)`` xyxy -> deltas ``(K, 4)``."""
        wx, wy, ww, wh = self.weights
        rw = reference[:, 2] - reference[:, 0]
        rh = reference[:, 3] - reference[:, 1]
        rx = reference[:, 0] + 0.5 * rw
        ry = reference[:, 1] + 0.5 * rh
        tw = target[:, 2] - target[:, 0]
        th = target[:, 3] - target[:, 1]
        tx = target[:, 0] + 0.5 * tw
        ty = target[:, 1] + 0.5 * th
        return torch.stack(
            (wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * torch.log(tw / rw), wh * torch.log(th / rh)), dim=1
        )

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``deltas (K, 4 * C)`` (C boxes per reference, e.g. one per class), ``reference (K, 4)``
        -> boxes ``(K, 4 * C)`` xyxy."""
        deltas = deltas.float()
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        rw = (reference[:, 2] - reference[:, 0])[:, None]
        rh = (reference[:, 3] - reference[:, 1])[:, None]
        rx = reference[:, 0, None] + 0.5 * rw
        ry = reference[:, 1, None] + 0.5 * rh
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx = dx * rw + rx
        cy = dy * rh + ry
        half_w = 0.5 * torch.exp(dw) * rw
        half_h = 0.5 * torch.exp(dh) * rh
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)  # (K, C, 4)
        return boxes.reshape(deltas.shape)
