"""Training and evaluation transforms, applied to an image and its target together.

A transform is a callable ``(image, target, generator) -> (image, target)``: ``image`` is a
(3, H, W) float tensor, ``target`` a dict that may hold ``boxes`` (K, 4) xyxy pixels, ``masks``
(K, H, W) uint8, ``crowd_boxes`` (C, 4) and ``semantic`` (H, W) int64; every geometric transform
moves all of them so they stay aligned with the image. Random transforms draw only from
``generator``, so a sample's augmentation is fixed by its seed (see ``samplers``), which keeps a
resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_BOX_KEYS = ("boxes", "crowd_boxes")
_MAP_KEYS = ("masks", "semantic")


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target, generator):
        for transform in self.transforms:
            image, target = transform(image, target, generator)
        return image, target

    def __repr__(self):
        return f"Compose({self.transforms})"


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The (H, W) with the shorter side at ``min_size`` unless the longer would pass ``max_size``."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(K, H, W)`` label maps or masks to ``(K, *size)``; K may be 0
    (an image without instances), which ``F.interpolate`` refuses."""
    if maps.shape[0] == 0:
        return maps.new_zeros((0, *size))
    return F.interpolate(maps[None].float(), size=size, mode="nearest")[0].to(maps.dtype)


class ResizeShortestEdge:
    """Resizes so the shorter side is ``min_size`` and the longer at most ``max_size``.

    ``min_size`` may be a sequence for multi-scale training: one value is drawn per sample.
    Images go through antialiased bilinear interpolation, masks and semantic maps through nearest.
    """

    def __init__(self, min_size: int | Sequence[int] = 800, max_size: int = 1333):
        self.min_sizes = [min_size] if isinstance(min_size, int) else list(min_size)
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"min_size and max_size must be positive, got {min_size} and {max_size}")
        self.max_size = max_size

    def __call__(self, image, target, generator):
        if len(self.min_sizes) == 1:
            min_size = self.min_sizes[0]
        else:
            min_size = self.min_sizes[int(torch.randint(len(self.min_sizes), (), generator=generator))]
        height, width = image.shape[-2:]
        new_height, new_width = resized_shape(height, width, min_size, self.max_size)
        if (new_height, new_width) == (height, width):
            return image, target
        image = F.interpolate(
            image[None], size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0, 1)
        target = dict(target)
        scale = torch.tensor([new_width / width, new_height / height] * 2)
        for key in _BOX_KEYS:
            if key in target:
                target[key] = target[key] * scale
        if "masks" in target:
            target["masks"] = _resize_maps(target["masks"], (new_height, new_width))
        if "semantic" in target:
            target["semantic"] = _resize_maps(target["semantic"][None], (new_height, new_width))[0]
        return image, target

    def __repr__(self):
        return f"ResizeShortestEdge(min_size={self.min_sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must lie in [0, 1], got {prob}")
        self.prob = prob

    def __call__(self, image, target, generator):
        if self.prob == 0.0 or float(torch.rand((), generator=generator)) >= self.prob:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        for key in _BOX_KEYS:
            if key in target:
                boxes = target[key]
                target[key] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        for key in _MAP_KEYS:
            if key in target:
                target[key] = target[key].flip(-1)
        return image.flip(-1), target

    def __repr__(self):
        return f"RandomHorizontalFlip(prob={self.prob})"


def build_transforms(min_size: int | Sequence[int], max_size: int, flip_prob: float = 0.0) -> Compose:
    """Resize, then (when ``flip_prob`` > 0, i.e. for training) random horizontal flip."""
    transforms = [ResizeShortestEdge(min_size, max_size)]
    if flip_prob > 0:
        transforms.append(RandomHorizontalFlip(flip_prob))
    return Compose(transforms)
