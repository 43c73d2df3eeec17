"""Detector configs: plain dataclasses, each field with its allowed values, and named presets.

    model = sfpn.build_detector("faster_rcnn_r50_sfpn_1x", num_classes=80, **{"neck.alpha": 0.5})
    model.config  # the DetectorConfig it was built from; DetectorConfig.from_dict(config.to_dict())

Each field declares its allowed values next to its default (:func:`sfpn.overrides.setting`): the
dotted-key overrides check them, and so do the modules that take the field as an argument.
:func:`check_detector_config` checks a whole config, the rules between its fields too (the
semantic head's channels divisible by its groups, one anchor size per pyramid level, ...), each
with the helper that the module needing the rule calls on its arguments. The detector is built
from a config by :func:`sfpn.modeling.build.build`, which checks it first.

Presets are named after the paper's rows (``faster_rcnn_r50_sfpn_1x``...) and each SFPN preset has
its FPN twin (the same config with the semantic branch off). The ``*_small`` presets are sized for
training on a 2-core CPU in minutes (a half-width ResNet-18 trained from scratch with BatchNorm,
a 64-channel neck and a 2-conv semantic head, fewer proposals and sampled RoIs).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field

from .overrides import (
    AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_at_most, check_config, check_divisible, check_length,
    check_not_empty, check_same_lengths, from_dict, key_names, set_key, setting,
)

#: ResNet depth -> (block, blocks per stage): the depths a backbone may have.
RESNET_STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3))}
#: Channels of a block's output per channel of its 3x3 convs.
BLOCK_EXPANSION = {"basic": 1, "bottleneck": 4}
#: GroupNorm groups of the backbone's ``norm="gn"``; a layer of fewer channels has one group per channel.
GROUP_NORM_GROUPS = 32
#: Strides of the pyramid levels P2..P6, each with one anchor size (``RPNConfig.anchor_sizes``).
PYRAMID_STRIDES = (4, 8, 16, 32, 64)


@dataclass
class BackboneConfig:
    depth: int = setting(50, tuple(RESNET_STAGES))
    width: int = setting(64, AT_LEAST_ONE)  # channels of the first stage; 64 for standard (loadable) weights
    norm: str = setting("frozen_bn", ("frozen_bn", "bn", "gn"))
    freeze_at: int = setting(2, Range(0, 5))  # 0 none, 1 stem, 2 stem + layer1, ... 5 all
    weights: str | None = None  # local torchvision-format ResNet checkpoint


@dataclass
class NeckConfig:
    out_channels: int = setting(256, AT_LEAST_ONE)
    semantic: bool = True  # False: plain FPN
    semantic_channels: int = setting(256, AT_LEAST_ONE)
    semantic_convs: int = setting(4, NON_NEGATIVE)
    num_groups: int = setting(32, AT_LEAST_ONE)
    # Where the semantic embedding joins the pyramid: "before" or "after" the 3x3 output convs, or
    # "none": the branch learns and predicts (the semantic map, the panoptic stuff) but its
    # features are not fused back, Panoptic FPN's layout (the baseline SFPN is compared with)
    fusion_point: str = setting("before", ("before", "after", "none"))
    fusion_op: str = setting("add", ("add", "concat", "gate"))
    downsample: str = setting("bilinear", ("bilinear", "max_pool"))  # to the coarse levels
    alpha: float = setting(0.2, NON_NEGATIVE)  # weight of the semantic loss
    # How the semantic CE averages its pixels: "median_frequency" (each class weighted by median /
    # its pixels, per batch: the default, which on both synthetic sets left no thing class
    # unpredicted and gained bbox AP on clutter, benchmarks/ACCURACY.md part 1) | "pixels" (each
    # labelled pixel alike, the paper's CE) | "foreground_background" (the mean of the thing
    # pixels' mean and the other pixels'; the best PQ there)
    semantic_loss_average: str = setting("median_frequency", ("pixels", "foreground_background", "median_frequency"))
    upsample_mode: str = setting("nearest", ("nearest", "bilinear"))  # of the top-down pathway


@dataclass
class RPNConfig:
    anchor_sizes: tuple[float, ...] = setting((32.0, 64.0, 128.0, 256.0, 512.0), POSITIVE)  # one per level P2..P6
    aspect_ratios: tuple[float, ...] = setting((0.5, 1.0, 2.0), POSITIVE)
    pre_nms_topk_train: int = setting(2000, AT_LEAST_ONE)  # per level and image
    pre_nms_topk_test: int = setting(1000, AT_LEAST_ONE)
    post_nms_topk_train: int = setting(1000, AT_LEAST_ONE)  # per image
    post_nms_topk_test: int = setting(1000, AT_LEAST_ONE)
    nms_threshold: float = setting(0.7, FRACTION)
    min_size: float = setting(0.0, NON_NEGATIVE)
    fg_iou_threshold: float = setting(0.7, FRACTION)
    bg_iou_threshold: float = setting(0.3, FRACTION)
    batch_size_per_image: int = setting(256, AT_LEAST_ONE)
    positive_fraction: float = setting(0.5, FRACTION)
    smooth_l1_beta: float = setting(1.0 / 9, NON_NEGATIVE)


@dataclass
class RoIHeadsConfig:
    resolution: int = setting(7, AT_LEAST_ONE)
    sampling_ratio: int = 2  # any int: <= 0 means adaptive
    fc_dim: int = setting(1024, AT_LEAST_ONE)
    num_fc: int = setting(2, AT_LEAST_ONE)
    batch_size_per_image: int = setting(512, AT_LEAST_ONE)
    positive_fraction: float = setting(0.25, FRACTION)
    fg_iou_threshold: float = setting(0.5, FRACTION)
    box_coder_weights: tuple[float, float, float, float] = setting((10.0, 10.0, 5.0, 5.0), POSITIVE)
    smooth_l1_beta: float = setting(1.0, NON_NEGATIVE)
    score_threshold: float = setting(0.05, FRACTION)
    nms_threshold: float = setting(0.5, FRACTION)
    detections_per_image: int = setting(100, AT_LEAST_ONE)


@dataclass
class MaskHeadConfig:  # mask_rcnn only
    resolution: int = setting(14, AT_LEAST_ONE)  # RoI features; the logits are twice as large
    conv_dim: int = setting(256, AT_LEAST_ONE)
    num_convs: int = setting(4, NON_NEGATIVE)
    threshold: float = setting(0.5, FRACTION)  # binarisation of the pasted probabilities


@dataclass
class CascadeConfig:  # cascade_rcnn only
    iou_thresholds: tuple[float, ...] = setting((0.5, 0.6, 0.7), FRACTION)
    stage_weights: tuple[float, ...] = setting((1.0, 0.5, 0.25), NON_NEGATIVE)
    box_coder_weights: tuple[tuple[float, float, float, float], ...] = setting(
        ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)), POSITIVE)


@dataclass
class PanopticConfig:  # the panoptic merge (sfpn.modeling.panoptic.panoptic_merge), when asked for
    score_threshold: float = setting(0.5, FRACTION)  # detections below it are no instance
    overlap_threshold: float = setting(0.5, FRACTION)  # drop an instance more than this share hidden
    stuff_min_area: int = setting(4096, NON_NEGATIVE)  # pixels of the original image, per stuff segment


@dataclass
class DetectorConfig:
    meta_architecture: str = setting("faster_rcnn", ("faster_rcnn", "mask_rcnn", "cascade_rcnn"))
    num_classes: int = setting(80, AT_LEAST_ONE)  # foreground categories; labels are 1..num_classes, 0 background
    # Stuff classes the semantic branch also segments (labels num_classes + 1 ..), from label maps
    num_stuff_classes: int = setting(0, NON_NEGATIVE)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)
    size_divisibility: int = setting(32, AT_LEAST_ONE)

    @property
    def trains_semantic(self) -> bool:
        """Whether training needs semantic labels: the branch is on and its loss weighs."""
        return self.neck.semantic and self.neck.alpha > 0

    def to_dict(self) -> dict:
        """Plain nested dict of builtins (safe in a ``weights_only`` checkpoint)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        """The config of :meth:`to_dict`'s dict, or of an older sfpn's: a field added since takes its
        default, and ``neck.labels_from``, which checkpoints stored until the training config's
        ``data.semantic`` became the one label source, is dropped. It never shaped the model,
        only the training labels of targets without a ``semantic`` map; its default ``"auto"``
        (every preset's) is the rule the detector now always follows: a target's ``semantic``
        map, else its masks, else its boxes."""
        if "labels_from" in data.get("neck", {}):
            data = {**data, "neck": {k: v for k, v in data["neck"].items() if k != "labels_from"}}
        return from_dict(cls, data)


# ------------------------------------------------------------------------------- rules between fields
def resnet_channels(depth: int, width: int) -> tuple[int, ...]:
    """The channel counts a ResNet of ``depth`` and ``width`` normalises, ascending: each stage's
    width (``width * 2**stage``) and its blocks' output (that times the block's expansion)."""
    expansion = BLOCK_EXPANSION[RESNET_STAGES[depth][0]]
    widths = [width * 2**stage for stage in range(4)]
    return tuple(sorted({*widths, *(w * expansion for w in widths)}))


def group_norm_groups(channels: int) -> int:
    """The GroupNorm groups of a backbone layer of ``channels`` with ``norm="gn"``."""
    return min(GROUP_NORM_GROUPS, channels)


def check_group_norm_width(name: str, depth: int, width: int) -> None:
    """A ``ValueError`` unless every channel count of the ResNet (:func:`resnet_channels`) splits
    into its GroupNorm groups (:func:`group_norm_groups`): below 32 or a multiple of 32."""
    channels = resnet_channels(depth, width)
    if any(c % group_norm_groups(c) for c in channels):
        raise ValueError(
            f"{name} must make every channel count of the ResNet-{depth} below {GROUP_NORM_GROUPS} or a multiple of "
            f"{GROUP_NORM_GROUPS} (its GroupNorm groups), got {width!r}: channels {channels}"
        )


def check_detector_config(config: DetectorConfig) -> None:
    """Checks every field of ``config`` (:func:`sfpn.overrides.check_config`) and the rules between
    fields, of the sections the architecture uses; a ``ValueError`` names the keys and what they
    must be. Each rule is the helper the module that needs it calls on its own arguments, so a run
    refuses what the model would, before it reads any data."""
    check_config(config)
    backbone, neck, rpn, cascade = config.backbone, config.neck, config.rpn, config.cascade
    if backbone.norm == "gn":
        check_group_norm_width(f"{key_names('backbone.width')} with backbone.norm='gn'", backbone.depth, backbone.width)
    if neck.semantic:
        check_divisible(key_names("neck.semantic_channels"), neck.semantic_channels, "neck.num_groups", neck.num_groups)
    check_length(key_names("rpn.anchor_sizes"), rpn.anchor_sizes, len(PYRAMID_STRIDES),
                 "one anchor size per pyramid level P2..P6")
    check_not_empty(key_names("rpn.aspect_ratios"), rpn.aspect_ratios)
    check_at_most(key_names("rpn.bg_iou_threshold"), rpn.bg_iou_threshold, "rpn.fg_iou_threshold", rpn.fg_iou_threshold)
    if config.meta_architecture == "cascade_rcnn":
        stages = (cascade.iou_thresholds, cascade.stage_weights, cascade.box_coder_weights)
        check_same_lengths(key_names("cascade.iou_thresholds", "cascade.stage_weights", "cascade.box_coder_weights"),
                           stages, "one entry per stage")
        check_not_empty(key_names("cascade.iou_thresholds"), cascade.iou_thresholds)


# ----------------------------------------------------------------------------------------- presets
def _paper_config(meta_architecture: str, depth: int, semantic: bool) -> DetectorConfig:
    """The 1x COCO configs of the paper's rows (ImageNet-initialised ResNet, frozen BN)."""
    return DetectorConfig(meta_architecture, backbone=BackboneConfig(depth=depth), neck=NeckConfig(semantic=semantic))


def _small_config(meta_architecture: str, semantic: bool) -> DetectorConfig:
    """Sized for CPU training from scratch in minutes on 256-320 px images."""
    return DetectorConfig(
        meta_architecture,
        backbone=BackboneConfig(depth=18, width=32, norm="bn", freeze_at=0),
        neck=NeckConfig(out_channels=64, semantic=semantic, semantic_channels=64, semantic_convs=2, num_groups=16),
        rpn=RPNConfig(
            anchor_sizes=(16.0, 32.0, 64.0, 128.0, 256.0),
            pre_nms_topk_train=600, pre_nms_topk_test=300, post_nms_topk_train=300, post_nms_topk_test=100,
        ),
        roi_heads=RoIHeadsConfig(fc_dim=256, batch_size_per_image=128),
        mask_head=MaskHeadConfig(conv_dim=64),
        # detectron2's 4096 pixels are 0.38% of an 800 x 1333 image; the same share of 256 x 320.
        panoptic=PanopticConfig(stuff_min_area=315),
    )


PRESETS: dict[str, typing.Callable[[], DetectorConfig]] = {}
for _neck in ("fpn", "sfpn"):
    _semantic = _neck == "sfpn"
    for _arch, _depths in (("faster_rcnn", (50, 101)), ("mask_rcnn", (50, 101)), ("cascade_rcnn", (50, 101))):
        for _depth in _depths:
            PRESETS[f"{_arch}_r{_depth}_{_neck}_1x"] = (
                lambda a=_arch, d=_depth, s=_semantic: _paper_config(a, d, s)
            )
        PRESETS[f"{_arch}_r18_{_neck}_small"] = (lambda a=_arch, s=_semantic: _small_config(a, s))


def list_presets() -> list[str]:
    """Names accepted by :func:`build_detector`."""
    return sorted(PRESETS)


def preset_config(name: str) -> DetectorConfig:
    """A fresh copy of the preset ``name`` (``num_classes`` still the default)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list_presets(), n=3)
        raise ValueError(f"unknown preset {name!r}; {f'did you mean {close}? ' if close else ''}choose one of {list_presets()}")
    return PRESETS[name]()


def get_config(name: str, num_classes: int, **overrides) -> DetectorConfig:
    """The preset ``name`` with ``num_classes`` and dotted-key ``overrides`` applied, each checked
    (:func:`sfpn.overrides.set_key`): a bad one raises a ``ValueError`` naming the key."""
    config = preset_config(name)
    for key, value in {"num_classes": num_classes, **overrides}.items():
        set_key(config, key, value)
    return config
