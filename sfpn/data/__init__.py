"""Datasets, semantic labels, transforms and samplers for training and evaluating detectors."""
from .coco import AnnotationError, CocoDetection, collate, load_coco_annotations
from .samplers import GroupedTrainBatchSampler, ListBatchSampler, shard_indices
from .semantic import (
    IGNORE_LABEL,
    read_label_png,
    read_panoptic_png,
    semantic_from_boxes,
    semantic_from_masks,
    semantic_labels,
)
from .synthetic import ClutterSpec, ShapesSpec, synthetic_dataset
from .transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge, build_transforms

__all__ = [
    "AnnotationError",
    "CocoDetection",
    "collate",
    "load_coco_annotations",
    "GroupedTrainBatchSampler",
    "ListBatchSampler",
    "shard_indices",
    "IGNORE_LABEL",
    "read_label_png",
    "read_panoptic_png",
    "semantic_from_boxes",
    "semantic_from_masks",
    "semantic_labels",
    "ClutterSpec",
    "ShapesSpec",
    "synthetic_dataset",
    "Compose",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
    "build_transforms",
]
