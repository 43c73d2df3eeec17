"""Semantic label maps for the SFPN branch, painted from detection annotations.

SFPN needs a per-pixel class map, which plain detection datasets do not have. We rasterise one
from what every COCO-format dataset does have: instance masks when present, boxes otherwise, or
read it from label PNGs. The maps use the detector's label space: 0 = background,
1..num_classes = thing classes, 255 = ignore (crowd regions, and whatever a label PNG leaves
unlabelled).

Where instances overlap, the smaller one is painted last so that it stays visible: a large
object's mask (or box) would otherwise swallow the small objects in front of it.

The datasets (``sfpn.data``) paint a map per image, the detectors (``sfpn.modeling``) and the
torchvision integration per batch of targets: this module sits below all of them and imports
nothing from sfpn.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

#: Label of pixels the semantic loss ignores.
IGNORE_LABEL = 255
#: How a dataset makes each image's semantic map: from its instance masks (a box where an
#: annotation has none), from its boxes only, from label PNGs, or not at all. The training
#: config's ``data.semantic`` takes these names.
SEMANTIC_SOURCES = ("masks", "boxes", "png", "none")
#: Where :func:`semantic_labels` takes an image's label map from: a ``semantic`` map the target
#: already holds, its instance ``masks``, its ``boxes``, or ``auto``: the first of those three the
#: target has.
LABEL_SOURCES = ("auto", "semantic", "masks", "boxes")


def _paint_order(areas: torch.Tensor) -> torch.Tensor:
    """Indices from the largest area to the smallest (stable, so ties keep annotation order)."""
    return torch.sort(areas, descending=True, stable=True).indices


def semantic_from_masks(
    masks: torch.Tensor, labels: torch.Tensor, iscrowd: torch.Tensor | None = None
) -> torch.Tensor:
    """Paints instance masks into one class map.

    Args:
        masks: (K, H, W) instance masks (any dtype; nonzero = inside).
        labels: (K,) class of each instance, in 1..num_classes.
        iscrowd: (K,) optional; crowd instances are painted as 255 (ignore).

    Returns:
        (H, W) int64: 0 background, the instance's label inside its mask, 255 for crowd pixels
        not covered by a smaller instance.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks: expected a (K, H, W) tensor, got shape {tuple(masks.shape)}")
    if labels.shape != (masks.shape[0],):
        raise ValueError(f"labels: expected shape ({masks.shape[0]},) to match masks, got {tuple(labels.shape)}")
    masks = masks.bool()
    values = labels.to(torch.int64).clone()
    if iscrowd is not None:
        if iscrowd.shape != labels.shape:
            raise ValueError(f"iscrowd: expected shape {tuple(labels.shape)}, got {tuple(iscrowd.shape)}")
        values[iscrowd.bool()] = IGNORE_LABEL
    semantic = torch.zeros(masks.shape[1:], dtype=torch.int64, device=masks.device)
    for k in _paint_order(masks.flatten(1).sum(1)).tolist():
        semantic[masks[k]] = values[k]
    return semantic


def semantic_from_boxes(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    size: tuple[int, int],
    iscrowd: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fills boxes into one class map, for datasets without masks.

    A pixel (x, y) is inside box (x1, y1, x2, y2) when its centre (x + 0.5, y + 0.5) is, rounded
    so that every non-empty box covers at least one pixel.

    Args:
        boxes: (K, 4) xyxy in pixels of the map.
        labels: (K,) class of each box, in 1..num_classes.
        size: (H, W) of the map.
        iscrowd: (K,) optional; crowd boxes are filled with 255 (ignore).

    Returns:
        (H, W) int64 map, 0 where no box lies.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected a (K, 4) tensor, got shape {tuple(boxes.shape)}")
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels: expected shape ({boxes.shape[0]},) to match boxes, got {tuple(labels.shape)}")
    height, width = int(size[0]), int(size[1])
    values = labels.to(torch.int64).clone()
    if iscrowd is not None:
        if iscrowd.shape != labels.shape:
            raise ValueError(f"iscrowd: expected shape {tuple(labels.shape)}, got {tuple(iscrowd.shape)}")
        values[iscrowd.bool()] = IGNORE_LABEL
    semantic = torch.zeros((height, width), dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] == 0:
        return semantic
    corners = boxes.detach().to(torch.float64).cpu()
    x1 = corners[:, 0].round().clamp(0, width).long()
    y1 = corners[:, 1].round().clamp(0, height).long()
    x2 = torch.maximum(corners[:, 2].round().long(), x1 + 1).clamp(max=width)
    y2 = torch.maximum(corners[:, 3].round().long(), y1 + 1).clamp(max=height)
    areas = (corners[:, 2] - corners[:, 0]).clamp(min=0) * (corners[:, 3] - corners[:, 1]).clamp(min=0)
    for k in _paint_order(areas).tolist():
        semantic[y1[k] : y2[k], x1[k] : x2[k]] = values[k]
    return semantic


def semantic_labels(
    targets: list[dict[str, torch.Tensor]],
    image_sizes: list[tuple[int, int]],
    padded_size: tuple[int, int],
    labels_from: str = "auto",
) -> torch.Tensor:
    """The semantic labels of a padded image batch, from its detection targets.

    Args:
        targets: per image, ``boxes (K, 4)`` xyxy and ``labels (K,)`` in the image's current
            coordinates, and ``semantic (H0_i, W0_i)`` or ``masks (K, h_i, w_i)`` as
            ``labels_from`` needs; ``iscrowd (K,)`` optional (crowd instances become 255).
        image_sizes: ``(h_i, w_i)`` of each image inside the batch.
        padded_size: ``(H, W)`` of the padded batch.
        labels_from: one of :data:`LABEL_SOURCES`. A ``semantic`` map of another size than its
            image (one the transforms did not resize) is resized (nearest) to ``(h_i, w_i)``.

    Returns:
        ``(N, H, W)`` int64 on the device of the targets' labels: 0 background, 1..num_classes,
        255 for crowd regions and the padding.
    """
    if labels_from not in LABEL_SOURCES:
        raise ValueError(f"labels_from must be one of {LABEL_SOURCES}, got {labels_from!r}")
    device = targets[0]["labels"].device if targets else torch.device("cpu")
    labels = torch.full((len(targets), *padded_size), IGNORE_LABEL, dtype=torch.int64, device=device)
    for i, (target, (h, w)) in enumerate(zip(targets, image_sizes)):
        source = labels_from
        if source == "auto":
            source = next((key for key in LABEL_SOURCES[1:] if key in target), "boxes")
        if source not in target:  # each source is read from the target key of its name
            raise ValueError(
                f"targets[{i}] has no {source!r}, which labels_from={labels_from!r} needs; "
                f"choose labels_from among {LABEL_SOURCES} to match the dataset"
            )
        crowd = target.get("iscrowd")
        if source == "masks":
            semantic = semantic_from_masks(target["masks"], target["labels"], crowd)
        elif source == "boxes":
            semantic = semantic_from_boxes(target["boxes"], target["labels"], (h, w), crowd)
        else:
            semantic = target["semantic"]
            if tuple(semantic.shape) != (h, w):
                semantic = F.interpolate(semantic[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        labels[i, :h, :w] = semantic.to(device=device, dtype=torch.int64)
    return labels


def read_label_png(path: str, lookup: np.ndarray | dict[int, int]) -> torch.Tensor:
    """Reads a single-channel label PNG (e.g. COCO-stuff ``stuffthingmaps``) into our label space.

    Args:
        path: the PNG file; each pixel holds a raw class value.
        lookup: raw value -> label (0 background, 1..K-1 classes); values it does not map become
            255. A dict or a 256-entry array.

    Returns:
        (H, W) int64.
    """
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: expected a single-channel label PNG, got mode {image.mode!r}")
        raw = np.asarray(image, dtype=np.int64)
    table = _lookup_table(lookup, int(raw.max(initial=0)) + 1)
    return torch.from_numpy(table[raw])


#: PNG modes that hold RGB segment ids (palette images hold them through their palette).
PANOPTIC_PNG_MODES = ("RGB", "RGBA", "P")


def rgb_to_segment_ids(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` int64 segment ids ``R + 256 G + 256^2 B``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb: expected an (H, W, 3) array, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def segment_ids_to_rgb(segment_ids: np.ndarray) -> np.ndarray:
    """``(H, W)`` segment ids in ``[0, 256^3)`` -> ``(H, W, 3)`` uint8 RGB; inverse of
    :func:`rgb_to_segment_ids`."""
    segment_ids = np.asarray(segment_ids)
    if segment_ids.ndim != 2 or not np.issubdtype(segment_ids.dtype, np.integer):
        raise ValueError(f"segment_ids: expected an (H, W) integer array, got {segment_ids.dtype} of shape {segment_ids.shape}")
    if segment_ids.size and (segment_ids.min() < 0 or segment_ids.max() >= 256**3):
        raise ValueError(f"segment_ids must lie in [0, 256^3), got [{segment_ids.min()}, {segment_ids.max()}]")
    segment_ids = segment_ids.astype(np.int64)
    return np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // (256 * 256)], axis=-1).astype(np.uint8)


def read_segment_ids(path: str) -> torch.Tensor:
    """Reads a COCO panoptic PNG: ``(H, W)`` int64 segment ids (0 = void)."""
    with Image.open(path) as image:
        if image.mode not in PANOPTIC_PNG_MODES:
            raise ValueError(f"{path}: expected an RGB panoptic PNG (mode {', '.join(PANOPTIC_PNG_MODES)}), got mode {image.mode!r}")
        rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb_to_segment_ids(rgb))


def write_segment_ids(path: str, segment_ids) -> None:
    """Writes ``(H, W)`` segment ids (tensor or array) as a COCO panoptic PNG."""
    if isinstance(segment_ids, torch.Tensor):
        segment_ids = segment_ids.detach().cpu().numpy()
    Image.fromarray(segment_ids_to_rgb(segment_ids), mode="RGB").save(path)


def read_panoptic_png(
    path: str, segments_info: list[dict], category_to_label: dict[int, int]
) -> torch.Tensor:
    """Reads a COCO panoptic PNG (segment id = R + 256 G + 256^2 B) into a semantic map.

    Args:
        path: the panoptic PNG.
        segments_info: the annotation's ``segments_info`` list (``id``, ``category_id``,
            optional ``iscrowd``).
        category_to_label: COCO category id -> label; categories it lacks become 255, and so do
            crowd segments and unlabelled pixels (segment id 0).

    Returns:
        (H, W) int64.
    """
    segment_ids = read_segment_ids(path).numpy()
    semantic = np.full(segment_ids.shape, IGNORE_LABEL, dtype=np.int64)
    for segment in segments_info:
        if segment.get("iscrowd", 0):
            continue
        label = category_to_label.get(segment["category_id"])
        if label is not None:
            semantic[segment_ids == segment["id"]] = label
    return torch.from_numpy(semantic)


def _lookup_table(lookup: np.ndarray | dict[int, int], min_length: int) -> np.ndarray:
    table = np.full(max(min_length, 256), IGNORE_LABEL, dtype=np.int64)
    if isinstance(lookup, dict):
        for raw, label in lookup.items():
            table[raw] = label
    else:
        lookup = np.asarray(lookup, dtype=np.int64)
        table[: len(lookup)] = lookup
    return table
