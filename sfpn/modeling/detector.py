"""Two-stage detectors: image batching and normalisation, backbone, neck, RPN, RoI heads."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import upsample_argmax
from ..ops.normalize_images import normalize_images, normalize_images_reference
from ..semantic_labels import semantic_labels
from .postprocess import panoptic_at_original_size

#: ImageNet statistics of RGB images in [0, 1] (torchvision's pretrained weights expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FasterRCNN(nn.Module):
    """Faster R-CNN with an FPN or SFPN neck (the semantic loss joins when the branch is on).

    forward(images: list of ``(3, H_i, W_i)`` float RGB in [0, 1], targets: list of dicts (training)
    with ``boxes (K, 4)`` xyxy, ``labels (K,)`` in 1..num_classes and, for SFPN with alpha > 0,
    optionally ``semantic (H_i, W_i)`` int64; without it the semantic labels are painted from the
    target's ``masks``, else its ``boxes``):

    - training: dict ``loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg`` (+ ``loss_segm``,
      already times alpha, when the branch is on and alpha > 0);
    - eval: per image ``{boxes (D, 4), scores (D,), labels (D,)}`` (+ ``semantic (H_i, W_i)``
      int64 when the branch is on), in the coordinates of the given images; with the branch on
      also ``semantic_logits (K, ceil(H_i / 8), ceil(W_i / 8))``, the head's own output on its
      stride-8 grid.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn: nn.Module, roi_heads: nn.Module,
                 size_divisibility: int = 32, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).reshape(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).reshape(3, 1, 1), persistent=False)
        self.config = None  # set by sfpn.build_detector

    def preprocess(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise and pad: list of ``(3, H_i, W_i)`` -> ``(N, 3, H, W)`` and the sizes ``(H_i, W_i)``;
        H and W are the largest sizes rounded up to a multiple of ``size_divisibility``, the padding
        at the bottom and right is zero. Each image is normalised in float32 and written once into
        the batch (:func:`sfpn.ops.normalize_images`), in the layout the backbone reads
        (:meth:`input_memory_format`) and, under CPU or CUDA autocast, in its dtype: the cast the
        first convolution would make, made in the same pass (the same bits)."""
        if not isinstance(images, (list, tuple)) or not images:
            raise TypeError("images must be a non-empty list of (3, H, W) tensors")
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"images[{i}] must be (3, H, W), got shape {tuple(image.shape)}")
        sizes = [tuple(image.shape[-2:]) for image in images]
        divisor = self.size_divisibility
        height = -(-max(h for h, _ in sizes) // divisor) * divisor
        width = -(-max(w for _, w in sizes) // divisor) * divisor
        device = self.pixel_mean.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else self.pixel_mean.dtype
        images = [image.to(self.pixel_mean) for image in images]
        channels_last = self.input_memory_format() == torch.channels_last
        # The op in eager mode; its reference where graphs are traced (they must run anywhere) and for
        # models not in float32, whose images the op does not take (autocast dtypes it always takes).
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or self.pixel_mean.dtype != torch.float32:
            batch = normalize_images_reference(images, self.pixel_mean, self.pixel_std, (height, width), dtype,
                                               channels_last)
        else:
            batch = normalize_images(images, self.pixel_mean, self.pixel_std, (height, width), dtype, channels_last)
        return batch, sizes

    def input_memory_format(self) -> torch.memory_format:
        """The layout of the image batch: channels_last when the backbone's weights are (after
        ``model.to(memory_format=torch.channels_last)``), so that its first convolution reads the
        batch as it is instead of converting it."""
        weight = next((p for p in self.backbone.parameters() if p.dim() == 4), None)
        if weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        return torch.contiguous_format

    def _check_targets(self, targets, num_images: int) -> None:
        if targets is None or len(targets) != num_images:
            raise ValueError(f"training needs one target dict per image ({num_images}), got "
                             f"{None if targets is None else len(targets)}")
        for i, target in enumerate(targets):
            boxes, labels = target.get("boxes"), target.get("labels")
            if boxes is None or labels is None:
                raise ValueError(f"targets[{i}] must have 'boxes' and 'labels'")
            if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
                raise ValueError(f"targets[{i}]: boxes must be (K, 4) and labels (K,), got "
                                 f"{tuple(boxes.shape)} and {tuple(labels.shape)}")

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        batch, sizes = self.preprocess(images)
        labels = None
        if self.training:
            self._check_targets(targets, len(images))
            if self.neck.trains_semantic:
                labels = semantic_labels(targets, sizes, tuple(batch.shape[-2:])).to(batch.device)
        pyramid, logits, semantic_losses = self.neck(self.backbone(batch), labels)
        proposals, losses = self.rpn(list(pyramid.values()), sizes, targets if self.training else None)
        detections, head_losses = self.roi_heads(pyramid, proposals, sizes, targets if self.training else None)
        if self.training:
            return {**losses, **head_losses, **semantic_losses}
        if logits is not None:
            stride = batch.shape[-2] // logits.shape[-2]
            for detection, image_logits, (height, width) in zip(detections, logits, sizes):
                detection["semantic"] = upsample_argmax(image_logits, batch.shape[-2:], (height, width))
                detection["semantic_logits"] = image_logits[:, : -(-height // stride), : -(-width // stride)]
        return detections

    @torch.no_grad()
    def predict_panoptic(self, images: list[torch.Tensor], label_space) -> list[tuple[torch.Tensor, list[dict]]]:
        """Panoptic segmentation of each image, in eval mode, with the thresholds of the config's
        ``panoptic`` section: per image ``(segment_ids (H_i, W_i) int32, segments)`` (see
        :func:`~sfpn.modeling.postprocess.panoptic_at_original_size`; ``label_space``, a
        :class:`~sfpn.data.panoptic.PanopticLabelSpace`, comes from the dataset's categories).
        Needs the semantic branch (``neck.semantic``)."""
        if self.config is None:
            raise ValueError("predict_panoptic needs the detector's config (build it with sfpn.build_detector)")
        was_training = self.training
        self.eval()
        try:
            outputs = self(images)
        finally:
            self.train(was_training)
        return [panoptic_at_original_size(output, tuple(image.shape[-2:]), tuple(image.shape[-2:]), label_space, self.config.panoptic)
                for image, output in zip(images, outputs)]


class MaskRCNN(FasterRCNN):
    """Faster R-CNN with :class:`~sfpn.modeling.mask_head.MaskRoIHeads`: training targets need
    ``masks (K, H_i, W_i)`` uint8 and add ``loss_mask``; eval outputs add ``masks (D, H_i, W_i)`` bool."""


class CascadeRCNN(FasterRCNN):
    """Faster R-CNN with :class:`~sfpn.modeling.cascade.CascadeRoIHeads`: the box losses are per
    stage, ``loss_cls_s{t}`` and ``loss_box_reg_s{t}``, already weighted by the stage weights."""
