"""The detector end to end: configs and presets, training losses, eval outputs, overfitting."""
import dataclasses

import pytest
import torch

import sfpn
from sfpn.config import DetectorConfig, get_config
from sfpn.semantic_labels import semantic_from_boxes, semantic_from_masks

from detector_inputs import NUM_CLASSES, synthetic_batch

pytestmark = pytest.mark.usefixtures("single_thread")


SMALL = ["faster_rcnn_r18_fpn_small", "faster_rcnn_r18_sfpn_small"]


# ------------------------------------------------------------------------------------------------
# Configs


def test_presets_of_the_contract_are_listed():
    presets = sfpn.list_presets()
    for name in ["faster_rcnn_r50_fpn_1x", "faster_rcnn_r50_sfpn_1x", "faster_rcnn_r101_fpn_1x",
                 "faster_rcnn_r101_sfpn_1x", *SMALL]:
        assert name in presets
    for name in presets:  # every SFPN preset has its FPN twin
        if "_sfpn_" in name:
            sfpn_config = get_config(name, 3)
            fpn_config = get_config(name.replace("_sfpn_", "_fpn_"), 3)
            assert sfpn_config.neck.semantic and not fpn_config.neck.semantic
            fpn_config.neck.semantic = True
            assert fpn_config == sfpn_config


def test_overrides_with_dotted_keys():
    config = get_config("faster_rcnn_r50_sfpn_1x", 3, **{"neck.alpha": 0.5, "rpn.anchor_sizes": "(8, 16, 32, 64, 128)",
                                                         "backbone.depth": "101"})
    assert config.neck.alpha == 0.5 and config.backbone.depth == 101 and config.num_classes == 3
    assert config.rpn.anchor_sizes == (8, 16, 32, 64, 128)
    with pytest.raises(ValueError, match="unknown config key 'neck.alfa'"):
        get_config("faster_rcnn_r50_sfpn_1x", 3, **{"neck.alfa": 0.5})
    with pytest.raises(ValueError, match="expects float"):
        get_config("faster_rcnn_r50_sfpn_1x", 3, **{"neck.alpha": "'high'"})
    with pytest.raises(ValueError, match="unknown preset"):
        sfpn.build_detector("faster_rcnn_r7_fpn", 3)
    with pytest.raises(ValueError, match="num_classes"):
        sfpn.build_detector("faster_rcnn_r18_fpn_small", 0)


def test_config_round_trips_through_plain_dict():
    config = get_config("faster_rcnn_r18_sfpn_small", 5, **{"neck.fusion_op": "gate"})
    data = config.to_dict()
    assert DetectorConfig.from_dict(data) == config
    assert dataclasses.asdict(DetectorConfig.from_dict(data)) == data
    model = sfpn.build_detector("faster_rcnn_r18_sfpn_small", 5, **{"neck.fusion_op": "gate"})
    assert model.config == config


# ------------------------------------------------------------------------------------------------
# Training and evaluation


@pytest.mark.parametrize("name", SMALL)
def test_training_losses(name):
    torch.manual_seed(0)
    model = sfpn.build_detector(name, NUM_CLASSES).train()
    images, targets = synthetic_batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "semantic": torch.zeros(images[1].shape[-2:], dtype=torch.int64)}  # an image with no objects
    losses = model(images, targets)
    expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} | ({"loss_segm"} if "_sfpn_" in name else set())
    assert set(losses) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_semantic_labels_without_a_semantic_map_come_from_masks_else_boxes():
    """torchvision-style targets (no ``semantic``) train the branch: labels painted from the
    masks when a target has them, else from its boxes; a target's own ``semantic`` map wins."""
    torch.manual_seed(0)
    model = sfpn.build_detector("faster_rcnn_r18_sfpn_small", NUM_CLASSES).train()
    images, targets = synthetic_batch()
    box_maps = [semantic_from_boxes(t["boxes"], t["labels"], image.shape[-2:]) for t, image in zip(targets, images)]
    masks = [torch.stack([t["semantic"] == label for label in t["labels"]]).to(torch.uint8) for t in targets]
    with_maps = model(images, [{**t, "semantic": m} for t, m in zip(targets, box_maps)])["loss_segm"]
    for target in targets:
        del target["semantic"]
    from_boxes = model(images, targets)["loss_segm"]
    torch.testing.assert_close(from_boxes, with_maps)
    from_masks = model(images, [{**t, "masks": m} for t, m in zip(targets, masks)])["loss_segm"]
    expected = model(images, [{**t, "semantic": semantic_from_masks(m, t["labels"])} for t, m in zip(targets, masks)])
    torch.testing.assert_close(from_masks, expected["loss_segm"])
    with_maps_and_masks = model(images, [{**t, "masks": m, "semantic": b} for t, m, b in zip(targets, masks, box_maps)])
    torch.testing.assert_close(with_maps_and_masks["loss_segm"], with_maps)

    # Where the labels come from is the training config's data.semantic alone: the detector has no
    # option of its own (an old checkpoint's neck.labels_from is dropped on loading).
    with pytest.raises(ValueError, match="unknown config key 'neck.labels_from'"):
        sfpn.build_detector("faster_rcnn_r18_sfpn_small", NUM_CLASSES, **{"neck.labels_from": "masks"})
    model = sfpn.build_detector("faster_rcnn_r18_sfpn_small", NUM_CLASSES, **{"neck.alpha": 0.0}).train()
    assert "loss_segm" not in model(images, targets)


def test_bad_inputs_are_named():
    model = sfpn.build_detector("faster_rcnn_r18_fpn_small", NUM_CLASSES).train()
    images, targets = synthetic_batch()
    with pytest.raises(ValueError, match="one target dict per image"):
        model(images, targets[:1])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model([images[0][:1]], targets[:1])


def _reference_batch(model, images):
    """The batch as preprocess is specified: each image normalised in float32, zero-padded at the
    bottom and right to a multiple of size_divisibility."""
    divisor = model.size_divisibility
    height = -(-max(i.shape[1] for i in images) // divisor) * divisor
    width = -(-max(i.shape[2] for i in images) // divisor) * divisor
    return torch.stack([
        torch.nn.functional.pad((i - model.pixel_mean) / model.pixel_std, (0, width - i.shape[2], 0, height - i.shape[1]))
        for i in images
    ])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_preprocess_normalises_pads_and_casts_as_autocast_would(monkeypatch, layout, autocast):
    """Images of different sizes (padding on both axes), in the backbone's layout and, under
    autocast, in its dtype with the bits of the float32 batch cast. torch.empty hands out NaNs
    here, so any pixel that preprocess does not write shows."""
    model = sfpn.build_detector("faster_rcnn_r18_fpn_small", NUM_CLASSES).to(memory_format=layout)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 61, 90, generator=generator), torch.rand(3, 70, 33, generator=generator)]
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: empty(*args, **kwargs).fill_(float("nan")))
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        batch, sizes = model.preprocess(images)
    assert sizes == [(61, 90), (70, 33)]
    assert batch.shape == (2, 3, 96, 96) and batch.is_contiguous(memory_format=layout)
    expected = _reference_batch(model, images).to(autocast or torch.float32)
    assert batch.dtype == expected.dtype and torch.equal(batch, expected)


@pytest.mark.parametrize("name", SMALL)
def test_eval_outputs(name):
    model = sfpn.build_detector(name, NUM_CLASSES, **{"roi_heads.score_threshold": 0.0}).eval()
    images, _ = synthetic_batch()
    images.append(torch.zeros(3, 40, 50))  # a blank image of another size
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 3
    for output, image in zip(outputs, images):
        count = len(output["boxes"])
        assert output["boxes"].shape == (count, 4) and output["boxes"].dtype == torch.float32
        assert output["scores"].shape == (count,) and output["labels"].shape == (count,)
        assert output["labels"].dtype == torch.int64
        assert count <= model.roi_heads.detections_per_image
        if count:
            assert ((output["labels"] >= 1) & (output["labels"] <= NUM_CLASSES)).all()
            assert (output["scores"][:-1] >= output["scores"][1:]).all()
            height, width = image.shape[-2:]
            assert (output["boxes"] >= 0).all()
            assert (output["boxes"][:, 2] <= width).all() and (output["boxes"][:, 3] <= height).all()
        if "_sfpn_" in name:
            assert output["semantic"].shape == image.shape[-2:] and output["semantic"].dtype == torch.int64
        else:
            assert "semantic" not in output


def test_eval_without_detections():
    model = sfpn.build_detector("faster_rcnn_r18_fpn_small", NUM_CLASSES, **{"roi_heads.score_threshold": 1.0}).eval()
    with torch.no_grad():
        (output,) = model([torch.zeros(3, 64, 64)])
    assert output["boxes"].shape == (0, 4) and output["scores"].shape == (0,) and output["labels"].shape == (0,)
    assert output["labels"].dtype == torch.int64


def test_fpn_preset_is_sfpn_preset_without_branch():
    torch.manual_seed(0)
    fpn = sfpn.build_detector("faster_rcnn_r18_fpn_small", NUM_CLASSES).eval()
    plain_sfpn = sfpn.build_detector("faster_rcnn_r18_sfpn_small", NUM_CLASSES, **{"neck.semantic": False}).eval()
    plain_sfpn.load_state_dict(fpn.state_dict())
    images, _ = synthetic_batch()
    with torch.no_grad():
        expected, actual = fpn(images), plain_sfpn(images)
    for e, a in zip(expected, actual):
        assert e.keys() == a.keys()
        for key in e:
            assert torch.equal(e[key], a[key])


@pytest.mark.parametrize("name", SMALL)
def test_overfits_one_batch(name):
    torch.manual_seed(0)
    model = sfpn.build_detector(name, NUM_CLASSES).train()
    images, targets = synthetic_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    history = []
    for _ in range(40):
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert min(history[-5:]) < history[0] / 5, history
