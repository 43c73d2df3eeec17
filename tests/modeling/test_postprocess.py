"""Detections from the model's input size to the original image, as evaluation and the demo use them."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sfpn import demo
from sfpn.semantic_labels import IGNORE_LABEL
from sfpn.engine.evaluation import to_coco_results
from sfpn.modeling.postprocess import detections_at_original_size, instance_masks


def _random_output(generator, size=(24, 32), count=5, with_semantic=True):
    height, width = size
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height]) * 1.2 - 2
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    output = {
        "boxes": boxes,
        "scores": torch.rand(count, generator=generator),
        "labels": torch.randint(1, 4, (count,), generator=generator),
    }
    if with_semantic:
        semantic = torch.randint(0, 4, size, generator=generator)
        semantic[torch.rand(size, generator=generator) < 0.1] = IGNORE_LABEL
        output["semantic"] = semantic
    return output


@pytest.mark.parametrize("num_things", [None, 2])
def test_instance_masks_are_the_semantic_things_inside_each_box(generator, num_things):
    """Classes 1..3 of the map: all things (None), or things 1..2 and stuff 3."""
    output = _random_output(generator)
    masks = instance_masks(output, num_things)
    semantic = output["semantic"].numpy()
    height, width = semantic.shape
    things = {1, 2, 3} if num_things is None else {1, 2}
    expected = np.zeros((len(output["boxes"]), height, width), dtype=bool)
    for k, (x1, y1, x2, y2) in enumerate(output["boxes"].tolist()):
        for y in range(height):
            for x in range(width):
                inside = x1 <= x + 0.5 <= x2 and y1 <= y + 0.5 <= y2
                expected[k, y, x] = inside and semantic[y, x] in things
    assert masks.dtype == torch.bool and np.array_equal(masks.numpy(), expected)


def test_instance_masks_of_mask_rcnn_and_of_a_detector_without_a_map(generator):
    output = _random_output(generator, with_semantic=False)
    assert instance_masks(output) is None
    own = torch.rand(5, 1, 24, 32, generator=generator) > 0.5
    assert torch.equal(instance_masks({**output, "masks": own}), own[:, 0])
    assert torch.equal(instance_masks({**output, "masks": own[:, 0]}), own[:, 0])


def test_detections_are_scaled_clamped_and_resized_nearest(generator):
    output = _random_output(generator)
    input_size, original_size = (24, 32), (60, 50)
    result = detections_at_original_size(output, input_size, original_size)
    scale = torch.tensor([50 / 32, 60 / 24] * 2)
    expected_boxes = output["boxes"] * scale
    expected_boxes[:, 0::2] = expected_boxes[:, 0::2].clamp(0, 50)
    expected_boxes[:, 1::2] = expected_boxes[:, 1::2].clamp(0, 60)
    torch.testing.assert_close(result["boxes"], expected_boxes, rtol=1e-6, atol=0)
    assert (result["boxes"] >= 0).all() and (result["boxes"][:, 0::2] <= 50).all() and (result["boxes"][:, 1::2] <= 60).all()
    assert torch.equal(result["scores"], output["scores"]) and torch.equal(result["labels"], output["labels"])
    # Nearest neighbour: output pixel (y, x) takes input pixel (floor(y * 24 / 60), floor(x * 32 / 50)).
    rows = (torch.arange(60) * 24 // 60)[:, None]
    cols = (torch.arange(50) * 32 // 50)[None, :]
    assert torch.equal(result["semantic"], output["semantic"][rows, cols])
    assert torch.equal(result["masks"], instance_masks(output)[:, rows, cols])
    bare = detections_at_original_size(output, input_size, original_size, with_masks=False, with_semantic=False)
    assert set(bare) == {"boxes", "scores", "labels"}


class _FixedModel(torch.nn.Module):
    """A 'detector' that returns one fixed output whatever the image."""

    def __init__(self, output):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.output = output

    def forward(self, images):
        return [self.output]


def test_demo_and_evaluation_map_detections_alike(generator):
    output = _random_output(generator, size=(32, 48))
    image = torch.rand(3, 64, 96, generator=generator)
    shown = demo.predict_image(_FixedModel(output), image, min_size=32, max_size=48)
    scored = to_coco_results(output, {"image_id": 7, "orig_size": (64, 96)}, (32, 48), [0, 10, 20, 30], with_masks=True)
    assert len(scored) == len(shown["boxes"])
    for result, box, mask in zip(scored, shown["boxes"].tolist(), shown["masks"]):
        x1, y1, x2, y2 = box
        assert result["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.006)
        assert np.array_equal(mask_utils.decode(result["segmentation"]), mask.numpy().astype(np.uint8))
