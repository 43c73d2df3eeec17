"""Mask R-CNN's mask branch: a small FCN on 14x14 RoI features, per-class 28x28 mask logits,
targets cropped from the instance masks with RoIAlign, and a batched paste back into the image."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MaskHeadConfig
from ..ops import roi_align
from .layers import Conv2d, conv_relu
from .roi_heads import Proposals, RoIHeads, RoIPooler


class MaskHead(nn.Module):
    """``num_convs`` x (3x3 conv + ReLU), a 2x2 stride-2 deconv + ReLU, a 1x1 conv to per-class
    logits: ``(R, C_in, S, S)`` -> ``(R, num_classes, 2S, 2S)``."""

    def __init__(self, in_channels: int, num_classes: int, conv_dim: int = MaskHeadConfig.conv_dim,
                 num_convs: int = MaskHeadConfig.num_convs):
        super().__init__()
        dims = [in_channels] + [conv_dim] * num_convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:]))
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        self.predictor = Conv2d(conv_dim, num_classes, 1)
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv_relu(conv, x)
        return self.predictor(F.relu(self.deconv(x), inplace=True))


def select_class_masks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logits (R, C, M, M)``, ``labels (R,)`` in ``1..C`` -> ``(R, M, M)``."""
    return logits[torch.arange(logits.shape[0], device=logits.device), labels - 1]


@torch.no_grad()
def mask_targets(masks: torch.Tensor, gt_index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Binary ``(R, size, size)`` targets: ``masks[gt_index[r]] (H, W)`` cropped to ``boxes[r]`` with
    RoIAlign (aligned) and thresholded at 0.5."""
    if len(boxes) == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    rois = torch.cat((gt_index[:, None].to(boxes), boxes), dim=1)
    cropped = roi_align(masks[:, None].to(boxes), rois, size, 1.0, 0, aligned=True)
    return (cropped[:, 0] >= 0.5).to(torch.float32)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                threshold: float = 0.5, chunk_pixels: int = 1 << 24) -> torch.Tensor:
    """Pastes ``masks (D, M, M)`` (probabilities) into ``boxes (D, 4)`` of an image of
    ``(height, width)`` and binarises them: ``(D, H, W)`` bool.

    All boxes at once with ``grid_sample``: pixel centre ``x + 0.5`` samples mask coordinate
    ``(x + 0.5 - x1) / (x2 - x1) * M - 0.5`` (bilinear, zero outside the mask), so the mask's
    edges lie on the box's edges. Chunks over boxes bound the memory to ``chunk_pixels`` samples,
    except in a traced graph (``torch.export``), where ``D`` is data-dependent and a Python loop
    over it cannot be traced: there all boxes are one chunk.
    """
    height, width = image_size
    if torch.compiler.is_compiling():
        return _paste_chunk(masks, boxes, height, width, threshold)
    result = torch.zeros((len(masks), height, width), dtype=torch.bool, device=masks.device)
    if len(masks) == 0:
        return result
    per_chunk = max(1, chunk_pixels // max(height * width, 1))
    for start in range(0, len(masks), per_chunk):
        chunk = slice(start, start + per_chunk)
        result[chunk] = _paste_chunk(masks[chunk], boxes[chunk], height, width, threshold)
    return result


def _paste_chunk(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float) -> torch.Tensor:
    """:func:`paste_masks` of ``masks (d, M, M)`` into ``boxes (d, 4)`` in one ``grid_sample``."""
    ys = torch.arange(height, device=masks.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=masks.device, dtype=torch.float32) + 0.5
    box = boxes.float()
    box_w = (box[:, 2] - box[:, 0]).clamp(min=1e-6)[:, None]
    box_h = (box[:, 3] - box[:, 1]).clamp(min=1e-6)[:, None]
    gx = (xs[None] - box[:, 0, None]) / box_w * 2 - 1  # (d, W)
    gy = (ys[None] - box[:, 1, None]) / box_h * 2 - 1  # (d, H)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (d, H, W, 2)
    pasted = F.grid_sample(masks[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return pasted[:, 0] >= threshold


class MaskRoIHeads(RoIHeads):
    """:class:`RoIHeads` plus the mask branch.

    Training adds ``loss_mask``: per-pixel BCE of the ground-truth class's 28x28 logits of the
    foreground RoIs against their targets (needs ``masks (K, H, W)`` in every target).
    Inference adds ``masks (D, H, W)`` bool to each image's detections.
    """

    def __init__(self, in_channels: int, num_classes: int, *, mask_resolution: int = MaskHeadConfig.resolution,
                 mask_conv_dim: int = MaskHeadConfig.conv_dim, mask_num_convs: int = MaskHeadConfig.num_convs,
                 mask_threshold: float = MaskHeadConfig.threshold, **box_options):
        super().__init__(in_channels, num_classes, **box_options)
        self.mask_pooler = RoIPooler(mask_resolution, self.pooler.sampling_ratio)
        self.mask_head = MaskHead(in_channels, num_classes, mask_conv_dim, mask_num_convs)
        self.mask_threshold = mask_threshold

    @classmethod
    def from_config(cls, config, in_channels: int, num_classes: int, mask_config: MaskHeadConfig) -> MaskRoIHeads:
        """The heads of a :class:`sfpn.config.RoIHeadsConfig` and a :class:`sfpn.config.MaskHeadConfig`."""
        return super().from_config(
            config, in_channels, num_classes, mask_resolution=mask_config.resolution, mask_conv_dim=mask_config.conv_dim,
            mask_num_convs=mask_config.num_convs, mask_threshold=mask_config.threshold,
        )

    def forward(self, features, proposals, image_sizes, targets=None):
        if not self.training:
            detections = self.forward_eval(features, proposals, image_sizes)
            boxes = [d["boxes"] for d in detections]
            logits = self.mask_head(self.mask_pooler(features, boxes))
            labels = torch.cat([d["labels"] for d in detections])
            probabilities = select_class_masks(logits, labels).sigmoid()
            for detection, image_masks, size in zip(detections, probabilities.split([b.shape[0] for b in boxes]), image_sizes):
                detection["masks"] = paste_masks(image_masks, detection["boxes"], size, self.mask_threshold)
            return detections, {}
        if targets is None:
            raise ValueError("the RoI heads need targets in training mode")
        for i, target in enumerate(targets):
            if "masks" not in target:
                raise ValueError(f"targets[{i}] has no 'masks', which Mask R-CNN needs for its mask loss")
        losses, sampled = self.forward_train(features, proposals, targets)
        losses["loss_mask"] = self.mask_loss(features, sampled, targets)
        return [], losses

    def mask_loss(self, features, sampled: Proposals, targets) -> torch.Tensor:
        counts = [len(b) for b in sampled.boxes]
        foreground = [labels > 0 for labels in sampled.labels.split(counts)]
        boxes = [b[f] for b, f in zip(sampled.boxes, foreground)]
        labels = sampled.labels[sampled.labels > 0]
        logits = self.mask_head(self.mask_pooler(features, boxes))
        if len(labels) == 0:
            return logits.sum() * 0
        size = logits.shape[-1]
        target = torch.cat([
            mask_targets(t["masks"], index[f], b, size)
            for t, index, f, b in zip(targets, sampled.matched_index, foreground, boxes)
        ])
        return F.binary_cross_entropy_with_logits(select_class_masks(logits, labels), target)
