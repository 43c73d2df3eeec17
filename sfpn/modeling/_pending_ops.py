"""Stand-ins until the ops branches merge; the lead deletes this file and points imports at sfpn.ops.

Minimal pure-PyTorch versions of the public names other branches deliver, with the agreed
signatures, so the detector runs and trains today:

- ``roi_align``, ``multilevel_roi_align`` and ``batched_nms`` (final home: ``sfpn.ops``),
- ``semantic_fuse`` (final home: ``sfpn.ops``),
- ``SemanticHead`` (final home: ``sfpn.modeling.semantic_head``).

Only ``neck.py`` (semantic_fuse, SemanticHead), ``rpn.py`` (batched_nms), ``roi_heads.py``
(multilevel_roi_align, batched_nms) and ``mask_head.py`` (roi_align) import from here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def semantic_fuse(levels: list[torch.Tensor], semantic: torch.Tensor, mode: str = "bilinear") -> list[torch.Tensor]:
    """``[level + interpolate(semantic, level size)]`` for every level.

    Args:
        levels: pyramid maps ``(N, C, H_i, W_i)``.
        semantic: ``(N, C, Hs, Ws)``.
    """
    align_corners = False if mode == "bilinear" else None
    return [
        level + F.interpolate(semantic, size=level.shape[-2:], mode=mode, align_corners=align_corners)
        for level in levels
    ]


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS over a precomputed suppression matrix, the scan in NumPy (CPU only, fine for a
    stand-in)."""
    order = scores.float().argsort(descending=True)
    sorted_boxes = boxes[order].float()
    suppresses = (_box_iou(sorted_boxes, sorted_boxes) > iou_threshold).cpu().numpy()
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= ~suppresses[i, i + 1 :]
    return order[torch.from_numpy(keep).to(order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each group of equal ``idxs`` (torchvision's signature).

    Args:
        boxes: ``(K, 4)`` xyxy; scores: ``(K,)``; idxs: ``(K,)`` int64 group ids.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept = []
    for group in torch.unique(idxs):
        members = torch.nonzero(idxs == group).squeeze(1)
        kept.append(members[_nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True)]


def _level_of_boxes(boxes: torch.Tensor, levels: list[int], canonical_scale: float, canonical_level: int):
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(canonical_level + torch.log2(area.clamp(min=0).sqrt() / canonical_scale + 1e-6))
    return level.clamp(min=levels[0], max=levels[-1]).to(torch.int64) - levels[0]


def multilevel_roi_align(
    levels: list[torch.Tensor],
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> torch.Tensor:
    """RoIAlign from the FPN level each box belongs to (torchvision's ``MultiScaleRoIAlign`` rule).

    Stand-in built on ``F.grid_sample`` (border padding): it equals torchvision's RoIAlign except for
    samples more than one pixel outside the map, which torchvision zeroes. ``sampling_ratio`` must be
    positive here.

    Args:
        levels: maps ``(N, C, H_l, W_l)``, finest first; ``scales[l]`` = 1 / stride of level l.
        boxes: ``(K, 5)`` ``[batch_index, x1, y1, x2, y2]`` or a list of ``(K_i, 4)`` per image.

    Returns:
        ``(K, C, oh, ow)``.
    """
    if isinstance(boxes, (list, tuple)):
        boxes = torch.cat(
            [torch.cat([b.new_full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
        )
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be positive in the stand-in, got {sampling_ratio}")
    num_images, channels = levels[0].shape[:2]
    level_ids = [round(-math.log2(s)) for s in scales]
    box_level = _level_of_boxes(boxes[:, 1:], level_ids, canonical_scale, canonical_level)
    indices, pooled = [], []
    offset = 0.5 if aligned else 0.0
    # Sample positions inside a unit box: bin b, sample s -> (b + (s + 0.5) / ratio) / bins.
    grid_y = (torch.arange(out_h * sampling_ratio, device=boxes.device, dtype=boxes.dtype) + 0.5) / (
        out_h * sampling_ratio
    )
    grid_x = (torch.arange(out_w * sampling_ratio, device=boxes.device, dtype=boxes.dtype) + 0.5) / (
        out_w * sampling_ratio
    )
    for level_index, (feature, scale) in enumerate(zip(levels, scales)):
        height, width = feature.shape[-2:]
        for image in range(num_images):
            selected = torch.nonzero((box_level == level_index) & (boxes[:, 0] == image)).squeeze(1)
            if selected.numel() == 0:
                continue
            roi = boxes[selected, 1:] * scale - offset
            size = roi[:, 2:] - roi[:, :2]
            if not aligned:
                size = size.clamp(min=1.0)
            ys = roi[:, 1, None] + grid_y[None] * size[:, 1, None]  # (k, oh*r) in pixel-index units
            xs = roi[:, 0, None] + grid_x[None] * size[:, 0, None]
            # grid_sample (align_corners=False) maps pixel index p to (2p + 1) / size - 1.
            ys = (2 * ys + 1) / height - 1
            xs = (2 * xs + 1) / width - 1
            k = len(selected)
            grid = torch.stack(
                torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1
            ).reshape(1, k * out_h * sampling_ratio, out_w * sampling_ratio, 2)
            sampled = F.grid_sample(
                feature[image : image + 1], grid.to(feature.dtype), mode="bilinear",
                padding_mode="border", align_corners=False,
            )  # (1, C, k * oh * r, ow * r)
            sampled = sampled.reshape(channels, k, out_h * sampling_ratio, out_w * sampling_ratio).transpose(0, 1)
            indices.append(selected)
            pooled.append(F.avg_pool2d(sampled, sampling_ratio))
    if not pooled:
        return levels[0].new_zeros(0, channels, out_h, out_w)
    return torch.cat(pooled)[torch.cat(indices).argsort()]


class SemanticHead(nn.Module):
    """The semantic branch of DESIGN.md §2: a 1x1 conv per level, resize to the stride-8 grid and
    sum, ``num_convs`` x (3x3 conv + GroupNorm + ReLU), then 1x1 logits and a 1x1 + ReLU embedding.

    forward(features: list of ``(N, C_i, H_i, W_i)``, stride 4 first)
        -> (logits ``(N, num_classes, H8, W8)``, embedding ``(N, embed_channels, H8, W8)``).
    """

    def __init__(
        self,
        in_channels: list[int],
        channels: int = 256,
        num_convs: int = 4,
        num_classes: int = 183,
        embed_channels: int = 256,
        num_groups: int = 32,
        use_reference: bool = False,
    ):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(num_convs))
        self.norms = nn.ModuleList(nn.GroupNorm(num_groups, channels) for _ in range(num_convs))
        self.logits = nn.Conv2d(channels, num_classes, 1)
        self.embed = nn.Conv2d(channels, embed_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        size = features[1].shape[-2:]
        x = sum(
            F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else conv(f)
            for conv, f in zip(self.lateral_convs, features)
        )
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        return self.logits(x), F.relu(self.embed(x))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pixel-wise CE of ``logits (N, K, h, w)`` resized (bilinear) to ``labels (N, H, W)``;
        255 is ignored."""
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
        return loss / (labels != 255).sum().clamp(min=1)


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """Single-level RoIAlign (torchvision's signature): ``input (N, C, H, W)``, ``boxes (K, 5)``
    -> ``(K, C, oh, ow)``. The stand-in samples 2 x 2 points per bin when ``sampling_ratio <= 0``."""
    return multilevel_roi_align(
        [input], boxes, output_size, [spatial_scale], sampling_ratio if sampling_ratio > 0 else 2, aligned
    )
