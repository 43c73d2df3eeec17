"""From a :class:`~sfpn.config.DetectorConfig` to a detector: :func:`build`, and
:func:`build_detector` (a preset by name, also ``sfpn.build_detector``)."""
from __future__ import annotations

import copy

from ..config import PYRAMID_STRIDES, DetectorConfig, check_detector_config, get_config
from .backbone import ResNet
from .cascade import CascadeRoIHeads
from .detector import CascadeRCNN, FasterRCNN, MaskRCNN
from .mask_head import MaskRoIHeads
from .neck import SFPN
from .roi_heads import RoIHeads
from .rpn import RPN

def build(config: DetectorConfig) -> FasterRCNN:
    """Builds the detector ``config`` describes, each module from its section; ``model.config``
    keeps a copy. The config is checked first (:func:`sfpn.config.check_detector_config`): a bad
    field, or fields that break a rule between them, raise a ``ValueError`` naming the keys."""
    check_detector_config(config)
    architectures = {
        "faster_rcnn": (FasterRCNN, lambda: RoIHeads.from_config(config.roi_heads, channels, config.num_classes)),
        "mask_rcnn": (MaskRCNN, lambda: MaskRoIHeads.from_config(config.roi_heads, channels, config.num_classes, config.mask_head)),
        "cascade_rcnn": (CascadeRCNN, lambda: CascadeRoIHeads.from_config(config.roi_heads, channels, config.num_classes, config.cascade)),
    }
    detector, build_roi_heads = architectures[config.meta_architecture]
    channels = config.neck.out_channels
    backbone = ResNet.from_config(config.backbone)
    neck = SFPN.from_config(config.neck, backbone.out_channels, 1 + config.num_classes + config.num_stuff_classes,
                            num_thing_classes=config.num_classes)
    rpn = RPN.from_config(config.rpn, channels, PYRAMID_STRIDES)
    model = detector(backbone, neck, rpn, build_roi_heads(), size_divisibility=config.size_divisibility)
    model.config = copy.deepcopy(config)
    return model


def build_detector(name: str, num_classes: int, **overrides) -> FasterRCNN:
    """Builds the preset ``name`` (see ``sfpn.list_presets()``) for ``num_classes`` foreground
    categories.

    Overrides use dotted keys: ``build_detector(name, 3, **{"neck.alpha": 0.5})``.
    """
    return build(get_config(name, num_classes, **overrides))
