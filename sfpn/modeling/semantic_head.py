"""SFPN's semantic branch (docs/design.md, "The neck"): per-level 1x1 convs, every level resized to the
stride-8 grid and summed (a finer level shrunk before its conv, which is the same sum),
``num_convs`` x (3x3 conv + GroupNorm + ReLU), then a 1x1 conv to the class logits and a 1x1 conv
+ ReLU to the embedding that is fused back into the pyramid.

The fused ops (``sfpn.ops.resize_sum``, ``group_norm_relu``, ``semantic_cross_entropy``,
``upsample_cross_entropy``) run their Triton kernels on CUDA and, but for
``semantic_cross_entropy``'s pure-PyTorch reference, C++ kernels on the CPU (the dispatcher's
choice, see ``sfpn.ops``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import NeckConfig
from ..ops.resize_sum import MAX_LEVELS
from ..overrides import allowed, check_divisible, check_value
from .layers import Conv2d, conv_relu

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
        embed_channels: channels of the semantic embedding fused into the pyramid; 0 makes none
            (a branch that only predicts classes, as Panoptic FPN's).
        num_groups: GroupNorm groups (must divide ``channels``).
        target_level: index of the level whose grid the branch works on (1: stride 8 for P2..P5).
        num_thing_classes: labels ``1..num_thing_classes`` are things, the labels above them
            stuff; None: every label but 0 is a thing (labels painted from instances).
        loss_average: how :meth:`loss` averages the pixels' cross-entropy, one of
            :data:`LOSS_AVERAGES`:

            * ``"pixels"``: every labelled pixel alike (the paper's CE);
            * ``"foreground_background"``: the mean over thing pixels and the mean over the
              others (background and stuff), averaged, so that the not-things (~87% of the
              synthetic sets' pixels) cannot drown the things;
            * ``"median_frequency"``: median-frequency balancing computed on each batch's
              labels, each class weighted by ``median(n) / n_c``, where ``n_c`` is its labelled
              pixels and the median (the lower middle value) is over the classes present, so
              every class present weighs as much as the median one.
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
        num_thing_classes: int | None = None,
        loss_average: str = NeckConfig.semantic_loss_average,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not 1 <= len(in_channels) <= MAX_LEVELS:
            raise ValueError(f"in_channels must list 1 to {MAX_LEVELS} levels, got {in_channels}")
        if not 0 <= target_level < len(in_channels):
            raise ValueError(f"target_level must index in_channels (0..{len(in_channels) - 1}), got {target_level}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if embed_channels < 0:
            raise ValueError(f"embed_channels must be >= 0, got {embed_channels}")
        if num_thing_classes is not None and not 0 <= num_thing_classes < num_classes:
            raise ValueError(f"num_thing_classes must be in [0, num_classes = {num_classes}), got {num_thing_classes}")
        check_value("loss_average", loss_average, LOSS_AVERAGES)
        check_divisible("channels", channels, "num_groups", num_groups)
        self.num_classes = num_classes
        self.num_thing_classes = num_classes - 1 if num_thing_classes is None else num_thing_classes
        self.target_level = target_level
        self.loss_average = loss_average
        self.laterals = nn.ModuleList(Conv2d(c, channels, 1) for c in in_channels)
        # Each block's GroupNorm holds the affine parameters; the fused op applies them.
        self.convs = nn.ModuleList(Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(num_convs))
        self.norms = nn.ModuleList(nn.GroupNorm(num_groups, channels) for _ in range(num_convs))
        self.logits = Conv2d(channels, num_classes, 1)
        self.embed = nn.Conv2d(channels, embed_channels, 1) if embed_channels > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        embed = [] if self.embed is None else [self.embed]
        for conv in [*self.laterals, *self.convs, *embed]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.logits.weight, std=0.01)
        nn.init.zeros_(self.logits.bias)
        for norm in self.norms:
            norm.reset_parameters()

    def forward(
        self, features: list[torch.Tensor], compute_logits: bool = True
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Semantic logits and embedding on the target level's grid.

        Args:
            features: one map per level, ``(N, in_channels[i], H_i, W_i)``, finest first.
            compute_logits: False skips the logits conv (inference needs only the embedding).

        Returns:
            ``(logits (N, K, H_t, W_t) or None, embedding (N, embed_channels, H_t, W_t) or None
            when embed_channels is 0)`` where ``(H_t, W_t)`` is ``features[target_level]``'s size.
        """
        if len(features) != len(self.laterals):
            raise ValueError(f"features must hold {len(self.laterals)} levels, got {len(features)}")
        size = features[self.target_level].shape[-2:]
        laterals: list[torch.Tensor] = []
        for i, lateral in enumerate(self.laterals):  # TorchScript iterates a ModuleList, never zips it
            # A 1x1 conv commutes with bilinear resizing (whose weights sum to 1), so a level finer
            # than the target is shrunk before its conv: the same sum, the conv on the smaller grid.
            level = features[i]
            if i < self.target_level:
                level = shrink_bilinear(level, [size[0], size[1]])
            laterals.append(lateral(level))
        x = ops.resize_sum(laterals, size)
        for conv, norm in zip(self.convs, self.norms):
            x = ops.group_norm_relu(conv(x), norm.num_groups, norm.weight, norm.bias, norm.eps)
        logits = self.logits(x) if compute_logits else None
        embedding: Optional[torch.Tensor] = None
        if self.embed is not None:
            if torch.jit.is_scripting():  # TorchScript takes no module argument: ATen's conv and ReLU
                embedding = F.relu(self.embed(x), inplace=True)
            else:
                embedding = conv_relu(self.embed, x)
        return logits, embedding

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
            ``"foreground_background"``, a batch without thing pixels (or without others) gives
            the other group's mean alone.
        """
        same_grid = tuple(labels.shape[-2:]) == tuple(logits.shape[-2:])
        cross_entropy = ops.semantic_cross_entropy if same_grid else ops.upsample_cross_entropy

        def mean_over_labelled(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            labelled = (target != ignore_index).sum()
            return cross_entropy(logits, target, ignore_index, reduction="sum") / labelled.clamp(min=1), labelled > 0

        if self.loss_average == "pixels":
            return mean_over_labelled(labels)[0]
        if self.loss_average == "median_frequency":
            counts = class_pixel_counts(labels, self.num_classes, ignore_index)
            weight = median_frequency_weights(counts)
            summed = cross_entropy(logits, labels, ignore_index, reduction="sum", weight=weight)
            return summed / (counts * weight).sum().clamp(min=1).to(summed.dtype)
        thing = (labels > 0) & (labels <= self.num_thing_classes)
        thing_mean, has_thing = mean_over_labelled(labels.masked_fill(~thing, ignore_index))
        other_mean, has_other = mean_over_labelled(labels.masked_fill(thing, ignore_index))
        # Tensors, not Python branches: no host sync, and the graph stays one shape under compile.
        groups = (has_thing.float() + has_other.float()).clamp(min=1)
        return (thing_mean + other_mean) / groups


def shrink_bilinear(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for ``size`` no larger than
    x's: ``(N, C, H, W)`` -> ``(N, C, *size)``. Halving both sides exactly is the 2x2 mean (each
    output's bilinear taps are the two middle source pixels of its window, weighted 1/2), computed
    as ``avg_pool2d``: the same values, and on the CPU a backward 3x faster in bf16 than the
    bilinear one (the P2 -> P3 shrink of the COCO shape: 36 against 99 ms)."""
    if x.shape[-2] == 2 * size[0] and x.shape[-1] == 2 * size[1]:
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def class_pixel_counts(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``(K,)`` int64 labelled pixels of each class in ``labels (N, H, W)``; ignored pixels and
    labels past ``K`` count nowhere. On the CPU by one ``torch.bincount`` (the index-and-scatter
    makes five passes over the labels: 1.1-1.9 ms of the default run's step against 0.3-0.4);
    elsewhere by the scatter, which needs no host sync (``bincount`` reads the labels' maximum to
    size its result)."""
    count = _counts_by_bincount if labels.device.type == "cpu" else _counts_by_scatter
    return count(labels, num_classes, ignore_index)


def _counts_by_bincount(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """:func:`class_pixel_counts` by ``torch.bincount``; a negative label raises a ValueError."""
    try:
        counts = torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes]
    except RuntimeError as error:
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"labels must be class indices in [0, {num_classes}) or ignore_index "
                             f"{ignore_index}, got {int(labels.min())}") from error
        raise
    if 0 <= ignore_index < num_classes:
        counts[ignore_index] = 0
    return counts


def _counts_by_scatter(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """:func:`class_pixel_counts` by an index-and-scatter, without a host sync."""
    index = torch.where(labels == ignore_index, num_classes, labels.long()).clamp(0, num_classes).flatten()
    counts = torch.zeros(num_classes + 1, dtype=torch.int64, device=labels.device)
    return counts.scatter_add_(0, index, torch.ones(1, dtype=torch.int64, device=labels.device).expand_as(index))[:num_classes]


def median_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """Median-frequency balancing: ``(K,)`` float64 weights ``median(counts present) / counts``
    for the classes present in ``counts (K,)``, 0 for the others (which no pixel carries). The
    median is the lower middle value; a class with the median count weighs 1."""
    counts = counts.double()
    present = counts > 0
    median = torch.where(present, counts, float("nan")).nanmedian()
    return torch.where(present, median / counts.clamp(min=1), 0.0)
