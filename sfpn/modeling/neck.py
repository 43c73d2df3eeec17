"""The FPN and SFPN necks (docs/design.md, "The neck"): one implementation, the semantic branch
switched by config.

Data flow for backbone maps ``C2..C5`` (strides 4..32):

1. laterals ``L_i = conv1x1(C_i)``; top-down ``M_5 = L_5``, ``M_i = upsample_add(M_{i+1}, L_i)``;
2. semantic branch (SFPN only): ``logits, E = SemanticHead([M_2..M_5])`` at stride 8;
3. fusion of the embedding ``E`` into every level, before the 3x3 output convs (default) or after
   (with ``fusion_point="none"`` the branch reads the outputs and nothing is fused: Panoptic FPN);
4. ``P_i = conv3x3(M_i')``; ``P6 = max_pool(P5, 1, stride 2)`` for the RPN;
5. given semantic labels (training), the branch's own loss ``alpha * CE(logits, labels)``.

With the branch off, nothing of 2-3 exists and the module is plain FPN, parameter for parameter.

The inference forward scripts with TorchScript (so torchvision detectors holding it script, see
``sfpn.integrations.torchvision``); the semantic loss does not (:meth:`SFPN.losses`).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NeckConfig
from ..ops import semantic_fuse, upsample_add
from ..overrides import allowed, check_value
from ..semantic_labels import IGNORE_LABEL
from .layers import Conv2d
from .semantic_head import SemanticHead

FUSION_POINTS = allowed(NeckConfig, "fusion_point")
FUSION_OPS = allowed(NeckConfig, "fusion_op")
DOWNSAMPLE_MODES = allowed(NeckConfig, "downsample")
LEVEL_NAMES = ("p2", "p3", "p4", "p5", "p6")


def resize_to(x: torch.Tensor, size: list[int], downsample: str) -> torch.Tensor:
    """Resize ``x (N, C, h, w)`` to ``size``: bilinear up, identity at equal size, and down by
    ``downsample`` (``"bilinear"`` or ``"max_pool"``, adaptive max-pooling)."""
    size = list(size)
    if list(x.shape[-2:]) == size:
        return x
    if downsample == "max_pool" and size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.adaptive_max_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SFPN(nn.Module):
    """Feature pyramid with an optional semantic branch fused into every level.

    Args:
        in_channels: channels of ``C2..C5``.
        out_channels: channels of every pyramid level.
        num_semantic_classes: ``K`` of the semantic logits (background 0 included); 0 or
            ``semantic=False`` switches the branch off (plain FPN).
        semantic: whether the semantic branch exists.
        semantic_channels, semantic_convs, num_groups: width, depth and GroupNorm groups of the
            semantic head.
        fusion_point: ``"before"`` the 3x3 output convs (default), ``"after"`` them (BFP-style),
            or ``"none"``: the branch reads the output levels, learns and predicts, and nothing is
            fused back (Panoptic FPN's layout; the pyramid is FPN's, the branch has no embedding).
        fusion_op: ``"add"`` (``M + E``), ``"concat"`` (``conv1x1([M, E])``) or ``"gate"``
            (``M + sigmoid(conv1x1(M)) * E``: each level decides per position how much to take).
        downsample: how ``E`` shrinks to the coarse levels, ``"bilinear"`` or ``"max_pool"``.
        alpha: weight of the semantic loss.
        upsample_mode: interpolation of the top-down pathway (``"nearest"`` as FPN).
        semantic_loss_average: how the semantic CE averages its pixels (``"pixels"``,
            ``"foreground_background"`` or ``"median_frequency"``, see
            :class:`~sfpn.modeling.semantic_head.SemanticHead`).
        num_thing_classes: how many of the ``K - 1`` semantic classes are things (the others
            are stuff); None: all of them.

    The defaults are :class:`sfpn.config.NeckConfig`'s.

    forward(features: list (or, eager only, ordered dict) of ``C2..C5``, semantic_labels:
    ``(N, H, W)`` int64 or None) -> (``OrderedDict p2..p6`` of ``(N, out_channels, H / s, W / s)``,
    semantic logits ``(N, K, H / 8, W / 8)`` or None, losses: ``{"loss_segm": alpha * CE}`` when
    labels are given, else ``{}``). ``H, W`` of the labels is the padded image size (255 =
    ignored); the logits are upsampled to it inside the loss.
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int = NeckConfig.out_channels,
        num_semantic_classes: int = 0,
        *,
        semantic: bool = NeckConfig.semantic,
        semantic_channels: int = NeckConfig.semantic_channels,
        semantic_convs: int = NeckConfig.semantic_convs,
        num_groups: int = NeckConfig.num_groups,
        fusion_point: str = NeckConfig.fusion_point,
        fusion_op: str = NeckConfig.fusion_op,
        downsample: str = NeckConfig.downsample,
        alpha: float = NeckConfig.alpha,
        upsample_mode: str = NeckConfig.upsample_mode,
        semantic_loss_average: str = NeckConfig.semantic_loss_average,
        num_thing_classes: Optional[int] = None,
    ):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list the channels of C2..C5, got {in_channels}")
        self.out_channels = out_channels
        self.level_names = list(LEVEL_NAMES)  # an attribute: TorchScript cannot iterate a global tuple
        self.fusion_point = check_value("fusion_point", fusion_point, FUSION_POINTS)
        self.fusion_op = check_value("fusion_op", fusion_op, FUSION_OPS)
        self.downsample = check_value("downsample", downsample, DOWNSAMPLE_MODES)
        self.upsample_mode = check_value("upsample_mode", upsample_mode, allowed(NeckConfig, "upsample_mode"))
        self.alpha = check_value("alpha (the semantic loss weight)", alpha, allowed(NeckConfig, "alpha"))
        self.lateral_convs = nn.ModuleList(Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.semantic_head = None
        self.fusion_convs = None
        if semantic and num_semantic_classes > 0:
            self.semantic_head = SemanticHead(
                [out_channels] * len(in_channels),
                channels=semantic_channels,
                num_convs=semantic_convs,
                num_classes=num_semantic_classes,
                embed_channels=0 if fusion_point == "none" else out_channels,
                num_groups=num_groups,
                num_thing_classes=num_thing_classes,
                loss_average=semantic_loss_average,
            )
            fused = fusion_point != "none"
            if fused and fusion_op == "concat":
                self.fusion_convs = nn.ModuleList(Conv2d(2 * out_channels, out_channels, 1) for _ in in_channels)
            elif fused and fusion_op == "gate":
                self.fusion_convs = nn.ModuleList(Conv2d(out_channels, out_channels, 1) for _ in in_channels)
        for conv in [*self.lateral_convs, *self.output_convs]:
            nn.init.kaiming_uniform_(conv.weight, a=1)  # as FPN's reference implementations
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(
        cls, config: NeckConfig, in_channels: list[int], num_semantic_classes: int, num_thing_classes: Optional[int] = None
    ) -> "SFPN":
        """The neck a :class:`~sfpn.config.NeckConfig` describes, on backbone maps of ``in_channels``."""
        options = dataclasses.asdict(config)
        return cls(in_channels, options.pop("out_channels"), num_semantic_classes, num_thing_classes=num_thing_classes,
                   **options)

    @property
    def has_semantic_branch(self) -> bool:
        return self.semantic_head is not None

    @property
    def trains_semantic(self) -> bool:
        """Whether :meth:`forward` wants semantic labels while training (branch on, alpha > 0)."""
        return self.semantic_head is not None and self.alpha > 0

    # TorchScript compiles every branch that is not decided by an attribute being None, and never
    # zips a ModuleList: hence the index loops over the convs below.
    def _fuse(self, levels: list[torch.Tensor], embedding: torch.Tensor) -> list[torch.Tensor]:
        if self.fusion_op == "add" and self.downsample == "bilinear":
            return semantic_fuse(levels, embedding, mode="bilinear")  # one launch for all levels
        resized = [resize_to(embedding, level.shape[-2:], self.downsample) for level in levels]
        if self.fusion_convs is None:  # "add"
            return [level + e for level, e in zip(levels, resized)]
        else:
            fused: list[torch.Tensor] = []
            for i, conv in enumerate(self.fusion_convs):
                if self.fusion_op == "concat":
                    fused.append(conv(torch.cat((levels[i], resized[i]), dim=1)))
                else:  # "gate"
                    fused.append(levels[i] + torch.sigmoid(conv(levels[i])) * resized[i])
            return fused

    def forward(
        self, features: list[torch.Tensor], semantic_labels: Optional[torch.Tensor] = None
    ) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor], dict[str, torch.Tensor]]:
        if not torch.jit.is_scripting():
            if isinstance(features, dict):  # eager calls may pass an ordered dict; scripted ones a list
                features = list(features.values())
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"expected {len(self.lateral_convs)} backbone maps (C2..C5), got {len(features)}")
        merged: list[torch.Tensor] = []
        for i, conv in enumerate(self.lateral_convs):
            merged.append(conv(features[i]))
        # Top-down, replacing each lateral by its merged map (which frees the lateral).
        for i in range(len(merged) - 2, -1, -1):
            merged[i] = upsample_add(merged[i + 1], merged[i], mode=self.upsample_mode)
        logits: Optional[torch.Tensor] = None
        if self.semantic_head is not None and self.fusion_point == "before":
            logits, embedding = self.semantic_head(merged)
            if embedding is not None:
                merged = self._fuse(merged, embedding)
        outputs: list[torch.Tensor] = []
        for i, conv in enumerate(self.output_convs):
            outputs.append(conv(merged[i]))
        if self.semantic_head is not None and self.fusion_point != "before":  # "after" or "none"
            logits, embedding = self.semantic_head(outputs)
            if embedding is not None:
                outputs = self._fuse(outputs, embedding)
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        losses: dict[str, torch.Tensor] = {}
        if semantic_labels is not None:
            if torch.jit.is_scripting():  # the loss trains the model; a scripted one is deployed
                raise RuntimeError("a scripted SFPN computes no semantic loss: call it without semantic_labels")
            else:
                losses = self.losses(logits, semantic_labels)
        return OrderedDict([(name, output) for name, output in zip(self.level_names, outputs)]), logits, losses

    def losses(self, logits: Optional[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss_segm": alpha * CE(logits (N, K, h, w), labels (N, H, W))}`` (labels int64, 0
        background, 255 ignored)."""
        if self.semantic_head is None or logits is None:
            raise RuntimeError("semantic labels need the semantic branch, which this neck does not have")
        return {"loss_segm": self.alpha * self.semantic_head.loss(logits, labels, IGNORE_LABEL)}


class FPN(SFPN):
    """Plain FPN: :class:`SFPN` with the semantic branch off (same parameter names)."""

    def __init__(self, in_channels: list[int], out_channels: int = NeckConfig.out_channels, *,
                 upsample_mode: str = NeckConfig.upsample_mode):
        super().__init__(in_channels, out_channels, semantic=False, upsample_mode=upsample_mode)
