"""SFPN's semantic branch (docs/design.md, "The neck"): per-level 1x1 convs, every level resized to the
stride-8 grid and summed, ``num_convs`` x (3x3 conv + GroupNorm + ReLU), then a 1x1 conv to the
class logits and a 1x1 conv + ReLU to the embedding that is fused back into the pyramid.

The fused ops (``sfpn.ops.resize_sum``, ``group_norm_relu``, ``semantic_cross_entropy``,
``upsample_cross_entropy``) run their Triton kernels on CUDA and their pure-PyTorch references
elsewhere (the dispatcher's choice, see ``sfpn.ops``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import NeckConfig
from ..ops.resize_sum import MAX_LEVELS
from ..overrides import allowed, check_divisible, check_value

#: How :meth:`SemanticHead.loss` averages the pixels' cross-entropy (the neck config's
#: ``semantic_loss_average``).
LOSS_AVERAGES = allowed(NeckConfig, "semantic_loss_average")


class SemanticHead(nn.Module):
    """Semantic segmentation branch of SFPN.

    Args:
        in_channels: channels of each input level, finest first (e.g. ``[256] * 4`` for P2..P5).
        num_classes: K, the logits' classes (0 = background; label 255 is ignored by the loss).
        channels: width of the branch (256; 128 is the cheaper option).
        num_convs: number of 3x3 conv + GroupNorm + ReLU blocks.
        embed_channels: channels of the semantic embedding fused into the pyramid.
        num_groups: GroupNorm groups (must divide ``channels``).
        target_level: index of the level whose grid the branch works on (1: stride 8 for P2..P5).
        loss_average: how :meth:`loss` averages the pixels' cross-entropy, one of
            :data:`LOSS_AVERAGES`: ``"pixels"``, every labelled pixel alike (the paper's CE), or
            ``"foreground_background"``, the mean over foreground pixels and the mean over
            background pixels, averaged, so that background (~87% of the pixels of the
            synthetic sets' labels painted from masks) cannot drown the classes the head should
            tell apart. Background is label 0 only: with things-and-stuff label maps, which
            label every pixel, stuff counts as foreground and the two means are the pixel mean.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        num_convs: int = 4,
        embed_channels: int = 256,
        num_groups: int = 32,
        target_level: int = 1,
        loss_average: str = "pixels",
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not 1 <= len(in_channels) <= MAX_LEVELS:
            raise ValueError(f"in_channels must list 1 to {MAX_LEVELS} levels, got {in_channels}")
        if not 0 <= target_level < len(in_channels):
            raise ValueError(f"target_level must index in_channels (0..{len(in_channels) - 1}), got {target_level}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        check_value("loss_average", loss_average, LOSS_AVERAGES)
        check_divisible("channels", channels, "num_groups", num_groups)
        self.num_classes = num_classes
        self.target_level = target_level
        self.loss_average = loss_average
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        # Each block's GroupNorm holds the affine parameters; the fused op applies them.
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(num_convs))
        self.norms = nn.ModuleList(nn.GroupNorm(num_groups, channels) for _ in range(num_convs))
        self.logits = nn.Conv2d(channels, num_classes, 1)
        self.embed = nn.Conv2d(channels, embed_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in [*self.laterals, *self.convs, self.embed]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.logits.weight, std=0.01)
        nn.init.zeros_(self.logits.bias)
        for norm in self.norms:
            norm.reset_parameters()

    def forward(
        self, features: list[torch.Tensor], compute_logits: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Semantic logits and embedding on the target level's grid.

        Args:
            features: one map per level, ``(N, in_channels[i], H_i, W_i)``, finest first.
            compute_logits: False skips the logits conv (inference needs only the embedding).

        Returns:
            ``(logits (N, K, H_t, W_t) or None, embedding (N, embed_channels, H_t, W_t))`` where
            ``(H_t, W_t)`` is ``features[target_level]``'s size.
        """
        if len(features) != len(self.laterals):
            raise ValueError(f"features must hold {len(self.laterals)} levels, got {len(features)}")
        size = features[self.target_level].shape[-2:]
        laterals: list[torch.Tensor] = []
        for i, lateral in enumerate(self.laterals):  # TorchScript iterates a ModuleList, never zips it
            laterals.append(lateral(features[i]))
        x = ops.resize_sum(laterals, size)
        for conv, norm in zip(self.convs, self.norms):
            x = ops.group_norm_relu(conv(x), norm.num_groups, norm.weight, norm.bias, norm.eps)
        logits = self.logits(x) if compute_logits else None
        return logits, F.relu(self.embed(x))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """Pixel-wise cross-entropy over the labelled pixels, averaged as ``loss_average`` says.

        Args:
            logits: ``(N, K, H_t, W_t)`` from :meth:`forward`.
            labels: ``(N, H, W)`` integer classes, 0 = background, 255 = ignore; either on the
                logits' grid or at full image size, in which case the logits are bilinearly
                upsampled inside the loss kernel (no full-size logits tensor is made).

        Returns:
            A float32 scalar; 0 (still in the graph) when every pixel is ignored, e.g. a batch of
            crowd-only or unlabelled images, where a plain mean would be 0 / 0 = NaN. With
            ``"foreground_background"``, a batch without foreground (or without background) pixels
            gives the other group's mean alone.
        """
        same_grid = tuple(labels.shape[-2:]) == tuple(logits.shape[-2:])
        cross_entropy = ops.semantic_cross_entropy if same_grid else ops.upsample_cross_entropy

        def mean_over_labelled(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            labelled = (target != ignore_index).sum()
            return cross_entropy(logits, target, ignore_index, reduction="sum") / labelled.clamp(min=1), labelled > 0

        if self.loss_average == "pixels":
            return mean_over_labelled(labels)[0]
        background = labels == 0
        foreground_mean, has_foreground = mean_over_labelled(labels.masked_fill(background, ignore_index))
        background_mean, has_background = mean_over_labelled(labels.masked_fill(~background, ignore_index))
        # Tensors, not Python branches: no host sync, and the graph stays one shape under compile.
        groups = (has_foreground.float() + has_background.float()).clamp(min=1)
        return (foreground_mean + background_mean) / groups
