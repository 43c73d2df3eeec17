"""Datasets, transforms and samplers for training and evaluating detectors (their semantic label
maps are painted by :mod:`sfpn.semantic_labels`)."""
from .coco import AnnotationError, CocoDetection, collate, load_coco_annotations
from .panoptic import (
    load_panoptic_annotations,
    read_panoptic_ground_truth,
    read_segment_ids,
    write_segment_ids,
)
from .samplers import GroupedTrainBatchSampler, ListBatchSampler, shard_indices
from .synthetic import ClutterSpec, ShapesSpec, synthetic_dataset
from .transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge, build_transforms

__all__ = [
    "AnnotationError",
    "CocoDetection",
    "collate",
    "load_coco_annotations",
    "load_panoptic_annotations",
    "read_panoptic_ground_truth",
    "read_segment_ids",
    "write_segment_ids",
    "GroupedTrainBatchSampler",
    "ListBatchSampler",
    "shard_indices",
    "ClutterSpec",
    "ShapesSpec",
    "synthetic_dataset",
    "Compose",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
    "build_transforms",
]
