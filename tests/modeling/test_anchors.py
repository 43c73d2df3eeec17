"""The anchor generator (sfpn/modeling/anchors.py): hand-computed anchors, per-level counts
and areas."""
import pytest
import torch

from sfpn.modeling import AnchorGenerator

pytestmark = pytest.mark.usefixtures("single_thread")


def test_anchors_hand_computed():
    generator = AnchorGenerator(sizes=(32.0,), aspect_ratios=(1.0, 4.0), strides=(8,))
    (anchors,) = generator([(2, 2)], torch.device("cpu"))
    square = torch.tensor([-16.0, -16.0, 16.0, 16.0])
    tall = torch.tensor([-8.0, -32.0, 8.0, 32.0])  # height / width = 4, area 32^2
    expected = []
    for y in (0.0, 8.0):  # (y, x, anchor) order
        for x in (0.0, 8.0):
            shift = torch.tensor([x, y, x, y])
            expected += [square + shift, tall + shift]
    torch.testing.assert_close(anchors, torch.stack(expected))


def test_anchors_per_level_counts_and_areas():
    sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
    generator = AnchorGenerator(sizes, (0.5, 1.0, 2.0), (4, 8, 16, 32, 64))
    grids = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    levels = generator(grids, torch.device("cpu"))
    for anchors, (h, w), size in zip(levels, grids, sizes):
        assert anchors.shape == (h * w * 3, 4)
        area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        torch.testing.assert_close(area, torch.full_like(area, size**2))
