"""Detector modules: backbone, FPN/SFPN neck, RPN, RoI heads and the detectors built from them."""
from __future__ import annotations

from .anchors import AnchorGenerator
from .backbone import FrozenBatchNorm2d, ResNet
from .boxes import BoxCoder, box_iou
from .build import build, build_detector
from .cascade import CascadeRoIHeads
from .detector import CascadeRCNN, FasterRCNN, MaskRCNN
from .layers import InferenceWeightCache
from .mask_head import MaskHead, MaskRoIHeads, paste_masks
from .matcher import Matcher, sample_balanced
from .neck import FPN, SFPN
from .roi_heads import RoIHeads
from .rpn import RPN
from .semantic_head import SemanticHead

__all__ = ["AnchorGenerator", "BoxCoder", "CascadeRCNN", "CascadeRoIHeads", "FPN", "FasterRCNN", "FrozenBatchNorm2d",
           "InferenceWeightCache", "MaskHead", "MaskRCNN", "MaskRoIHeads", "Matcher", "ResNet", "RoIHeads", "RPN", "SFPN", "SemanticHead", "box_iou", "build",
           "build_detector", "paste_masks", "sample_balanced"]
