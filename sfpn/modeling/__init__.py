"""Detector modules: backbone, FPN/SFPN neck, RPN, RoI heads and the detectors built from them."""
from __future__ import annotations

import copy

from .anchors import AnchorGenerator
from .backbone import FrozenBatchNorm2d, ResNet
from .boxes import BoxCoder, box_iou
from .cascade import CascadeRoIHeads
from .detector import CascadeRCNN, FasterRCNN, MaskRCNN
from .mask_head import MaskHead, MaskRoIHeads, paste_masks
from .matcher import Matcher, sample_balanced
from .neck import FPN, SFPN
from .roi_heads import RoIHeads
from .rpn import RPN
from .semantic_head import SemanticHead

__all__ = ["AnchorGenerator", "BoxCoder", "CascadeRCNN", "CascadeRoIHeads", "FPN", "FasterRCNN", "FrozenBatchNorm2d",
           "MaskHead", "MaskRCNN", "MaskRoIHeads", "Matcher", "ResNet", "RoIHeads", "RPN", "SFPN", "SemanticHead", "box_iou", "build",
           "paste_masks", "sample_balanced"]

#: Anchor strides of P2..P6.
PYRAMID_STRIDES = (4, 8, 16, 32, 64)


def build(config):
    """Builds the detector of a :class:`sfpn.config.DetectorConfig`: each module from its section."""
    architectures = {
        "faster_rcnn": (FasterRCNN, lambda: RoIHeads.from_config(config.roi_heads, channels, config.num_classes)),
        "mask_rcnn": (MaskRCNN, lambda: MaskRoIHeads.from_config(config.roi_heads, channels, config.num_classes, config.mask_head)),
        "cascade_rcnn": (CascadeRCNN, lambda: CascadeRoIHeads.from_config(config.roi_heads, channels, config.num_classes, config.cascade)),
    }
    if config.meta_architecture not in architectures:
        raise ValueError(f"meta_architecture must be one of {sorted(architectures)}, got {config.meta_architecture!r}")
    detector, build_roi_heads = architectures[config.meta_architecture]
    channels = config.neck.out_channels
    backbone = ResNet.from_config(config.backbone)
    neck = SFPN.from_config(config.neck, backbone.out_channels, 1 + config.num_classes + config.num_stuff_classes)
    rpn = RPN.from_config(config.rpn, channels, PYRAMID_STRIDES)
    model = detector(backbone, neck, rpn, build_roi_heads(), size_divisibility=config.size_divisibility)
    model.config = copy.deepcopy(config)
    return model
