"""The semantic loss in a torchvision detector: two forward hooks, see :func:`add_semantic_loss`.

Why hooks and not a subclass: torchvision's ``GeneralizedRCNNTransform`` resizes the images and
their targets and pads the batch; the semantic labels must be made from those *transformed*
targets, at the padded batch size, to line up with the logits. A forward hook on
``model.transform`` sees exactly that, and a forward hook on the model adds ``loss_segm`` (the
neck's own weighted loss) to the loss dict it returns, so any ``GeneralizedRCNN`` works without
forking torchvision's code.
"""
from __future__ import annotations

from torch import nn

from ...semantic_labels import IGNORE_LABEL, LABEL_SOURCES, semantic_labels
from .backbone import SFPNBackbone

#: The labels of a batch as torchvision's transform leaves it: :func:`sfpn.semantic_labels.semantic_labels`,
#: the one label-map helper, which the native detectors use too.
semantic_targets = semantic_labels


class SemanticLoss:
    """The two forward hooks :func:`add_semantic_loss` installs, and their state.

    ``capture`` (on ``model.transform``) keeps the transformed targets, the resized image sizes and
    the padded batch size; ``add_loss`` (on the model) turns them into labels and adds the neck's
    loss, ``alpha * CE(logits, labels)``, to the loss dict the model returns while training.
    """

    def __init__(self, labels_from: str):
        if labels_from not in LABEL_SOURCES:
            raise ValueError(f"labels_from must be one of {LABEL_SOURCES}, got {labels_from!r}")
        self.labels_from = labels_from
        self._batch = None
        self._handles = []

    def attach(self, model: nn.Module) -> None:
        self._handles = [
            model.transform.register_forward_hook(self.capture),
            model.register_forward_hook(self.add_loss),
        ]

    def remove(self) -> None:
        """Takes both hooks off the model: its loss dict is torchvision's again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def capture(self, transform: nn.Module, inputs, output) -> None:
        images, targets = output
        self._batch = (tuple(images.tensors.shape[-2:]), images.image_sizes, targets) if targets is not None else None

    def add_loss(self, model: nn.Module, inputs, output):
        batch, self._batch = self._batch, None
        if not model.training or not isinstance(output, dict) or batch is None:
            return None  # evaluation: the logits stay in the backbone for the caller
        # Training: take the logits, so that the backbone does not hold their graph after the step.
        logits, model.backbone.semantic_logits = model.backbone.semantic_logits, None
        padded_size, image_sizes, targets = batch
        labels = semantic_labels(targets, image_sizes, padded_size, self.labels_from).to(logits.device)
        num_classes = logits.shape[1]
        if ((labels >= num_classes) & (labels != IGNORE_LABEL)).any():
            raise ValueError(
                f"semantic labels must lie in [0, {num_classes}) or be {IGNORE_LABEL}: the backbone was "
                f"built with num_semantic_classes={num_classes}, fewer than the targets' labels need"
            )
        output.update(model.backbone.neck.losses(logits, labels))
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(labels_from={self.labels_from!r})"


def add_semantic_loss(model: nn.Module, alpha: float = 0.2, labels_from: str = "masks") -> nn.Module:
    """Makes a torchvision ``GeneralizedRCNN`` with an :class:`SFPNBackbone` train the semantic
    branch: its training loss dict gains ``loss_segm = alpha * CE(semantic logits, labels)``.

    The labels come from the targets torchvision's transform has resized (``labels_from``: their
    ``"masks"``, their ``"boxes"``, a ``"semantic"`` map per image, or ``"auto"``: the first of
    these a target has), painted at the padded batch size with 255 (ignored) over the padding, so
    they line up with the logits. ``alpha`` becomes the neck's (``model.backbone.neck.alpha``),
    which weighs its loss. Evaluation is unchanged. The model is changed in place (two forward hooks, kept in
    ``model.sfpn_semantic_loss``; ``model.sfpn_semantic_loss.remove()`` takes them off; calling
    again replaces them) and returned.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, SFPNBackbone) or not hasattr(model, "transform"):
        raise TypeError(
            "add_semantic_loss needs a torchvision GeneralizedRCNN (FasterRCNN, MaskRCNN, ...) whose backbone "
            f"is an SFPNBackbone, got {type(model).__name__} with backbone {type(backbone).__name__}"
        )
    if not backbone.has_semantic_branch:
        raise ValueError("the model's SFPNBackbone has no semantic branch (semantic=False), so there is no loss to add")
    previous = getattr(model, "sfpn_semantic_loss", None)
    if previous is not None:
        previous.remove()
    model.sfpn_semantic_loss = SemanticLoss(labels_from)
    backbone.neck.alpha = float(alpha)
    model.sfpn_semantic_loss.attach(model)
    return model
