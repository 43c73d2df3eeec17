"""The RoI box head of Faster R-CNN: RoIAlign over P2..P5, 2 fc layers, class-specific boxes."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RoIHeadsConfig
from ..ops import multilevel_roi_align
from .boxes import BoxCoder, clip_boxes_, nms_per_image, nonempty_boxes
from .layers import linear
from .matcher import FOREGROUND, Matcher, sample_balanced

#: The levels RoIs are pooled from (P6 serves the RPN only).
POOLED_LEVELS = ("p2", "p3", "p4", "p5")
POOLED_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


class RoIPooler(nn.Module):
    """``multilevel_roi_align`` over P2..P5 (canonical box 224 px at P4, as FPN).

    forward(features: dict with p2..p5 ``(N, C, H_l, W_l)``, boxes: list of ``(K_i, 4)``)
    -> ``(sum K_i, C, resolution, resolution)``.
    """

    def __init__(self, resolution: int, sampling_ratio: int = 2, aligned: bool = True):
        super().__init__()
        self.resolution = resolution
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features, boxes: list[torch.Tensor]) -> torch.Tensor:
        return multilevel_roi_align(
            [features[name] for name in POOLED_LEVELS], list(boxes), self.resolution, list(POOLED_SCALES),
            self.sampling_ratio, self.aligned,
        )


class FCBoxHead(nn.Module):
    """Flatten and ``num_fc`` x (fc + ReLU): ``(R, C, S, S)`` -> ``(R, fc_dim)``."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, num_fc: int = 2):
        super().__init__()
        dims = [in_channels * resolution * resolution] + [fc_dim] * num_fc
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        self.out_features = fc_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(linear(fc, x), inplace=True)  # in place: the layer's fresh output, unsaved
        return x


class BoxPredictor(nn.Module):
    """Class scores ``(R, num_classes + 1)`` (index 0 = background) and box deltas ``(R, 4 *
    num_classes)`` (class ``c`` in ``1..num_classes`` at columns ``4(c-1) .. 4c-1``), or ``(R, 4)``
    when ``class_agnostic``."""

    def __init__(self, in_features: int, num_classes: int, class_agnostic: bool = False):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 if class_agnostic else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def select_class_deltas(deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``deltas (R, 4C)`` or ``(R, 4)``, foreground ``labels (R,)`` in ``1..C`` -> ``(R, 4)``."""
    if deltas.shape[1] == 4:
        return deltas
    # An explicit class count: reshape cannot infer a -1 dimension when there are no RoIs.
    per_class = deltas.reshape(len(deltas), deltas.shape[1] // 4, 4)
    return per_class[torch.arange(len(deltas), device=deltas.device), labels - 1]


class Proposals:
    """Sampled training proposals of a batch, flattened over images (``R = sum R_i``).

    boxes: list of ``(R_i, 4)``; labels ``(R,)`` int64 (0 background); matched_boxes ``(R, 4)``
    (the matched ground truth, meaningful where ``labels > 0``); matched_index: list of ``(R_i,)``
    indices into each image's ground truth.
    """

    def __init__(self, boxes, labels, matched_boxes, matched_index):
        self.boxes, self.labels, self.matched_boxes, self.matched_index = boxes, labels, matched_boxes, matched_index


class RoIHeads(nn.Module):
    """Box head of Faster R-CNN.

    Training: the ground-truth boxes join each image's proposals; proposals with IoU >= ``fg_iou``
    are foreground (their box's class), the rest background; ``batch_size_per_image`` are sampled
    at ``positive_fraction``. Losses: CE over the sampled RoIs, smooth-L1 on the foreground's
    class-specific (or, with ``class_agnostic``, shared) deltas normalised by the number of sampled
    RoIs.
    Inference: softmax, per-class boxes clipped to the image, ``score > score_threshold``, per-class
    NMS, the ``detections_per_image`` best.

    forward(features: dict p2..p6, proposals: list of ``(P_i, 4)``, image_sizes, targets=None)
    -> (detections: list of dicts ``boxes (D, 4), scores (D,), labels (D,)`` (eval; empty list in
    training), losses: dict (training)).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        resolution: int = RoIHeadsConfig.resolution,
        sampling_ratio: int = RoIHeadsConfig.sampling_ratio,
        fc_dim: int = RoIHeadsConfig.fc_dim,
        num_fc: int = RoIHeadsConfig.num_fc,
        batch_size_per_image: int = RoIHeadsConfig.batch_size_per_image,
        positive_fraction: float = RoIHeadsConfig.positive_fraction,
        fg_iou_threshold: float = RoIHeadsConfig.fg_iou_threshold,
        class_agnostic: bool = False,
        box_coder_weights: tuple[float, float, float, float] = RoIHeadsConfig.box_coder_weights,
        smooth_l1_beta: float = RoIHeadsConfig.smooth_l1_beta,
        score_threshold: float = RoIHeadsConfig.score_threshold,
        nms_threshold: float = RoIHeadsConfig.nms_threshold,
        detections_per_image: int = RoIHeadsConfig.detections_per_image,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.pooler = RoIPooler(resolution, sampling_ratio)
        self.box_head = FCBoxHead(in_channels, resolution, fc_dim, num_fc)
        self.predictor = BoxPredictor(fc_dim, num_classes, class_agnostic)
        self.box_coder = BoxCoder(box_coder_weights)
        self.matcher = Matcher(fg_iou_threshold, fg_iou_threshold)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.smooth_l1_beta = smooth_l1_beta
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image

    @classmethod
    def from_config(cls, config: RoIHeadsConfig, in_channels: int, num_classes: int, **options) -> RoIHeads:
        """The heads a :class:`sfpn.config.RoIHeadsConfig` describes (``options``: the subclass's own)."""
        return cls(in_channels, num_classes, **dataclasses.asdict(config), **options)

    def forward(self, features, proposals: list[torch.Tensor], image_sizes, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            losses, _ = self.forward_train(features, proposals, targets)
            return [], losses
        return self.forward_eval(features, proposals, image_sizes), {}

    def predict(self, features, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(R, C + 1)`` and deltas ``(R, 4C or 4)`` of the boxes (list of ``(R_i, 4)``)."""
        return self.predictor(self.box_head(self.pooler(features, boxes)))

    def forward_train(self, features, proposals, targets) -> tuple[dict[str, torch.Tensor], "Proposals"]:
        """Box losses and the sampled proposals they were computed on."""
        sampled = self.label(proposals, targets, add_ground_truth=True, subsample=True)
        scores, deltas = self.predict(features, sampled.boxes)
        return self.box_losses(scores, deltas, sampled), sampled

    def forward_eval(self, features, proposals, image_sizes) -> list[dict[str, torch.Tensor]]:
        scores, deltas = self.predict(features, proposals)
        return self.postprocess(F.softmax(scores.float(), dim=1), deltas, proposals, image_sizes)

    @torch.no_grad()
    def label(self, proposals: list[torch.Tensor], targets, add_ground_truth: bool, subsample: bool) -> "Proposals":
        """Matches each image's proposals (with its ground-truth boxes added if asked) to the ground
        truth and, if asked, samples ``batch_size_per_image`` at ``positive_fraction``; the
        foreground comes first in each image's list."""
        boxes, labels, matched_boxes, matched_indices = [], [], [], []
        for image_proposals, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(image_proposals)
            candidates = torch.cat((image_proposals, gt_boxes)) if add_ground_truth else image_proposals
            matched, match_label = self.matcher(gt_boxes, candidates)
            if subsample:
                positive, negative = sample_balanced(match_label, self.batch_size_per_image, self.positive_fraction)
            else:
                positive = torch.nonzero(match_label == FOREGROUND).squeeze(1)
                negative = torch.nonzero(match_label != FOREGROUND).squeeze(1)
            chosen = torch.cat((positive, negative))
            label = torch.zeros(len(chosen), dtype=torch.int64, device=chosen.device)
            if len(gt_boxes):
                label[: len(positive)] = target["labels"].to(chosen.device)[matched[positive]]
                matched_boxes.append(gt_boxes[matched[chosen]])
            else:
                matched_boxes.append(torch.zeros_like(candidates[chosen]))
            boxes.append(candidates[chosen])
            labels.append(label)
            matched_indices.append(matched[chosen])
        return Proposals(boxes, torch.cat(labels), torch.cat(matched_boxes), matched_indices)

    def box_losses(self, scores, deltas, sampled: Proposals, suffix: str = "") -> dict[str, torch.Tensor]:
        """``scores (R, num_classes + 1)``, ``deltas (R, 4C or 4)`` for the sampled RoIs."""
        labels = sampled.labels
        loss_cls = F.cross_entropy(scores, labels) if len(labels) else scores.sum() * 0
        foreground = torch.nonzero(labels > 0).squeeze(1)
        reference = torch.cat(sampled.boxes)
        targets = self.box_coder.encode(reference[foreground], sampled.matched_boxes[foreground])
        loss_box = F.smooth_l1_loss(
            select_class_deltas(deltas[foreground], labels[foreground]), targets, beta=self.smooth_l1_beta,
            reduction="sum",
        ) / max(len(labels), 1)
        return {f"loss_cls{suffix}": loss_cls, f"loss_box_reg{suffix}": loss_box}

    @torch.no_grad()
    def postprocess(self, probabilities, deltas, proposals, image_sizes) -> list[dict[str, torch.Tensor]]:
        """``probabilities (R, C + 1)``, ``deltas (R, 4C or 4)`` of ``proposals`` (list of ``(R_i, 4)``)
        -> per-image detections, the batch's RoIs filtered together and NMS in one call."""
        num_rois, num_images = probabilities.shape[0], len(proposals)
        boxes = self.box_coder.decode(deltas, torch.cat(proposals))
        boxes = boxes.reshape(num_rois, boxes.shape[1] // 4, 4)  # no -1: there may be no RoIs
        for image_boxes, image_size in zip(boxes.split([p.shape[0] for p in proposals]), image_sizes):
            clip_boxes_(image_boxes, image_size)
        images = torch.cat([torch.full((p.shape[0],), i, dtype=torch.int64, device=boxes.device)
                            for i, p in enumerate(proposals)])
        scores = probabilities[:, 1:]
        roi, cls = torch.nonzero(scores > self.score_threshold, as_tuple=True)
        boxes, scores, images = boxes.expand(num_rois, self.num_classes, 4)[roi, cls], scores[roi, cls], images[roi]
        valid = nonempty_boxes(boxes)
        boxes, scores, cls, images = boxes[valid], scores[valid], cls[valid], images[valid]
        keep = nms_per_image(boxes, scores, images * self.num_classes + cls, images, num_images, self.nms_threshold,
                             self.detections_per_image)
        return [{"boxes": boxes[k], "scores": scores[k], "labels": cls[k] + 1} for k in keep]
