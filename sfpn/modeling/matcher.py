"""Assigning ground truth to anchors or proposals by IoU, and sampling a balanced minibatch."""
from __future__ import annotations

import torch

from .. import ops
from ..overrides import check_at_most

#: Match labels: 1 foreground, 0 background, -1 ignored (between the thresholds).
FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


class Matcher:
    """Matches each prediction (anchor or proposal) to its best ground-truth box.

    IoU < ``bg_threshold`` -> background, ``>= fg_threshold`` -> foreground, in between -> ignored.
    With ``allow_low_quality_matches``, every prediction tied for a ground-truth box's highest IoU
    (if that IoU is > 0) becomes foreground too, so every ground truth gets at least one match (the
    RPN rule of Faster R-CNN).
    """

    def __init__(self, fg_threshold: float, bg_threshold: float, allow_low_quality_matches: bool = False):
        check_at_most("bg_threshold", bg_threshold, "fg_threshold", fg_threshold)
        self.fg_threshold = fg_threshold
        self.bg_threshold = bg_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, ground_truth: torch.Tensor, predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ground_truth (G, 4)`` and ``predictions (P, 4)`` xyxy boxes -> ``(matched_index (P,)
        int64, match_label (P,) int8)``, by their IoU (:func:`sfpn.ops.box_iou_max`, which reduces
        the ``(G, P)`` IoU matrix without forming it); with no ground truth every prediction is
        background (index 0)."""
        best_iou, matched_index, is_best = ops.box_iou_max(ground_truth, predictions)
        label = torch.full_like(matched_index, IGNORE, dtype=torch.int8)
        if ground_truth.shape[0] == 0:
            return matched_index, label.fill_(BACKGROUND)
        label[best_iou < self.bg_threshold] = BACKGROUND
        label[best_iou >= self.fg_threshold] = FOREGROUND
        if self.allow_low_quality_matches:
            label[is_best] = FOREGROUND
        return matched_index, label


def sample_balanced(
    match_label: torch.Tensor, num_samples: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws at most ``num_samples * positive_fraction`` foreground entries of ``match_label (P,)``
    and fills the rest of ``num_samples`` with background; ignored entries are never drawn.

    Returns:
        ``(positive_index, negative_index)``, int64, each in random order.
    """
    positive = torch.nonzero(match_label == FOREGROUND).squeeze(1)
    negative = torch.nonzero(match_label == BACKGROUND).squeeze(1)
    num_positive = min(positive.numel(), int(num_samples * positive_fraction))
    num_negative = min(negative.numel(), num_samples - num_positive)
    pick_positive = torch.randperm(positive.numel(), device=positive.device, generator=generator)[:num_positive]
    pick_negative = torch.randperm(negative.numel(), device=negative.device, generator=generator)[:num_negative]
    return positive[pick_positive], negative[pick_negative]
