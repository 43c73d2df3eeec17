"""Region proposal network over P2..P6: anchors, objectness and deltas, proposals, losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RPNConfig
from .anchors import AnchorGenerator
from .boxes import BoxCoder, clip_boxes_, nms_per_image, nonempty_boxes
from .layers import Conv2d, conv_relu
from .matcher import FOREGROUND, Matcher, sample_balanced


class RPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then 1x1 convs for objectness and box deltas, on every level.

    forward(features: list of ``(N, C, H_l, W_l)``) -> (objectness list of ``(N, A, H_l, W_l)``,
    deltas list of ``(N, 4A, H_l, W_l)``).
    """

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = Conv2d(channels, num_anchors, 1)
        self.deltas = Conv2d(channels, 4 * num_anchors, 1)
        for conv in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features):
        objectness, deltas = [], []
        for x in features:
            x = conv_relu(self.conv, x)
            objectness.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return objectness, deltas


class RPN(nn.Module):
    """Proposals and losses of the region proposal network.

    Per image and level the ``pre_nms_topk`` best anchors are decoded, clipped and freed of empty
    boxes; NMS runs per image and level (one ``batched_nms`` call for the batch) and the
    ``post_nms_topk`` best proposals of each image survive. Training matches anchors to ground
    truth (IoU >= 0.7 foreground, < 0.3 background, best anchors of each box foreground too), samples
    ``batch_size_per_image`` anchors at ``positive_fraction`` and returns BCE objectness and
    smooth-L1 box losses, both normalised by the number of sampled anchors.

    forward(features: list of ``(N, C, H_l, W_l)`` P2..P6, image_sizes: list of ``(h, w)``,
    targets: list of dicts with ``boxes (G, 4)`` or None) -> (proposals: list of ``(P_i, 4)``,
    losses: dict, empty in eval).
    """

    def __init__(
        self,
        channels: int,
        anchor_generator: AnchorGenerator,
        *,
        pre_nms_topk: tuple[int, int] = (RPNConfig.pre_nms_topk_train, RPNConfig.pre_nms_topk_test),
        post_nms_topk: tuple[int, int] = (RPNConfig.post_nms_topk_train, RPNConfig.post_nms_topk_test),
        nms_threshold: float = RPNConfig.nms_threshold,
        min_size: float = RPNConfig.min_size,
        fg_iou_threshold: float = RPNConfig.fg_iou_threshold,
        bg_iou_threshold: float = RPNConfig.bg_iou_threshold,
        batch_size_per_image: int = RPNConfig.batch_size_per_image,
        positive_fraction: float = RPNConfig.positive_fraction,
        smooth_l1_beta: float = RPNConfig.smooth_l1_beta,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = RPNHead(channels, anchor_generator.num_anchors)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=True)
        self.pre_nms_topk = pre_nms_topk  # (train, test)
        self.post_nms_topk = post_nms_topk
        self.nms_threshold = nms_threshold
        self.min_size = min_size
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.smooth_l1_beta = smooth_l1_beta

    @classmethod
    def from_config(cls, config: RPNConfig, channels: int, strides: tuple[int, ...]) -> RPN:
        """The RPN a :class:`sfpn.config.RPNConfig` describes, on ``channels``-channel levels of ``strides``."""
        return cls(
            channels, AnchorGenerator(config.anchor_sizes, config.aspect_ratios, strides),
            pre_nms_topk=(config.pre_nms_topk_train, config.pre_nms_topk_test),
            post_nms_topk=(config.post_nms_topk_train, config.post_nms_topk_test), nms_threshold=config.nms_threshold,
            min_size=config.min_size, fg_iou_threshold=config.fg_iou_threshold, bg_iou_threshold=config.bg_iou_threshold,
            batch_size_per_image=config.batch_size_per_image, positive_fraction=config.positive_fraction,
            smooth_l1_beta=config.smooth_l1_beta,
        )

    def forward(self, features: list[torch.Tensor], image_sizes: list[tuple[int, int]], targets=None):
        objectness, deltas = self.head(features)
        num_images = features[0].shape[0]
        anchors = self.anchor_generator([f.shape[-2:] for f in features], features[0].device)
        # (N, A, H, W) -> (N, H*W*A) and (N, 4A, H, W) -> (N, H*W*A, 4), the anchors' layout.
        objectness = [o.permute(0, 2, 3, 1).reshape(num_images, -1) for o in objectness]
        deltas = [
            d.reshape(num_images, -1, 4, *d.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(num_images, -1, 4)
            for d in deltas
        ]
        proposals = self._proposals(anchors, objectness, deltas, image_sizes)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            losses = self._losses(torch.cat(anchors), torch.cat(objectness, 1), torch.cat(deltas, 1), targets)
        return proposals, losses

    @torch.no_grad()
    def _proposals(self, anchors, objectness, deltas, image_sizes) -> list[torch.Tensor]:
        index = 0 if self.training else 1
        pre_nms_topk, post_nms_topk = self.pre_nms_topk[index], self.post_nms_topk[index]
        num_images, device = objectness[0].shape[0], objectness[0].device
        picked_deltas, picked_anchors, scores, levels = [], [], [], []
        for level, (level_anchors, level_scores, level_deltas) in enumerate(zip(anchors, objectness, deltas)):
            k = min(pre_nms_topk, level_scores.shape[1])
            top_scores, top_index = level_scores.topk(k, dim=1)  # (N, k)
            picked_deltas.append(level_deltas.gather(1, top_index[..., None].expand(-1, -1, 4)))
            picked_anchors.append(level_anchors[top_index])
            scores.append(top_scores)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=device))
        # Every image and level at once from here, image-major: K candidates per image.
        levels = torch.cat(levels)  # (K,)
        boxes = self.box_coder.decode(torch.cat(picked_deltas, 1).flatten(0, 1),
                                      torch.cat(picked_anchors, 1).flatten(0, 1))
        for image_boxes, image_size in zip(boxes.view(num_images, levels.shape[0], 4), image_sizes):
            clip_boxes_(image_boxes, image_size)
        scores = torch.cat(scores, 1).flatten()
        images = torch.arange(num_images, device=device).repeat_interleave(levels.shape[0])
        valid = nonempty_boxes(boxes, self.min_size) & torch.isfinite(scores)
        boxes, scores, images = boxes[valid], scores[valid], images[valid]
        # NMS per image and level: the level ids of image i are i * L .. i * L + L - 1.
        categories = images * len(anchors) + levels.repeat(num_images)[valid]
        keep = nms_per_image(boxes, scores, categories, images, num_images, self.nms_threshold, post_nms_topk)
        return [boxes[image_keep] for image_keep in keep]

    def _losses(self, anchors, objectness, deltas, targets) -> dict[str, torch.Tensor]:
        """``anchors (A, 4)``, ``objectness (N, A)``, ``deltas (N, A, 4)``."""
        sampled_images, sampled_anchors, sampled_labels, positive_targets = [], [], [], []
        for image, target in enumerate(targets):
            gt_boxes = target["boxes"].to(anchors)
            with torch.no_grad():
                matched, label = self.matcher(gt_boxes, anchors)
                positive, negative = sample_balanced(label, self.batch_size_per_image, self.positive_fraction)
            chosen = torch.cat((positive, negative))
            sampled_images.append(torch.full_like(chosen, image))
            sampled_anchors.append(chosen)
            sampled_labels.append((label[chosen] == FOREGROUND).to(objectness.dtype))
            positive_targets.append(self.box_coder.encode(anchors[positive], gt_boxes[matched[positive]]))
        images, chosen = torch.cat(sampled_images), torch.cat(sampled_anchors)
        labels = torch.cat(sampled_labels)
        normaliser = max(len(targets) * self.batch_size_per_image, 1)
        loss_cls = F.binary_cross_entropy_with_logits(objectness[images, chosen], labels, reduction="sum")
        positive = labels > 0
        loss_loc = F.smooth_l1_loss(
            deltas[images[positive], chosen[positive]], torch.cat(positive_targets), beta=self.smooth_l1_beta,
            reduction="sum",
        )
        return {"loss_rpn_cls": loss_cls / normaliser, "loss_rpn_loc": loss_loc / normaliser}
