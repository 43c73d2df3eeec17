"""Box IoU and the box coder (sfpn/modeling/boxes.py): hand-computed values, round trips,
per-class decoding, scale clamping."""
import math

import pytest
import torch

from sfpn.modeling import BoxCoder, box_iou

pytestmark = pytest.mark.usefixtures("single_thread")


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 5.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    expected = torch.tensor([[25 / 175, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_box_iou_matches_its_definition(generator):
    """Random boxes, some degenerate (zero or negative extent): every pair against the definition,
    area of the overlap over area of the union, computed pair by pair; empty sets give empty maps."""
    def boxes(count):
        xy = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 20
        extent = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 15 - 2  # some negative
        extent[::4] = 0
        return torch.cat((xy, xy + extent), dim=1)

    def area(box):
        return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)

    a, b = boxes(7), boxes(11)
    expected = torch.zeros(7, 11, dtype=torch.float64)
    for i, p in enumerate(a.tolist()):
        for j, q in enumerate(b.tolist()):
            overlap = area([max(p[0], q[0]), max(p[1], q[1]), min(p[2], q[2]), min(p[3], q[3])])
            union = area(p) + area(q) - overlap
            expected[i, j] = overlap / union if union > 0 else 0.0
    assert 0 < (expected > 0).sum() < expected.numel(), "the draw should hold overlapping and disjoint pairs"
    torch.testing.assert_close(box_iou(a, b), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(box_iou(a.float(), b.float()), expected.float(), rtol=1e-5, atol=1e-6)
    assert box_iou(a[:0], b).shape == (0, 11) and box_iou(a, b[:0]).shape == (7, 0)


def test_box_coder_hand_computed():
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[5.0, 5.0, 15.0, 25.0], [0.0, 0.0, 20.0, 10.0]])
    expected = torch.tensor([[0.5, 0.25, 0.0, 0.0], [0.5, -0.25, math.log(2.0), math.log(0.5)]])
    torch.testing.assert_close(BoxCoder().encode(reference, target), expected)
    weights = torch.tensor([10.0, 10.0, 5.0, 5.0])
    torch.testing.assert_close(BoxCoder(tuple(weights.tolist())).encode(reference, target), expected * weights)


def test_box_coder_round_trip_and_per_class_decoding(generator):
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    xy = torch.rand(50, 2, generator=generator) * 100
    reference = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=generator) * 50), dim=1)
    xy = torch.rand(50, 2, generator=generator) * 100
    target = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=generator) * 50), dim=1)
    deltas = coder.encode(reference, target)
    torch.testing.assert_close(coder.decode(deltas, reference), target, rtol=1e-5, atol=1e-3)
    # (K, 4C): every class column block decodes against the same reference.
    three = coder.decode(deltas.repeat(1, 3), reference).reshape(50, 3, 4)
    torch.testing.assert_close(three, target[:, None].expand(50, 3, 4), rtol=1e-5, atol=1e-3)


def test_box_coder_clamps_scale():
    coder = BoxCoder()
    boxes = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(boxes).all()
    torch.testing.assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(1000.0))
