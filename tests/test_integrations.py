"""The SFPN neck inside torchvision's Faster and Mask R-CNN (sfpn.integrations.torchvision).

Models are CPU-sized: a random ResNet-18 body (BatchNorm, all layers training), 64-channel pyramid
and heads, few proposals, images of 100-170 pixels.
"""
import copy

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection import FasterRCNN, MaskRCNN  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402
from torchvision.models.detection import roi_heads as torchvision_roi_heads  # noqa: E402
from torchvision.models.detection import rpn as torchvision_rpn  # noqa: E402
from torchvision.ops import FrozenBatchNorm2d  # noqa: E402
from torchvision.ops import boxes as torchvision_box_ops  # noqa: E402

from sfpn.semantic_labels import semantic_from_boxes  # noqa: E402
from sfpn import ops as sfpn_ops  # noqa: E402
from sfpn.integrations.torchvision import (  # noqa: E402
    MultiScaleRoIAlign,
    SFPNBackbone,
    add_semantic_loss,
    load_fpn_state_dict,
    semantic_targets,
    sfpn_resnet_backbone,
    use_sfpn_ops,
)

CHANNELS = 64
NUM_CLASSES = 4  # torchvision's count: background + 3 classes
RETURN_LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
NECK_OPTIONS = dict(semantic_channels=CHANNELS, semantic_convs=2, num_groups=8)
COLOURS = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.2], [0.2, 0.1, 0.9]])


def small_detector(kind: str, backbone: nn.Module) -> nn.Module:
    """torchvision's detector around ``backbone`` with small heads and few proposals."""
    options = dict(
        min_size=128,
        max_size=192,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        box_batch_size_per_image=64,
        box_detections_per_img=20,
        box_head=TwoMLPHead(CHANNELS * 7 * 7, 128),
        box_predictor=FastRCNNPredictor(128, NUM_CLASSES),
    )
    if kind == "faster":
        return FasterRCNN(backbone, **options)
    return MaskRCNN(
        backbone,
        mask_head=MaskRCNNHeads(CHANNELS, (CHANNELS, CHANNELS), 1),
        mask_predictor=MaskRCNNPredictor(CHANNELS, CHANNELS, NUM_CLASSES),
        **options,
    )


def sfpn_backbone(**neck_options) -> SFPNBackbone:
    options = dict(NECK_OPTIONS, **neck_options)
    return sfpn_resnet_backbone("resnet18", NUM_CLASSES, out_channels=CHANNELS, **options)


def synthetic_batch(seed: int = 0):
    """Two images of different sizes with coloured rectangles, their boxes, labels and masks."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for height, width in ((140, 170), (160, 124)):
        image = 0.3 * torch.rand(3, height, width, generator=generator)
        boxes, labels, masks = [], [], []
        for label in (1, 2, 3):
            h, w = (int(v) for v in torch.randint(24, 64, (2,), generator=generator))
            y, x = int(torch.randint(0, height - h, (1,), generator=generator)), int(torch.randint(0, width - w, (1,), generator=generator))
            image[:, y : y + h, x : x + w] = COLOURS[label - 1, :, None, None]
            mask = torch.zeros(height, width, dtype=torch.uint8)
            mask[y : y + h, x : x + w] = 1
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
            masks.append(mask)
        images.append(image)
        # Rectangles painted later cover earlier ones: keep each mask to its visible part.
        for i in range(len(masks)):
            for later in masks[i + 1 :]:
                masks[i] = masks[i] * (1 - later)
        targets.append(
            {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "masks": torch.stack(masks)}
        )
    return images, targets


def train(model: nn.Module, images, targets, steps: int) -> list[dict[str, float]]:
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9)
    model.train()
    history = []
    for _ in range(steps):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({name: loss.item() for name, loss in losses.items()})
    return history


# ----------------------------------------------------------------------------------------------
# The backbone


def test_every_public_name_imports_from_the_package_and_lives_in_one_concern_module():
    import sfpn.integrations.torchvision as integration

    assert set(integration.__all__) == {
        "LABEL_SOURCES", "MultiScaleRoIAlign", "SFPNBackbone", "SFPNOps", "SemanticLoss", "add_semantic_loss",
        "convert_fpn_state_dict", "load_fpn_state_dict", "semantic_targets", "sfpn_resnet_backbone", "use_sfpn_ops",
    }
    modules = {"backbone", "semantic_loss", "swap_ops", "state_dict"}
    for name in integration.__all__:
        value = getattr(integration, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("sfpn.integrations.torchvision."):
            assert home.rsplit(".", 1)[1] in modules, (name, home)
    # The one label-map helper serves the integration and the native detectors.
    from sfpn.semantic_labels import LABEL_SOURCES, semantic_labels

    assert integration.semantic_targets is semantic_labels and integration.LABEL_SOURCES is LABEL_SOURCES


def test_backbone_is_a_drop_in_for_backbone_with_fpn():
    torch.manual_seed(0)
    ours = sfpn_backbone()
    theirs = BackboneWithFPN(torchvision.models.resnet18(), RETURN_LAYERS, [64, 128, 256, 512], CHANNELS)
    images = torch.rand(2, 3, 96, 128)
    features, reference = ours(images), theirs(images)
    assert ours.out_channels == theirs.out_channels == CHANNELS
    assert list(features) == list(reference) == ["0", "1", "2", "3", "pool"]
    assert [f.shape for f in features.values()] == [f.shape for f in reference.values()]
    assert ours.semantic_logits.shape == (2, NUM_CLASSES, 12, 16)

    # Any body that already returns C2..C5 as a dict, e.g. torchvision's feature extractor.
    extractor = create_feature_extractor(torchvision.models.resnet18(), {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"})
    wrapped = SFPNBackbone(extractor, [64, 128, 256, 512], CHANNELS, num_semantic_classes=NUM_CLASSES, **NECK_OPTIONS)
    assert list(wrapped(images)) == ["c2", "c3", "c4", "c5", "pool"]
    with pytest.raises(TypeError, match="ordered dict"):
        SFPNBackbone(nn.Conv2d(3, 8, 1), [8] * 4, num_semantic_classes=NUM_CLASSES)(images)


def test_semantic_branch_off_matches_torchvision_fpn_detector():
    """Faster R-CNN with SFPNBackbone(semantic=False) and BackboneWithFPN's weights loaded gives
    torchvision's losses and detections."""
    torch.manual_seed(0)
    reference = small_detector(
        "faster", BackboneWithFPN(torchvision.models.resnet18(), RETURN_LAYERS, [64, 128, 256, 512], CHANNELS)
    )
    model = small_detector("faster", sfpn_backbone(semantic=False))
    load_fpn_state_dict(model, reference.state_dict())
    images, targets = synthetic_batch()

    for mode in ("train", "eval"):
        reference.train(mode == "train")
        model.train(mode == "train")
        outputs = []
        for detector in (reference, model):
            torch.manual_seed(1)  # the same proposal and RoI sampling in both
            with torch.no_grad():
                outputs.append(detector(images, targets) if mode == "train" else detector(images))
        expected, actual = outputs
        if mode == "train":
            assert set(actual) == set(expected)  # no loss_segm without the branch
            torch.testing.assert_close(actual, expected)
        else:
            assert all(len(d["boxes"]) > 0 for d in expected)
            torch.testing.assert_close(actual, expected)


def test_load_fpn_state_dict_allows_only_the_semantic_branch_missing():
    torch.manual_seed(0)
    reference = BackboneWithFPN(torchvision.models.resnet18(), RETURN_LAYERS, [64, 128, 256, 512], CHANNELS)
    backbone = sfpn_backbone()
    result = load_fpn_state_dict(backbone, reference.state_dict())
    assert result.missing_keys and all(key.startswith("neck.semantic_head.") for key in result.missing_keys)
    torch.testing.assert_close(backbone.neck.lateral_convs[2].weight, reference.fpn.inner_blocks[2][0].weight)
    torch.testing.assert_close(backbone.neck.output_convs[0].bias, reference.fpn.layer_blocks[0][0].bias)
    broken = dict(reference.state_dict(), extra=torch.zeros(1))
    with pytest.raises(RuntimeError, match="unexpected"):
        load_fpn_state_dict(backbone, broken)


def test_sfpn_resnet_backbone_weights_and_frozen_layers(tmp_path):
    body = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(body.state_dict(), path)
    backbone = sfpn_resnet_backbone("resnet18", NUM_CLASSES, trainable_layers=2, weights_path=str(path))
    torch.testing.assert_close(backbone.body.layer3[0].conv1.weight, body.layer3[0].conv1.weight)
    torch.testing.assert_close(backbone.body.bn1.running_var, body.bn1.running_var)
    trainable = {name.split(".")[1] for name, p in backbone.named_parameters() if p.requires_grad and name.startswith("body.")}
    assert trainable == {"layer3", "layer4"}
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)  # pretrained statistics stay
    random_body = sfpn_resnet_backbone("resnet18", NUM_CLASSES)
    assert isinstance(random_body.body.bn1, nn.BatchNorm2d)  # a random body trains everything, with BatchNorm
    assert all(p.requires_grad for p in random_body.parameters())
    assert all(p.requires_grad for p in backbone.neck.parameters())

    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match="weights_path"):
        sfpn_resnet_backbone("resnet18", NUM_CLASSES, weights_path=str(tmp_path / "resnet34.pth"))
    with pytest.raises(ValueError, match="backbone_name"):
        sfpn_resnet_backbone("vgg16", NUM_CLASSES)
    with pytest.raises(ValueError, match="trainable_layers"):
        sfpn_resnet_backbone("resnet18", NUM_CLASSES, trainable_layers=6)


# ----------------------------------------------------------------------------------------------
# Training with the semantic loss


@pytest.mark.parametrize("kind, labels_from", [("faster", "boxes"), ("mask", "masks")])
def test_detector_trains_with_falling_semantic_loss(kind, labels_from):
    torch.manual_seed(0)
    # The paper's pixel mean: on one batch it falls within 10 steps, where the default
    # median-frequency loss, which weighs the rare (slow) classes, barely moves in so few.
    backbone = sfpn_backbone(semantic_loss_average="pixels")
    model = add_semantic_loss(small_detector(kind, backbone), alpha=0.2, labels_from=labels_from)
    images, targets = synthetic_batch()
    # The semantic logits start near zero (std 0.01 init), so the loss needs a few steps to move.
    history = train(model, images, targets, steps=10)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_segm"}
    assert set(history[0]) == expected | ({"loss_mask"} if kind == "mask" else set())
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in history)
    segm = [step["loss_segm"] for step in history]
    assert segm[-1] < 0.9 * segm[0], segm

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for detection, image in zip(detections, images):
        assert detection["boxes"].shape[1] == 4 and detection["labels"].dtype == torch.int64
        assert len(detection["scores"]) == len(detection["boxes"])
        if kind == "mask":
            assert detection["masks"].shape[1:] == (1, *image.shape[1:])
    assert model.backbone.semantic_logits.shape[:2] == (2, NUM_CLASSES)  # kept for the caller at eval


def test_semantic_labels_follow_the_transformed_targets():
    """The labels the loss sees are painted from the resized targets at the padded batch size,
    with 255 over the padding."""
    torch.manual_seed(0)
    model = add_semantic_loss(small_detector("faster", sfpn_backbone()), labels_from="boxes")
    seen = {}

    def spy(logits, labels):
        seen["logits"], seen["labels"] = logits, labels
        return {"loss_segm": logits.sum() * 0}

    model.backbone.neck.losses = spy
    images = [torch.rand(3, 100, 150), torch.rand(3, 120, 100)]
    boxes = torch.tensor([[30.0, 20.0, 90.0, 60.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([2])}, {"boxes": boxes, "labels": torch.tensor([3])}]
    model.train()
    losses = model(images, targets)
    assert losses["loss_segm"] == 0

    labels, logits = seen["labels"], seen["logits"]
    batch, resized = model.transform(images, targets)
    assert labels.shape == (2, *batch.tensors.shape[-2:])
    assert logits.shape[-2:] == (labels.shape[1] // 8, labels.shape[2] // 8)
    for i, ((h, w), target) in enumerate(zip(batch.image_sizes, resized)):
        assert (h, w) != tuple(images[i].shape[1:])  # the transform did resize
        torch.testing.assert_close(labels[i, :h, :w], semantic_from_boxes(target["boxes"], target["labels"], (h, w)))
        x1, y1, x2, y2 = (boxes[0] * torch.tensor([w / 150 if i == 0 else w / 100, h / 100 if i == 0 else h / 120] * 2)).tolist()
        assert (labels[i, round(y1) + 1 : round(y2) - 1, round(x1) + 1 : round(x2) - 1] == targets[i]["labels"][0]).all()
        assert (labels[i, h:] == 255).all() and (labels[i, :, w:] == 255).all()


def test_semantic_targets_sources():
    masks = torch.zeros(2, 6, 8, dtype=torch.uint8)
    masks[0, :4, :4] = 1
    masks[1, 2:6, 2:8] = 1
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 8.0, 6.0]]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
        "iscrowd": torch.tensor([0, 1]),
        "semantic": torch.tensor([[1, 255], [0, 2]]),
    }
    from_masks = semantic_targets([target], [(6, 8)], (8, 16), "masks")
    assert from_masks.shape == (1, 8, 16)
    assert from_masks[0, 0, 0] == 1 and from_masks[0, 5, 7] == 255 and from_masks[0, 6:].eq(255).all()
    from_semantic = semantic_targets([target], [(4, 4)], (8, 8), "semantic")
    expected = torch.tensor([[1, 1, 255, 255], [1, 1, 255, 255], [0, 0, 2, 2], [0, 0, 2, 2]])
    torch.testing.assert_close(from_semantic[0, :4, :4], expected)
    with pytest.raises(ValueError, match="labels_from"):
        semantic_targets([target], [(6, 8)], (8, 16), "polygons")
    del target["masks"]
    with pytest.raises(ValueError, match="'masks'"):
        semantic_targets([target], [(6, 8)], (8, 16), "masks")


def test_add_semantic_loss_errors():
    torch.manual_seed(0)
    plain = small_detector(
        "faster", BackboneWithFPN(torchvision.models.resnet18(), RETURN_LAYERS, [64, 128, 256, 512], CHANNELS)
    )
    with pytest.raises(TypeError, match="SFPNBackbone"):
        add_semantic_loss(plain)
    with pytest.raises(ValueError, match="semantic branch"):
        add_semantic_loss(small_detector("faster", sfpn_backbone(semantic=False)))
    model = small_detector("faster", sfpn_backbone())
    with pytest.raises(ValueError, match="labels_from"):
        add_semantic_loss(model, labels_from="polygons")

    images, targets = synthetic_batch()
    add_semantic_loss(model, labels_from="masks")
    model.train()
    for target in targets:
        del target["masks"]
    with pytest.raises(ValueError, match="'masks'"):
        model(images, targets)
    add_semantic_loss(model, labels_from="boxes")  # replaces the hooks
    assert "loss_segm" in model(images, targets)

    too_few = small_detector("faster", sfpn_resnet_backbone("resnet18", 2, out_channels=CHANNELS, **NECK_OPTIONS))
    add_semantic_loss(too_few, labels_from="boxes").train()
    with pytest.raises(ValueError, match="num_semantic_classes=2"):
        too_few(images, targets)


def test_semantic_loss_can_be_removed_and_survives_deepcopy():
    torch.manual_seed(0)
    model = add_semantic_loss(small_detector("faster", sfpn_backbone()), labels_from="boxes")
    images, targets = synthetic_batch()
    twin = copy.deepcopy(model)
    model.sfpn_semantic_loss.remove()
    model.train()
    twin.train()
    assert "loss_segm" not in model(images, targets)
    assert "loss_segm" in twin(images, targets)


# ----------------------------------------------------------------------------------------------
# sfpn's ops in torchvision's heads


def test_multiscale_roi_align_matches_torchvision(generator):
    # float64: the comparison is of the pooling rule, free of float32 rounding in the coordinates.
    names = ["0", "1", "2", "3"]
    features = {
        name: torch.randn(2, 8, 64 // 2**i, 80 // 2**i, generator=generator, dtype=torch.float64, requires_grad=True)
        for i, name in enumerate(names)
    }
    features["pool"] = torch.randn(2, 8, 2, 3, generator=generator, dtype=torch.float64)
    image = torch.tensor([320.0, 256.0], dtype=torch.float64)
    boxes = []
    for _ in range(2):
        # sqrt(area) log-uniform in 8..256 px, so that every level gets boxes; aspect ratio 1/2..2.
        scale = torch.exp(torch.empty(40, 1, dtype=torch.float64).uniform_(2.1, 5.5, generator=generator))
        aspect = torch.exp(torch.empty(40, 1, dtype=torch.float64).uniform_(-0.35, 0.35, generator=generator))
        size = torch.cat([scale * aspect, scale / aspect], dim=1).minimum(image)
        corner = torch.rand(40, 2, generator=generator, dtype=torch.float64) * (image - size)
        boxes.append(torch.cat([corner, corner + size], dim=1))
    image_shapes = [(256, 320), (240, 300)]
    theirs = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    ours = MultiScaleRoIAlign(names, 7, 2)

    expected = theirs(features, boxes, image_shapes)
    grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    levels = [features[n] for n in names]
    expected_grads = torch.autograd.grad(expected, levels, grad, materialize_grads=True)
    actual = ours(features, boxes, image_shapes)
    actual_grads = torch.autograd.grad(actual, levels, grad, materialize_grads=True)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(actual_grads, expected_grads)
    assert ours.scales == theirs.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    with pytest.raises(ValueError, match="feature maps"):
        ours({"pool": features["pool"]}, boxes, image_shapes)


def test_use_sfpn_ops_gives_the_same_detections_and_is_reversible():
    torch.manual_seed(0)
    model = small_detector("mask", sfpn_backbone()).eval()
    images, _ = synthetic_batch()
    poolers = (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool)
    with torch.no_grad():
        expected = model(images)

    with use_sfpn_ops(model):
        assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign)
        assert isinstance(model.roi_heads.mask_roi_pool, MultiScaleRoIAlign)
        assert torchvision_rpn.box_ops.batched_nms is sfpn_ops.batched_nms
        assert torchvision_roi_heads.box_ops.batched_nms is sfpn_ops.batched_nms
        assert torchvision_rpn.box_ops.box_iou is torchvision_box_ops.box_iou
        with torch.no_grad():
            actual = model(images)
    assert all(len(d["boxes"]) > 0 for d in expected)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)

    assert (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool) == poolers
    assert torchvision_rpn.box_ops is torchvision_box_ops and torchvision_roi_heads.box_ops is torchvision_box_ops

    # Handles of several models release NMS only when the last is removed, in any order.
    other = small_detector("faster", sfpn_backbone())
    first, second = use_sfpn_ops(model), use_sfpn_ops(other, roi_align=False)
    assert not isinstance(other.roi_heads.box_roi_pool, MultiScaleRoIAlign)
    first.remove()
    assert torchvision_rpn.box_ops.batched_nms is sfpn_ops.batched_nms
    second.remove()
    assert torchvision_rpn.box_ops is torchvision_box_ops
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        use_sfpn_ops(nn.Linear(2, 2))
