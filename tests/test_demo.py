"""The demo's drawing: the semantic panel paints each pixel's predicted class in that class's colour; SFPN's
instance masks are the semantic map inside the drawn boxes."""
import numpy as np
import pytest
import torch

from sfpn import demo


def _prediction(semantic):
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "semantic": semantic}


@pytest.mark.parametrize("stuff", [[], ["sky", "grass"]])
def test_semantic_panel_paints_each_class_in_its_colour(generator, stuff):
    height, width, things = 48, 64, ["circle", "square", "triangle"]
    names = things + stuff
    image = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
    semantic = torch.randint(0, len(names) + 1, (height, width), generator=generator)
    drawn = np.asarray(demo.render(image, _prediction(semantic), things, 0.5, names if stuff else None))

    panel = drawn[:height, width + demo.PANEL_GAP:2 * width + demo.PANEL_GAP].astype(np.float32)
    colors = demo.class_colors(len(names)).astype(np.float32)
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * demo.SEMANTIC_DIMMING
    labels = semantic.numpy()[..., None]
    expected = np.where(labels > 0, (1 - demo.SEMANTIC_OPACITY) * grey + demo.SEMANTIC_OPACITY * colors[labels[..., 0]], grey)
    np.testing.assert_allclose(panel, expected, atol=0.51)  # rounded to uint8
    assert drawn.shape[0] > height, "no legend strip under the panels"


def test_class_fractions_count_pixels(generator):
    semantic = torch.randint(0, 5, (30, 40), generator=generator).numpy()
    fractions = demo.class_fractions(semantic, 6)
    assert fractions.shape == (6,) and fractions[5] == 0
    for k in range(5):
        assert fractions[k] == (semantic == k).mean()


def test_masks_from_the_semantic_map_only_for_drawn_detections(generator):
    """An SFPN prediction has no masks: render() makes them from the semantic map for the
    detections above the threshold only (the map inside each drawn box)."""
    height, width = 64, 80
    image = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
    prediction = {
        "boxes": torch.tensor([[10.0, 30.0, 40.0, 60.0], [50.0, 40.0, 70.0, 60.0]]),
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([1, 2]),
        "semantic": torch.ones(height, width, dtype=torch.int64),  # foreground everywhere
    }
    drawn = np.asarray(demo.render(image, prediction, ["circle", "square"], 0.5))[:height, :width].astype(np.float32)
    tint = 0.55 * image.astype(np.float32) + 0.45 * demo.class_colors(2)[1].astype(np.float32)
    np.testing.assert_allclose(drawn[40:55, 15:35], tint[40:55, 15:35], atol=0.51)  # inside the drawn box
    np.testing.assert_array_equal(drawn[45:55, 55:65], image[45:55, 55:65])  # the box under the threshold
    np.testing.assert_array_equal(drawn[:15, 45:], image[:15, 45:])  # outside every box and label


def test_panoptic_panel_colours_segments_by_category_and_outlines_things(generator):
    """Two touching instances of one class stay apart by their outlines; a stuff segment has
    none; void stays grey."""
    height, width = 30, 40
    image = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
    ids = torch.zeros(height, width, dtype=torch.int32)
    ids[5:20, 4:14], ids[5:20, 14:30], ids[24:, :] = 1, 2, 3
    segments = [{"id": 1, "category_id": 2, "isthing": True}, {"id": 2, "category_id": 2, "isthing": True},
                {"id": 3, "category_id": 1, "isthing": False}]
    colors = demo.class_colors(2)
    drawn = demo.panoptic_overlay(image, ids, segments, colors).astype(np.float32)

    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * demo.SEMANTIC_DIMMING
    category = np.zeros((height, width), dtype=np.int64)
    category[5:20, 4:30], category[24:, :] = 2, 1
    expected = np.where(category[..., None] > 0, (1 - demo.SEMANTIC_OPACITY) * grey + demo.SEMANTIC_OPACITY * colors[category], grey)
    outline = np.zeros((height, width), dtype=bool)
    for top, bottom, left, right in ((5, 20, 4, 14), (5, 20, 14, 30)):
        outline[top:bottom, left:right] = True
        outline[top + 1:bottom - 1, left + 1:right - 1] = False
    expected[outline] = demo.OUTLINE_COLOR
    np.testing.assert_allclose(drawn, expected, atol=0.51)


def test_demo_draws_the_panoptic_panel_of_a_real_detector(generator):
    import sfpn

    torch.manual_seed(0)
    model = sfpn.build_detector("faster_rcnn_r18_sfpn_small", 2, **{"panoptic.score_threshold": 0.0}).eval()
    image = torch.rand(3, 40, 52, generator=generator)
    prediction = demo.predict_image(model, image, 40, 1000, panoptic=True)
    segment_ids, segments = prediction["panoptic"]
    assert segment_ids.shape == (40, 52) and all(s["category_id"] in (1, 2) for s in segments)
    pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    drawn = np.asarray(demo.render(pixels, prediction, ["circle", "square"], 0.5))
    panel = drawn[:40, 2 * (52 + demo.PANEL_GAP):3 * 52 + 2 * demo.PANEL_GAP]
    np.testing.assert_array_equal(panel, demo.panoptic_overlay(pixels, segment_ids, segments, demo.class_colors(2)))
