"""Semantic label maps (sfpn/data/semantic.py): painted from masks and boxes, read from label
and panoptic PNGs, bad shapes."""
import numpy as np
import pytest
import torch
from PIL import Image

from sfpn.semantic_labels import read_label_png, read_panoptic_png, semantic_from_boxes, semantic_from_masks


def test_semantic_from_masks_paints_smaller_last_and_crowd_ignore():
    masks = torch.zeros(3, 6, 6, dtype=torch.uint8)
    masks[0, 1:3, 1:3] = 1  # small, first in the list
    masks[1, 0:5, 0:5] = 1  # large
    masks[2, 4:6, 4:6] = 1  # crowd, overlapping the large one at (4, 4)
    labels = torch.tensor([2, 1, 3])
    semantic = semantic_from_masks(masks, labels, torch.tensor([0, 0, 1]))
    expected = torch.zeros(6, 6, dtype=torch.int64)
    expected[0:5, 0:5] = 1
    expected[1:3, 1:3] = 2
    expected[4:6, 4:6] = 255
    assert torch.equal(semantic, expected)
    # Without iscrowd every instance gets its label; no masks gives background.
    assert semantic_from_masks(masks, labels)[5, 5] == 3
    assert torch.equal(semantic_from_masks(torch.zeros(0, 4, 5), torch.zeros(0, dtype=torch.int64)), torch.zeros(4, 5, dtype=torch.int64))


def test_semantic_from_masks_matches_a_pixel_loop(generator):
    masks = torch.rand(5, 9, 11, generator=generator) > 0.6
    labels = torch.randint(1, 4, (5,), generator=generator)
    semantic = semantic_from_masks(masks, labels)
    areas = masks.flatten(1).sum(1)
    for y in range(9):
        for x in range(11):
            covering = [k for k in range(5) if masks[k, y, x]]
            want = 0 if not covering else labels[min(covering, key=lambda k: (areas[k], -k))].item()
            assert semantic[y, x].item() == want


def test_semantic_from_boxes():
    boxes = torch.tensor([[0.0, 0.0, 6.0, 4.0], [2.4, 1.6, 4.4, 3.4], [7.2, 5.1, 7.4, 5.3]])
    labels = torch.tensor([1, 2, 3])
    semantic = semantic_from_boxes(boxes, labels, (6, 8))
    expected = torch.zeros(6, 8, dtype=torch.int64)
    expected[0:4, 0:6] = 1
    expected[2:3, 2:4] = 2  # pixel centres inside [2.4, 4.4] x [1.6, 3.4]
    expected[5, 7] = 3  # a box smaller than a pixel still covers one
    assert torch.equal(semantic, expected)
    crowd = semantic_from_boxes(boxes, labels, (6, 8), iscrowd=torch.tensor([True, False, False]))
    assert crowd[0, 0] == 255 and crowd[2, 2] == 2
    assert torch.equal(semantic_from_boxes(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (3, 2)), torch.zeros(3, 2, dtype=torch.int64))


def test_semantic_bad_shapes():
    with pytest.raises(ValueError, match="masks"):
        semantic_from_masks(torch.zeros(4, 4), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        semantic_from_masks(torch.zeros(2, 4, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="boxes"):
        semantic_from_boxes(torch.zeros(2, 5), torch.zeros(2, dtype=torch.int64), (4, 4))


def test_read_label_pngs(tmp_path):
    raw = np.array([[0, 1, 255], [5, 1, 0]], dtype=np.uint8)
    Image.fromarray(raw).save(tmp_path / "stuff.png")
    semantic = read_label_png(str(tmp_path / "stuff.png"), {0: 1, 1: 2, 5: 6})
    assert semantic.tolist() == [[1, 2, 255], [6, 2, 1]]
    ids = np.array([[0, 300, 300], [7, 7, 0]])  # 300 = (44, 1, 0) in RGB
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "panoptic.png")
    segments = [{"id": 300, "category_id": 3}, {"id": 7, "category_id": 11, "iscrowd": 1}]
    semantic = read_panoptic_png(str(tmp_path / "panoptic.png"), segments, {3: 1, 11: 2})
    assert semantic.tolist() == [[255, 1, 1], [255, 255, 255]]
