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

__all__ = ["AnchorGenerator", "BoxCoder", "CascadeRCNN", "CascadeRoIHeads", "FPN", "FasterRCNN", "FrozenBatchNorm2d",
           "MaskHead", "MaskRCNN", "MaskRoIHeads", "Matcher", "ResNet", "RoIHeads", "RPN", "SFPN", "box_iou", "build",
           "paste_masks", "sample_balanced"]

#: Anchor strides of P2..P6.
PYRAMID_STRIDES = (4, 8, 16, 32, 64)


def build(config):
    """Builds the detector of a :class:`sfpn.config.DetectorConfig`."""
    b, n, r, h = config.backbone, config.neck, config.rpn, config.roi_heads
    architectures = {"faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN, "cascade_rcnn": CascadeRCNN}
    if config.meta_architecture not in architectures:
        raise ValueError(f"meta_architecture must be one of {sorted(architectures)}, got {config.meta_architecture!r}")
    backbone = ResNet(b.depth, b.width, b.norm, b.freeze_at, b.weights)
    neck = SFPN(
        backbone.out_channels, n.out_channels, config.num_classes + 1, semantic=n.semantic,
        semantic_channels=n.semantic_channels, semantic_convs=n.semantic_convs, num_groups=n.num_groups,
        fusion_point=n.fusion_point, fusion_op=n.fusion_op, downsample=n.downsample, alpha=n.alpha,
        upsample_mode=n.upsample_mode,
    )
    rpn = RPN(
        n.out_channels, AnchorGenerator(r.anchor_sizes, r.aspect_ratios, PYRAMID_STRIDES),
        pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
        post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test), nms_threshold=r.nms_threshold,
        min_size=r.min_size, fg_iou_threshold=r.fg_iou_threshold, bg_iou_threshold=r.bg_iou_threshold,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        smooth_l1_beta=r.smooth_l1_beta,
    )
    box_options = dict(
        resolution=h.resolution, sampling_ratio=h.sampling_ratio, fc_dim=h.fc_dim, num_fc=h.num_fc,
        batch_size_per_image=h.batch_size_per_image, positive_fraction=h.positive_fraction,
        fg_iou_threshold=h.fg_iou_threshold, box_coder_weights=h.box_coder_weights,
        smooth_l1_beta=h.smooth_l1_beta, score_threshold=h.score_threshold, nms_threshold=h.nms_threshold,
        detections_per_image=h.detections_per_image,
    )
    if config.meta_architecture == "mask_rcnn":
        m = config.mask_head
        roi_heads = MaskRoIHeads(
            n.out_channels, config.num_classes, mask_resolution=m.resolution, mask_conv_dim=m.conv_dim,
            mask_num_convs=m.num_convs, mask_threshold=m.threshold, **box_options,
        )
    elif config.meta_architecture == "cascade_rcnn":
        c = config.cascade
        roi_heads = CascadeRoIHeads(
            n.out_channels, config.num_classes, iou_thresholds=c.iou_thresholds, stage_weights=c.stage_weights,
            stage_box_coder_weights=c.box_coder_weights, **box_options,
        )
    else:
        roi_heads = RoIHeads(n.out_channels, config.num_classes, **box_options)
    model = architectures[config.meta_architecture](
        backbone, neck, rpn, roi_heads, size_divisibility=config.size_divisibility
    )
    model.config = copy.deepcopy(config)
    return model
