"""Detector configs: plain dataclasses, named presets, dotted-key overrides, ``build_detector``.

    model = sfpn.build_detector("faster_rcnn_r50_sfpn_1x", num_classes=80, **{"neck.alpha": 0.5})
    model.config  # the DetectorConfig it was built from; DetectorConfig.from_dict(config.to_dict())

Presets are named after the paper's rows (``faster_rcnn_r50_sfpn_1x``...) and each SFPN preset has
its FPN twin (the same config with the semantic branch off). The ``*_small`` presets are sized for
training on a 2-core CPU in minutes (a half-width ResNet-18 trained from scratch with BatchNorm,
a 64-channel neck and a 2-conv semantic head, fewer proposals and sampled RoIs).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field


@dataclass
class BackboneConfig:
    depth: int = 50
    width: int = 64  # channels of the first stage; 64 for standard (loadable) weights
    norm: str = "frozen_bn"  # frozen_bn | bn | gn
    freeze_at: int = 2  # 0 none, 1 stem, 2 stem + layer1, ...
    weights: str | None = None  # local torchvision-format ResNet checkpoint


@dataclass
class NeckConfig:
    out_channels: int = 256
    semantic: bool = True  # False: plain FPN
    semantic_channels: int = 256
    semantic_convs: int = 4
    num_groups: int = 32
    fusion_point: str = "before"  # before | after the 3x3 output convs
    fusion_op: str = "add"  # add | concat | gate
    downsample: str = "bilinear"  # bilinear | max_pool (coarse levels)
    alpha: float = 0.2  # weight of the semantic loss
    # How the semantic CE averages its pixels: "pixels" (each labelled pixel alike, the paper's CE)
    # | "foreground_background" (the mean of the foreground pixels' mean and the background's)
    semantic_loss_average: str = "pixels"
    upsample_mode: str = "nearest"
    # Semantic labels of a target without a "semantic" map: auto (masks, else boxes) | masks | boxes
    labels_from: str = "auto"


@dataclass
class RPNConfig:
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms_topk_train: int = 2000  # per level and image
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 1000  # per image
    post_nms_topk_test: int = 1000
    nms_threshold: float = 0.7
    min_size: float = 0.0
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9


@dataclass
class RoIHeadsConfig:
    resolution: int = 7
    sampling_ratio: int = 2
    fc_dim: int = 1024
    num_fc: int = 2
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_threshold: float = 0.5
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100


@dataclass
class MaskHeadConfig:  # mask_rcnn only
    resolution: int = 14  # RoI features; the logits are twice as large
    conv_dim: int = 256
    num_convs: int = 4
    threshold: float = 0.5  # binarisation of the pasted probabilities


@dataclass
class CascadeConfig:  # cascade_rcnn only
    iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    box_coder_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


META_ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "cascade_rcnn")


@dataclass
class DetectorConfig:
    meta_architecture: str = "faster_rcnn"  # faster_rcnn | mask_rcnn | cascade_rcnn
    num_classes: int = 80  # foreground categories; labels are 1..num_classes, 0 background
    # Stuff classes the semantic branch also segments (labels num_classes + 1 ..), from label maps
    num_stuff_classes: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    size_divisibility: int = 32

    @property
    def trains_semantic(self) -> bool:
        """Whether training needs semantic labels: the branch is on and its loss weighs."""
        return self.neck.semantic and self.neck.alpha > 0

    def to_dict(self) -> dict:
        """Plain nested dict of builtins (safe in a ``weights_only`` checkpoint)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        return _from_dict(cls, data)


def _from_dict(cls, data: dict):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            value = _from_dict(hints[name], value)
        else:
            value = _coerce(hints[name], value, name)
        values[name] = value
    return cls(**values)


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
    """The preset ``name`` with ``num_classes`` and dotted-key ``overrides`` applied."""
    config = preset_config(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (foreground categories), got {num_classes!r}")
    config.num_classes = num_classes
    for key, value in overrides.items():
        set_key(config, key, value)
    return config


# --------------------------------------------------------------------------------------- overrides
# One mechanism for every dotted-key override, of the detector's config and of the training
# config (``sfpn.engine.config``): a key names a field of nested dataclasses, and a value is
# converted to the field's annotated type (from text, as ``--set key=value`` gives it).


def config_keys(config, prefix: str = "") -> dict[str, object]:
    """Every settable dotted key of a nested dataclass config and its current value."""
    keys = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(config_keys(value, f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = value
    return keys


def unknown_key_message(key: str, valid: typing.Iterable[str]) -> str:
    """``unknown config key 'x'`` with the closest valid keys, for a typo's sake."""
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key!r}{hint} (list them with python -m sfpn.train --list-keys)"


def set_key(config, key: str, value) -> None:
    """Sets ``config.<dotted key> = value`` in place, converted to the field's annotated type.

    Text (from a command line) is parsed as a Python literal for non-string fields (``"0.5"``,
    ``"(16, 32)"``, ``"None"``); a scalar given for a tuple field becomes a 1-tuple; an int is
    accepted for a float field. Anything else of the wrong type is refused with a ``ValueError``
    naming the key and the expected type.
    """
    *parents, name = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part, None) if _has_field(node, part) else None
    if node is None or not _has_field(node, name):
        raise ValueError(unknown_key_message(key, config_keys(config)))
    if dataclasses.is_dataclass(getattr(node, name)):
        raise ValueError(f"config key {key!r} is a section; set its fields, e.g. {key}.<field>")
    hint = typing.get_type_hints(type(node))[name]
    setattr(node, name, _coerce(hint, value, key))


class Range(typing.NamedTuple):
    """The allowed values of a numeric field: ``low <= value <= high`` (``low < value`` when
    ``low_open``; no upper bound when ``high`` is None)."""

    low: float
    high: float | None = None
    low_open: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE, FRACTION = Range(0, low_open=True), Range(0), Range(1), Range(0, 1)
#: The range of the detector config's numeric fields (a tuple's range holds for each item),
#: checked by :func:`check_ranges` before a run starts. Not here: ``backbone.depth``, a choice the
#: ResNet checks, and ``roi_heads.sampling_ratio``, where any value <= 0 means adaptive.
DETECTOR_RANGES: dict[str, Range] = {
    "num_classes": AT_LEAST_ONE,
    "num_stuff_classes": NON_NEGATIVE,
    "size_divisibility": AT_LEAST_ONE,
    "backbone.width": AT_LEAST_ONE,
    "backbone.freeze_at": Range(0, 5),
    "neck.out_channels": AT_LEAST_ONE,
    "neck.semantic_channels": AT_LEAST_ONE,
    "neck.semantic_convs": NON_NEGATIVE,
    "neck.num_groups": AT_LEAST_ONE,
    "neck.alpha": NON_NEGATIVE,
    "rpn.anchor_sizes": POSITIVE,
    "rpn.aspect_ratios": POSITIVE,
    "rpn.pre_nms_topk_train": AT_LEAST_ONE,
    "rpn.pre_nms_topk_test": AT_LEAST_ONE,
    "rpn.post_nms_topk_train": AT_LEAST_ONE,
    "rpn.post_nms_topk_test": AT_LEAST_ONE,
    "rpn.nms_threshold": FRACTION,
    "rpn.min_size": NON_NEGATIVE,
    "rpn.fg_iou_threshold": FRACTION,
    "rpn.bg_iou_threshold": FRACTION,
    "rpn.batch_size_per_image": AT_LEAST_ONE,
    "rpn.positive_fraction": FRACTION,
    "rpn.smooth_l1_beta": NON_NEGATIVE,
    "roi_heads.resolution": AT_LEAST_ONE,
    "roi_heads.fc_dim": AT_LEAST_ONE,
    "roi_heads.num_fc": AT_LEAST_ONE,
    "roi_heads.batch_size_per_image": AT_LEAST_ONE,
    "roi_heads.positive_fraction": FRACTION,
    "roi_heads.fg_iou_threshold": FRACTION,
    "roi_heads.box_coder_weights": POSITIVE,
    "roi_heads.smooth_l1_beta": NON_NEGATIVE,
    "roi_heads.score_threshold": FRACTION,
    "roi_heads.nms_threshold": FRACTION,
    "roi_heads.detections_per_image": AT_LEAST_ONE,
    "mask_head.resolution": AT_LEAST_ONE,
    "mask_head.conv_dim": AT_LEAST_ONE,
    "mask_head.num_convs": NON_NEGATIVE,
    "mask_head.threshold": FRACTION,
    "cascade.iou_thresholds": FRACTION,
    "cascade.stage_weights": NON_NEGATIVE,
    "cascade.box_coder_weights": POSITIVE,
}


def check_ranges(config, ranges: dict[str, Range]) -> None:
    """A ``ValueError`` naming the first key of ``ranges`` whose value (each item of a tuple,
    nested too) lies outside its range."""
    keys = config_keys(config)
    for key, allowed in ranges.items():
        if not all(value in allowed for value in _flatten(keys[key])):
            raise ValueError(f"config key {key!r} must be {allowed}, got {keys[key]!r}")


def _flatten(value) -> list:
    return [item for v in value for item in _flatten(v)] if isinstance(value, tuple) else [value]


def _has_field(node, name: str) -> bool:
    return dataclasses.is_dataclass(node) and any(f.name == name for f in dataclasses.fields(node))


def parse_value(text: str):
    """A command line's value: a Python literal (number, boolean, tuple, quoted string), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def type_name(hint) -> str:
    """``int``, ``tuple of float``, ``str or None``: how an error message names a field's type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return f"tuple of {type_name(args[0])}" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)}-tuple"
    if type(None) in args:
        return " or ".join(type_name(a) for a in args if a is not type(None)) + " or None"
    return hint.__name__


def _coerce(hint, value, key: str):
    """``value`` as the type ``hint`` (int, float, str, bool, ``X | None``, ``tuple[X, ...]``)."""
    expected = f"config key {key!r} expects {type_name(hint)}, got {value!r}"
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None or value == "None":
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(hint, value, key)
    if isinstance(value, str):  # command-line text; a quoted string is unquoted
        parsed = parse_value(value)
        value = parsed if hint is not str or isinstance(parsed, str) else value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            value = (value,)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            raise ValueError(expected)
        try:
            return tuple(_coerce(item, v, key) for item, v in zip(items, value))
        except ValueError:
            raise ValueError(expected) from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not hint:  # exact: True is not an int here
        raise ValueError(expected)
    return value


def build_from_config(config: DetectorConfig):
    """Builds the detector a :class:`DetectorConfig` describes; ``model.config`` keeps a copy."""
    from .modeling import build

    return build(config)


def build_detector(name: str, num_classes: int, **overrides):
    """Builds the preset ``name`` for ``num_classes`` foreground categories.

    Overrides use dotted keys: ``build_detector(name, 3, **{"neck.alpha": 0.5})``.
    """
    return build_from_config(get_config(name, num_classes, **overrides))
