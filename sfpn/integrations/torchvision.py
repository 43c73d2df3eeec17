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

Why hooks and not a subclass: torchvision's ``GeneralizedRCNNTransform`` resizes the images and
their targets and pads the batch; the semantic labels must be made from those *transformed*
targets, at the padded batch size, to line up with the logits. A forward hook on
``model.transform`` sees exactly that, and a forward hook on the model adds ``loss_segm`` to the
loss dict it returns, so any ``GeneralizedRCNN`` works without forking torchvision's code.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as torchvision_resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import roi_heads as torchvision_roi_heads
from torchvision.models.detection import rpn as torchvision_rpn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops import boxes as torchvision_box_ops

from ..data.semantic import IGNORE_INDEX, semantic_from_boxes, semantic_from_masks
from ..ops import batched_nms, multilevel_roi_align
from ..modeling.neck import SFPN

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

#: The ResNet constructors of ``torchvision.models.resnet`` that :func:`sfpn_resnet_backbone` builds.
RESNET_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
#: Where :func:`add_semantic_loss` takes the label map from: the instance masks, the boxes, or a
#: ``semantic (H, W)`` map the dataset already gives (e.g. COCO-stuff, 255 = ignore).
LABEL_SOURCES = ("masks", "boxes", "semantic")
#: The layers :func:`sfpn_resnet_backbone` may train, from the top; ``trainable_layers`` takes a prefix.
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


# ----------------------------------------------------------------------------------------------
# Backbone


class SFPNBackbone(nn.Module):
    """A torchvision-style body followed by the SFPN neck: a drop-in for ``BackboneWithFPN``.

    Args:
        body: a module mapping ``(N, 3, H, W)`` images to an ordered dict of the four maps
            C2..C5 (strides 4..32), or, with ``return_layers``, any model whose named children
            include those layers (a torchvision ResNet, say).
        in_channels_list: channels of C2..C5.
        out_channels: channels of every pyramid level (the heads read ``self.out_channels``).
        num_semantic_classes: ``K`` of the semantic logits, background included: torchvision's
            ``num_classes``.
        return_layers: ``{child name: output name}`` for ``IntermediateLayerGetter``, as in
            ``BackboneWithFPN``; use ``{"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}``
            so torchvision's default RoI poolers (``featmap_names=["0", "1", "2", "3"]``) find them.
        **neck_options: passed to :class:`sfpn.modeling.neck.SFPN` (``semantic=False`` gives
            plain FPN, numerically torchvision's ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``).

    forward(images ``(N, 3, H, W)``) -> ``OrderedDict`` of the body's four names and ``"pool"``,
    each ``(N, out_channels, H / s, W / s)`` for s = 4, 8, 16, 32, 64. The semantic logits
    ``(N, K, H / 8, W / 8)`` of the last call stay in ``self.semantic_logits`` (None with the
    branch off), where :func:`add_semantic_loss` picks them up.
    """

    def __init__(
        self,
        body: nn.Module,
        in_channels_list: list[int],
        out_channels: int = 256,
        *,
        num_semantic_classes: int,
        return_layers: dict[str, str] | None = None,
        **neck_options,
    ):
        super().__init__()
        self.body = IntermediateLayerGetter(body, return_layers=return_layers) if return_layers is not None else body
        self.neck = SFPN(in_channels_list, out_channels, num_semantic_classes, **neck_options)
        self.out_channels = out_channels
        self.semantic_logits: torch.Tensor | None = None

    @property
    def has_semantic_branch(self) -> bool:
        return self.neck.has_semantic_branch

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        if not isinstance(features, Mapping):
            raise TypeError(f"the body must return an ordered dict of C2..C5, got {type(features).__name__}")
        pyramid, self.semantic_logits = self.neck(list(features.values()))
        return OrderedDict(zip([*features.keys(), "pool"], pyramid.values()))

    def semantic_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Unweighted pixel-wise CE of ``logits (N, K, h, w)`` against ``labels (N, H, W)``
        (255 ignored); the logits are resized to the labels."""
        return self.neck.semantic_loss(logits, labels)


def sfpn_resnet_backbone(
    backbone_name: str,
    num_semantic_classes: int,
    trainable_layers: int | None = None,
    weights_path: str | None = None,
    *,
    out_channels: int = 256,
    norm_layer: type[nn.Module] | None = None,
    **neck_options,
) -> SFPNBackbone:
    """A torchvision ResNet body with the SFPN neck: ``resnet_fpn_backbone`` with our neck.

    Args:
        backbone_name: one of :data:`RESNET_NAMES` (``torchvision.models.resnet`` constructors).
        num_semantic_classes: ``K`` of the semantic logits (torchvision's ``num_classes``:
            background included).
        trainable_layers: how many of ``layer4, layer3, layer2, layer1, conv1`` train, from the
            top (0..5, as torchvision's ``trainable_backbone_layers``); the rest are frozen.
            None: 3 with ``weights_path``, all 5 without (torchvision's defaults).
        weights_path: a local file holding the ResNet's state dict (e.g. torchvision's
            ``resnet50-11ad3fa6.pth``), loaded with ``weights_only=True``; nothing is downloaded.
            None leaves the body randomly initialised.
        out_channels: channels of the pyramid.
        norm_layer: the body's normalisation. None: ``FrozenBatchNorm2d`` with ``weights_path``
            (its statistics are the pretrained ones), ``nn.BatchNorm2d`` without (frozen
            statistics of a random body would normalise nothing), as torchvision's detectors.
        **neck_options: passed to :class:`sfpn.modeling.neck.SFPN`.
    """
    if backbone_name not in RESNET_NAMES:
        raise ValueError(f"backbone_name must be one of {RESNET_NAMES}, got {backbone_name!r}")
    pretrained = weights_path is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else len(_TRAINABLE_ORDER)
    if norm_layer is None:
        norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if not 0 <= trainable_layers <= len(_TRAINABLE_ORDER):
        raise ValueError(f"trainable_layers must be in [0, {len(_TRAINABLE_ORDER)}], got {trainable_layers}")
    body = getattr(torchvision_resnet, backbone_name)(weights=None, norm_layer=norm_layer)
    if pretrained:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
        try:
            body.load_state_dict(state_dict)
        except RuntimeError as error:
            raise ValueError(f"weights_path {weights_path!r} does not hold a {backbone_name} state dict: {error}") from None
    trainable = _TRAINABLE_ORDER[:trainable_layers] + (("bn1",) if trainable_layers == len(_TRAINABLE_ORDER) else ())
    for name, parameter in body.named_parameters():
        if not name.startswith(trainable):
            parameter.requires_grad_(False)
    c2_channels = body.inplanes // 8  # layer4's output channels / 8, as torchvision computes it
    return SFPNBackbone(
        body,
        [c2_channels * 2**i for i in range(4)],
        out_channels,
        num_semantic_classes=num_semantic_classes,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        **neck_options,
    )


# torchvision's FeaturePyramidNetwork keys (``inner_blocks.i.0.weight`` since 0.13, ``inner_blocks.i.weight``
# before) and ours.
_FPN_KEY = re.compile(r"(^|\.)fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(?:0\.)?(weight|bias)$")
_NECK_BLOCKS = {"inner_blocks": "lateral_convs", "layer_blocks": "output_convs"}
_SEMANTIC_KEY = re.compile(r"(^|\.)neck\.(semantic_head|fusion_convs)\.")


def convert_fpn_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Renames the ``fpn.*`` keys of a ``BackboneWithFPN`` (or of a whole torchvision detector,
    ``backbone.fpn.*``) to an :class:`SFPNBackbone`'s ``neck.*``; other keys are kept."""
    converted = OrderedDict()
    for key, value in state_dict.items():
        match = _FPN_KEY.search(key)
        if match:
            prefix, blocks, index, kind = match.groups()
            key = f"{key[: match.start()]}{prefix}neck.{_NECK_BLOCKS[blocks]}.{index}.{kind}"
        converted[key] = value
    return converted


def load_fpn_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor]):
    """Loads the weights of a torchvision detector with ``BackboneWithFPN`` (say, a COCO-trained
    ``fasterrcnn_resnet50_fpn``) into ``module``, the same model with an :class:`SFPNBackbone`.

    Only the semantic branch may be missing from ``state_dict`` (it starts from its
    initialisation); any other missing or unexpected key raises ``RuntimeError``.
    Returns ``load_state_dict``'s result.
    """
    result = module.load_state_dict(convert_fpn_state_dict(state_dict), strict=False)
    missing = [key for key in result.missing_keys if not _SEMANTIC_KEY.search(key)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"state_dict does not fit {type(module).__name__} with an SFPN backbone: "
            f"missing {missing}, unexpected {result.unexpected_keys}"
        )
    return result


# ----------------------------------------------------------------------------------------------
# The semantic loss


def semantic_targets(
    targets: list[dict[str, torch.Tensor]],
    image_sizes: list[tuple[int, int]],
    padded_size: tuple[int, int],
    labels_from: str = "masks",
) -> torch.Tensor:
    """The semantic labels of a batch as torchvision's transform leaves it.

    Args:
        targets: per image, the *transformed* target (``boxes (K, 4)``, ``labels (K,)``, and
            ``masks (K, h_i, w_i)`` or ``semantic (H0_i, W0_i)`` as ``labels_from`` needs;
            ``iscrowd (K,)`` optional, crowd instances become 255).
        image_sizes: ``(h_i, w_i)`` of each resized image (``ImageList.image_sizes``).
        padded_size: ``(H, W)`` of the padded batch (``ImageList.tensors``).
        labels_from: one of :data:`LABEL_SOURCES`; a ``semantic`` map is resized (nearest) to
            ``(h_i, w_i)``, as the transform does not resize it.

    Returns:
        ``(N, H, W)`` int64: 0 background, 1..num_classes, 255 for crowd regions and padding.
    """
    if labels_from not in LABEL_SOURCES:
        raise ValueError(f"labels_from must be one of {LABEL_SOURCES}, got {labels_from!r}")
    height, width = padded_size
    device = targets[0]["labels"].device if targets else torch.device("cpu")
    labels = torch.full((len(targets), height, width), IGNORE_INDEX, dtype=torch.int64, device=device)
    for i, (target, (h, w)) in enumerate(zip(targets, image_sizes)):
        if labels_from not in target:  # each source is read from the target key of its name
            raise ValueError(
                f"targets[{i}] has no {labels_from!r}, which labels_from={labels_from!r} needs; "
                f"choose labels_from among {LABEL_SOURCES} to match the dataset"
            )
        crowd = target.get("iscrowd")
        if labels_from == "masks":
            semantic = semantic_from_masks(target["masks"], target["labels"], crowd)
        elif labels_from == "boxes":
            semantic = semantic_from_boxes(target["boxes"], target["labels"], (h, w), crowd)
        else:
            semantic = F.interpolate(target["semantic"][None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        labels[i, :h, :w] = semantic.to(device)
    return labels


class SemanticLoss:
    """The two forward hooks :func:`add_semantic_loss` installs, and their state.

    ``capture`` (on ``model.transform``) keeps the transformed targets, the resized image sizes and
    the padded batch size; ``add_loss`` (on the model) turns them into labels and adds
    ``alpha * CE(logits, labels)`` to the loss dict the model returns while training.
    """

    def __init__(self, alpha: float, labels_from: str):
        if labels_from not in LABEL_SOURCES:
            raise ValueError(f"labels_from must be one of {LABEL_SOURCES}, got {labels_from!r}")
        self.alpha = float(alpha)
        self.labels_from = labels_from
        self._batch = None
        self._handles = []

    def attach(self, model: nn.Module) -> None:
        self._handles = [
            model.transform.register_forward_hook(self.capture),
            model.register_forward_hook(self.add_loss),
        ]

    def remove(self) -> None:
        """Takes both hooks off the model: its loss dict is torchvision's again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def capture(self, transform: nn.Module, inputs, output) -> None:
        images, targets = output
        self._batch = (tuple(images.tensors.shape[-2:]), images.image_sizes, targets) if targets is not None else None

    def add_loss(self, model: nn.Module, inputs, output):
        batch, self._batch = self._batch, None
        if not model.training or not isinstance(output, dict) or batch is None:
            return None  # evaluation: the logits stay in the backbone for the caller
        # Training: take the logits, so that the backbone does not hold their graph after the step.
        logits, model.backbone.semantic_logits = model.backbone.semantic_logits, None
        padded_size, image_sizes, targets = batch
        labels = semantic_targets(targets, image_sizes, padded_size, self.labels_from).to(logits.device)
        num_classes = logits.shape[1]
        if ((labels >= num_classes) & (labels != IGNORE_INDEX)).any():
            raise ValueError(
                f"semantic labels must lie in [0, {num_classes}) or be {IGNORE_INDEX}: the backbone was "
                f"built with num_semantic_classes={num_classes}, fewer than the targets' labels need"
            )
        output["loss_segm"] = self.alpha * model.backbone.semantic_loss(logits, labels)
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, labels_from={self.labels_from!r})"


def add_semantic_loss(model: nn.Module, alpha: float = 0.2, labels_from: str = "masks") -> nn.Module:
    """Makes a torchvision ``GeneralizedRCNN`` with an :class:`SFPNBackbone` train the semantic
    branch: its training loss dict gains ``loss_segm = alpha * CE(semantic logits, labels)``.

    The labels come from the targets torchvision's transform has resized (``labels_from``: their
    ``"masks"``, their ``"boxes"``, or a ``"semantic"`` map per image), painted at the padded batch
    size with 255 (ignored) over the padding, so they line up with the logits. Evaluation is
    unchanged. The model is changed in place (two forward hooks, kept in
    ``model.sfpn_semantic_loss``; ``model.sfpn_semantic_loss.remove()`` takes them off; calling
    again replaces them) and returned.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, SFPNBackbone) or not hasattr(model, "transform"):
        raise TypeError(
            "add_semantic_loss needs a torchvision GeneralizedRCNN (FasterRCNN, MaskRCNN, ...) whose backbone "
            f"is an SFPNBackbone, got {type(model).__name__} with backbone {type(backbone).__name__}"
        )
    if not backbone.has_semantic_branch:
        raise ValueError("the model's SFPNBackbone has no semantic branch (semantic=False), so there is no loss to add")
    previous = getattr(model, "sfpn_semantic_loss", None)
    if previous is not None:
        previous.remove()
    model.sfpn_semantic_loss = SemanticLoss(alpha, labels_from)
    model.sfpn_semantic_loss.attach(model)
    return model


# ----------------------------------------------------------------------------------------------
# sfpn's ops in torchvision's heads


def _infer_scales(levels: list[torch.Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """torchvision's rule: ``2 ** round(log2(feature height / largest image height))`` per level."""
    if not image_shapes:
        raise ValueError("image_shapes must not be empty")
    height = max(shape[0] for shape in image_shapes)
    return [2.0 ** float(torch.tensor(level.shape[-2] / height).log2().round()) for level in levels]


class MultiScaleRoIAlign(TorchvisionMultiScaleRoIAlign):
    """``torchvision.ops.MultiScaleRoIAlign`` pooling every box from its level in one
    ``multilevel_roi_align`` call instead of one ``roi_align`` per level.

    Same constructor, call, level rule (canonical 224 at level 4) and scale inference (from the
    first call's ``image_shapes``, then kept in ``self.scales``), so it replaces torchvision's
    module anywhere: ``forward(x: dict of (N, C, H_l, W_l), boxes: list of (K_i, 4) in image
    coordinates, image_shapes: list of (h, w)) -> (sum K_i, C, PH, PW)``.
    """

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        levels = [feature for name, feature in x.items() if name in self.featmap_names]
        if not levels:
            raise ValueError(f"x holds none of the feature maps {self.featmap_names}, only {list(x)}")
        if self.scales is None:
            self.scales = _infer_scales(levels, image_shapes)
        return multilevel_roi_align(
            levels,
            boxes,
            self.output_size,
            self.scales,
            self.sampling_ratio,
            False,  # torchvision's MultiScaleRoIAlign is not half-pixel aligned
            self.canonical_scale,
            self.canonical_level,
        )

    @classmethod
    def from_torchvision(cls, pooler: TorchvisionMultiScaleRoIAlign) -> MultiScaleRoIAlign:
        """The same pooler (settings and any scales it has already inferred) on sfpn's op."""
        replacement = cls(
            pooler.featmap_names,
            pooler.output_size,
            pooler.sampling_ratio,
            canonical_scale=pooler.canonical_scale,
            canonical_level=pooler.canonical_level,
        )
        replacement.scales = pooler.scales
        return replacement


class _BoxOpsWithSFPNNms:
    """``torchvision.ops.boxes`` as torchvision's RPN and RoI heads see it, with sfpn's batched NMS."""

    batched_nms = staticmethod(batched_nms)

    def __getattr__(self, name: str):
        return getattr(torchvision_box_ops, name)


# torchvision's RPN and RoI heads call ``box_ops.batched_nms`` through their module global
# ``box_ops``; pointing that global at the proxy swaps NMS for every torchvision detector in the
# process (there is no per-model hook for it) and nothing else. Counted, so that handles of
# several models can be removed in any order.
_NMS_MODULES = (torchvision_rpn, torchvision_roi_heads)
_nms_patch_count = 0


def _patch_nms() -> None:
    global _nms_patch_count
    if _nms_patch_count == 0:
        for module in _NMS_MODULES:
            module.box_ops = _BoxOpsWithSFPNNms()
    _nms_patch_count += 1


def _unpatch_nms() -> None:
    global _nms_patch_count
    _nms_patch_count -= 1
    if _nms_patch_count == 0:
        for module in _NMS_MODULES:
            module.box_ops = torchvision_box_ops


_POOLERS = ("box_roi_pool", "mask_roi_pool", "keypoint_roi_pool")


class SFPNOps:
    """What :func:`use_sfpn_ops` changed; ``remove()`` (or the end of a ``with`` block) restores it."""

    def __init__(self, model: nn.Module, roi_align: bool, nms: bool):
        self._model = model
        self._poolers = {}
        if roi_align:
            for name in _POOLERS:
                pooler = getattr(model.roi_heads, name, None)
                if isinstance(pooler, TorchvisionMultiScaleRoIAlign) and not isinstance(pooler, MultiScaleRoIAlign):
                    self._poolers[name] = pooler
                    setattr(model.roi_heads, name, MultiScaleRoIAlign.from_torchvision(pooler))
        self._nms = nms
        if nms:
            _patch_nms()

    def remove(self) -> None:
        for name, pooler in self._poolers.items():
            setattr(self._model.roi_heads, name, pooler)
        self._poolers = {}
        if self._nms:
            _unpatch_nms()
            self._nms = False

    def __enter__(self) -> SFPNOps:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def use_sfpn_ops(model: nn.Module, *, roi_align: bool = True, nms: bool = True) -> SFPNOps:
    """Runs a torchvision R-CNN on sfpn's ops.

    - ``roi_align``: the model's ``MultiScaleRoIAlign`` poolers (box, mask, keypoint) become
      :class:`MultiScaleRoIAlign` (this model only).
    - ``nms``: torchvision's RPN and RoI heads call sfpn's ``batched_nms``. This one is
      process-wide: torchvision reaches NMS through a module global, not through the model.

    Returns a handle: ``handle.remove()`` puts torchvision's poolers back into the model and, once
    every handle asking for it is removed, torchvision's NMS back into its heads; ``with
    use_sfpn_ops(model): ...`` does so at the end of the block.
    """
    if not isinstance(getattr(model, "roi_heads", None), torchvision_roi_heads.RoIHeads):
        raise TypeError(f"use_sfpn_ops needs a torchvision GeneralizedRCNN with RoIHeads, got {type(model).__name__}")
    return SFPNOps(model, roi_align, nms)
