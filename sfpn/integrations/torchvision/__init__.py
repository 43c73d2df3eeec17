"""The SFPN neck, its semantic loss and sfpn's ops inside torchvision's detectors.

torchvision's ``FasterRCNN``, ``MaskRCNN`` and ``KeypointRCNN`` take any backbone module that has
an ``out_channels`` attribute and returns an ordered dict of feature maps; its ``BackboneWithFPN``
returns the keys ``"0" .. "3"`` (P2..P5) and ``"pool"`` (P6), which the default anchor generator
and RoI poolers expect. :class:`SFPNBackbone` returns the same, so those detectors run with it
unchanged. Three lines turn a torchvision detector into an SFPN one::

    backbone = sfpn_resnet_backbone("resnet50", num_semantic_classes=91, weights_path="resnet50.pth")
    model = torchvision.models.detection.MaskRCNN(backbone, num_classes=91)
    model = add_semantic_loss(model, alpha=0.2, labels_from="masks")  # training dict gains loss_segm

and ``use_sfpn_ops(model)`` optionally swaps in sfpn's RoIAlign and batched NMS.

One module per concern: ``backbone`` (:class:`SFPNBackbone`, :func:`sfpn_resnet_backbone`),
``semantic_loss`` (the hooks of :func:`add_semantic_loss`), ``swap_ops`` (:func:`use_sfpn_ops`)
and ``state_dict`` (loading torchvision FPN weights).
"""
from __future__ import annotations

from .backbone import RESNET_NAMES, SFPNBackbone, sfpn_resnet_backbone
from .semantic_loss import LABEL_SOURCES, SemanticLoss, add_semantic_loss, semantic_targets
from .state_dict import convert_fpn_state_dict, load_fpn_state_dict
from .swap_ops import MultiScaleRoIAlign, SFPNOps, use_sfpn_ops

__all__ = [
    "LABEL_SOURCES",
    "MultiScaleRoIAlign",
    "SFPNBackbone",
    "SFPNOps",
    "SemanticLoss",
    "add_semantic_loss",
    "convert_fpn_state_dict",
    "load_fpn_state_dict",
    "semantic_targets",
    "sfpn_resnet_backbone",
    "use_sfpn_ops",
]
