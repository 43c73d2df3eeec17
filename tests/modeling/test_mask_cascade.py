"""Mask R-CNN and Cascade R-CNN: mask targets and paste, losses, eval outputs, overfitting."""
import math

import pytest
import torch

import sfpn
from sfpn.modeling.mask_head import mask_targets, paste_masks

from detector_inputs import NUM_CLASSES, synthetic_batch

pytestmark = pytest.mark.usefixtures("single_thread")


MASK = ["mask_rcnn_r18_fpn_small", "mask_rcnn_r18_sfpn_small"]
CASCADE = ["cascade_rcnn_r18_fpn_small", "cascade_rcnn_r18_sfpn_small"]


def batch_with_masks():
    images, targets = synthetic_batch()
    for target in targets:
        target["masks"] = torch.stack([(target["semantic"] == label).to(torch.uint8) for label in target["labels"]])
    return images, targets


# ------------------------------------------------------------------------------------------------
# Mask targets


def test_mask_targets_crop_the_instance():
    masks = torch.zeros(2, 50, 60, dtype=torch.uint8)
    masks[1, 10:30, 20:40] = 1
    boxes = torch.tensor([[20.0, 10.0, 40.0, 30.0], [20.0, 10.0, 60.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    targets = mask_targets(masks, torch.tensor([1, 1, 1]), boxes, 28)
    assert targets.shape == (3, 28, 28)
    assert targets[0].all()
    assert targets[1, :, :14].all() and not targets[1, :, 14:].any()  # the box's right half is outside
    assert not targets[2].any()


# ------------------------------------------------------------------------------------------------
# Mask paste


def _bilinear_zero_padded(grid, y, x):
    size = grid.shape[0]
    y0, x0 = math.floor(y), math.floor(x)
    value = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < size and 0 <= xx < size:
                value += wy * wx * float(grid[yy, xx])
    return value


def reference_paste(masks, boxes, height, width, threshold):
    """One box and one pixel at a time: pixel centre (x + 0.5) samples mask coordinate
    (x + 0.5 - x1) / box width * M - 0.5, bilinearly, zero outside the mask."""
    out = torch.zeros(len(masks), height, width, dtype=torch.bool)
    size = masks.shape[-1]
    for d, (mask, (x1, y1, x2, y2)) in enumerate(zip(masks, boxes.tolist())):
        for y in range(height):
            for x in range(width):
                u = (x + 0.5 - x1) / (x2 - x1) * size - 0.5
                v = (y + 0.5 - y1) / (y2 - y1) * size - 0.5
                out[d, y, x] = _bilinear_zero_padded(mask, v, u) >= threshold
    return out


def test_paste_masks_matches_reference(generator):
    masks = torch.rand(4, 6, 6, generator=generator)
    boxes = torch.tensor([[2.0, 3.0, 15.5, 12.0], [0.0, 0.0, 24.0, 20.0], [-4.0, 5.0, 8.0, 25.0], [10.2, 1.7, 13.9, 6.1]])
    expected = reference_paste(masks, boxes, 20, 24, 0.5)
    actual = paste_masks(masks, boxes, (20, 24), 0.5)
    assert actual.dtype == torch.bool and actual.shape == (4, 20, 24)
    # Pixels whose value is within float rounding of the threshold may flip; allow a handful.
    assert (actual != expected).sum() <= 3
    chunked = paste_masks(masks, boxes, (20, 24), 0.5, chunk_pixels=20 * 24)  # one box per chunk
    assert torch.equal(chunked, actual)


def test_paste_masks_of_no_boxes():
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12)).shape == (0, 10, 12)


# ------------------------------------------------------------------------------------------------
# Detectors


def test_presets_are_listed():
    presets = sfpn.list_presets()
    for arch in ("mask_rcnn_r50", "mask_rcnn_r101", "cascade_rcnn_r101"):
        for neck in ("fpn", "sfpn"):
            assert f"{arch}_{neck}_1x" in presets
    for name in MASK + CASCADE:
        assert name in presets


@pytest.mark.parametrize("name", MASK + CASCADE)
def test_losses_and_eval_outputs(name):
    torch.manual_seed(0)
    model = sfpn.build_detector(name, NUM_CLASSES, **{"roi_heads.score_threshold": 0.0}).train()
    images, targets = batch_with_masks()
    losses = model(images, targets)
    if name in MASK:
        assert {"loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    else:
        stages = {f"loss_{kind}_s{i}" for kind in ("cls", "box_reg") for i in (1, 2, 3)}
        assert stages <= set(losses) and "loss_cls" not in losses
    assert ("loss_segm" in losses) == ("_sfpn_" in name)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()

    model.eval()
    images.append(torch.zeros(3, 40, 50))
    with torch.no_grad():
        outputs = model(images)
    for output, image in zip(outputs, images):
        count = len(output["boxes"])
        assert output["scores"].shape == (count,) and output["labels"].dtype == torch.int64
        assert count <= 100
        if name in MASK:
            assert output["masks"].shape == (count, *image.shape[-2:]) and output["masks"].dtype == torch.bool
        else:
            assert "masks" not in output


def test_mask_rcnn_needs_masks():
    model = sfpn.build_detector("mask_rcnn_r18_fpn_small", NUM_CLASSES).train()
    images, targets = synthetic_batch()
    with pytest.raises(ValueError, match="masks"):
        model(images, targets)


def test_cascade_stage_weights_scale_the_losses():
    images, targets = batch_with_masks()
    losses = []
    for weights in ["(1.0, 0.5, 0.25)", "(1.0, 1.0, 1.0)"]:
        torch.manual_seed(0)
        model = sfpn.build_detector("cascade_rcnn_r18_fpn_small", NUM_CLASSES, **{"cascade.stage_weights": weights})
        losses.append(model.train()(images, targets))
    torch.testing.assert_close(losses[0]["loss_cls_s3"], 0.25 * losses[1]["loss_cls_s3"])
    torch.testing.assert_close(losses[0]["loss_cls_s1"], losses[1]["loss_cls_s1"])


def _overfit(name, steps=40):
    torch.manual_seed(0)
    model = sfpn.build_detector(name, NUM_CLASSES).train()
    images, targets = batch_with_masks()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    history = []
    for _ in range(steps):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


def test_mask_rcnn_overfits_one_batch():
    history = _overfit("mask_rcnn_r18_sfpn_small")
    total = [sum(h.values()) for h in history]
    assert min(total[-5:]) < total[0] / 4, total
    assert min(h["loss_mask"] for h in history[-5:]) < history[0]["loss_mask"] / 2


def test_cascade_rcnn_overfits_one_batch():
    history = _overfit("cascade_rcnn_r18_sfpn_small")
    total = [sum(h.values()) for h in history]
    assert min(total[-5:]) < total[0] / 3, total
    for stage in (1, 2, 3):
        assert min(h[f"loss_cls_s{stage}"] for h in history[-5:]) < history[0][f"loss_cls_s{stage}"] / 3
