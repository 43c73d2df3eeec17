"""torchvision ``BackboneWithFPN`` weights into an :class:`SFPNBackbone` (the FPN part maps one to one)."""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

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
