"""The demo's semantic panel draws each pixel's predicted class, in that class's colour."""
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
