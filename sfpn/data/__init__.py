"""Datasets, transforms and samplers for training and evaluating detectors (their semantic label
maps are painted by :mod:`sfpn.semantic_labels`)."""
from .coco import AnnotationError, CocoDetection, collate, load_coco_annotations
from .samplers import GroupedTrainBatchSampler, ListBatchSampler, shard_indices
from .synthetic import SyntheticSpec, synthetic_dataset
from .transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge, build_transforms

__all__ = [
    "AnnotationError",
    "CocoDetection",
    "collate",
    "load_coco_annotations",
    "GroupedTrainBatchSampler",
    "ListBatchSampler",
    "shard_indices",
    "SyntheticSpec",
    "synthetic_dataset",
    "Compose",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
    "build_transforms",
]
