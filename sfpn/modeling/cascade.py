"""Cascade R-CNN's box heads: a sequence of box stages, each trained on the previous stage's
refined boxes at a higher IoU threshold."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CascadeConfig
from ..overrides import check_not_empty, check_same_lengths
from .boxes import clip_boxes_
from .roi_heads import RoIHeads


class CascadeRoIHeads(nn.Module):
    """``len(iou_thresholds)`` box stages (class-agnostic regression, their own box-coder weights).

    Training: stage 1 samples the RPN proposals (ground truth added) as :class:`RoIHeads` does;
    stage ``t > 1`` takes stage ``t - 1``'s refined boxes (no gradient) and relabels all of them at
    its own IoU threshold. Losses ``loss_cls_s{t}``, ``loss_box_reg_s{t}`` are weighted by
    ``stage_weights``.
    Inference: the boxes are refined stage by stage; the class scores are the mean of the stages'
    softmax scores, the boxes the last stage's.

    forward as :class:`RoIHeads`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        iou_thresholds: tuple[float, ...] = CascadeConfig.iou_thresholds,
        stage_weights: tuple[float, ...] = CascadeConfig.stage_weights,
        stage_box_coder_weights: tuple[tuple[float, float, float, float], ...] = CascadeConfig.box_coder_weights,
        **box_options,
    ):
        super().__init__()
        stages = (tuple(iou_thresholds), tuple(stage_weights), tuple(stage_box_coder_weights))
        check_same_lengths("iou_thresholds, stage_weights and stage_box_coder_weights", stages, "one entry per stage")
        check_not_empty("iou_thresholds", tuple(iou_thresholds))
        box_options.pop("fg_iou_threshold", None)
        box_options.pop("box_coder_weights", None)
        self.stages = nn.ModuleList(
            RoIHeads(in_channels, num_classes, fg_iou_threshold=iou, box_coder_weights=weights,
                     class_agnostic=True, **box_options)
            for iou, weights in zip(iou_thresholds, stage_box_coder_weights)
        )
        self.stage_weights = tuple(stage_weights)

    @classmethod
    def from_config(cls, config, in_channels: int, num_classes: int, cascade_config: CascadeConfig) -> CascadeRoIHeads:
        """The stages of a :class:`sfpn.config.RoIHeadsConfig` and a :class:`sfpn.config.CascadeConfig`."""
        return cls(
            in_channels, num_classes, iou_thresholds=cascade_config.iou_thresholds,
            stage_weights=cascade_config.stage_weights, stage_box_coder_weights=cascade_config.box_coder_weights,
            **dataclasses.asdict(config),
        )

    @torch.no_grad()
    def _refine(self, stage: RoIHeads, deltas, boxes: list[torch.Tensor], image_sizes) -> list[torch.Tensor]:
        refined = stage.box_coder.decode(deltas.detach(), torch.cat(boxes))
        return [clip_boxes_(b, size) for b, size in zip(refined.split([b.shape[0] for b in boxes]), image_sizes)]

    def forward(self, features, proposals: list[torch.Tensor], image_sizes, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            return [], self._losses(features, proposals, image_sizes, targets)
        return self._detections(features, proposals, image_sizes), {}

    def _losses(self, features, proposals, image_sizes, targets) -> dict[str, torch.Tensor]:
        losses = {}
        boxes = proposals
        for index, (stage, weight) in enumerate(zip(self.stages, self.stage_weights)):
            sampled = stage.label(boxes, targets, add_ground_truth=index == 0, subsample=index == 0)
            scores, deltas = stage.predict(features, sampled.boxes)
            stage_losses = stage.box_losses(scores, deltas, sampled, suffix=f"_s{index + 1}")
            losses.update({name: weight * value for name, value in stage_losses.items()})
            if index + 1 < len(self.stages):
                boxes = self._refine(stage, deltas, sampled.boxes, image_sizes)
        return losses

    @torch.no_grad()
    def _detections(self, features, proposals, image_sizes) -> list[dict[str, torch.Tensor]]:
        boxes, probabilities = proposals, []
        for index, stage in enumerate(self.stages):
            scores, deltas = stage.predict(features, boxes)
            probabilities.append(F.softmax(scores.float(), dim=1))
            if index + 1 < len(self.stages):
                boxes = self._refine(stage, deltas, boxes, image_sizes)
        last = self.stages[-1]
        return last.postprocess(torch.stack(probabilities).mean(dim=0), deltas, boxes, image_sizes)

    @property
    def detections_per_image(self) -> int:
        return self.stages[-1].detections_per_image
