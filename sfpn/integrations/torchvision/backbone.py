"""The SFPN neck as a torchvision detector backbone: :class:`SFPNBackbone`, a drop-in for
``BackboneWithFPN``, and :func:`sfpn_resnet_backbone`, ``resnet_fpn_backbone`` with our neck."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn
from torchvision.models import resnet as torchvision_resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from ...modeling.neck import SFPN

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

    It scripts with TorchScript, as ``BackboneWithFPN`` does, when its body does.
    """

    # TorchScript reads attribute types here (not from a postponed annotation).
    __annotations__ = {"semantic_logits": Optional[torch.Tensor]}

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

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(images)
        if not torch.jit.is_scripting():
            if not isinstance(features, Mapping):
                raise TypeError(f"the body must return an ordered dict of C2..C5, got {type(features).__name__}")
        pyramid, semantic_logits, _ = self.neck(list(features.values()))
        self.semantic_logits = semantic_logits
        names = list(features.keys()) + ["pool"]
        return OrderedDict([(name, level) for name, level in zip(names, pyramid.values())])


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
