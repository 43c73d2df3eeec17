"""The matcher and balanced sampling (sfpn/modeling/matcher.py): thresholds, low-quality
matches, the labels of random boxes against box_iou's matrix, no ground truth, bad thresholds,
sampled counts."""
import pytest
import torch

from sfpn.modeling import Matcher, box_iou
from sfpn.modeling.matcher import BACKGROUND, FOREGROUND, IGNORE, sample_balanced

pytestmark = pytest.mark.usefixtures("single_thread")


def test_matcher_thresholds_and_low_quality_matches():
    """IoUs 1, 0.5, 0.2, 0 with box 0 and two 0.5s tied for box 1's best: the thresholds, then the
    ties promoted to foreground by the low-quality rule."""
    ground_truth = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    predictions = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 2.0],
                                [200.0, 200.0, 210.0, 210.0], [100.0, 100.0, 110.0, 105.0],
                                [100.0, 100.0, 105.0, 110.0]])
    index, label = Matcher(0.7, 0.3)(ground_truth, predictions)
    assert index.tolist() == [0, 0, 0, 0, 1, 1]
    assert label.tolist() == [FOREGROUND, IGNORE, BACKGROUND, BACKGROUND, IGNORE, IGNORE]
    index, label = Matcher(0.7, 0.3, allow_low_quality_matches=True)(ground_truth, predictions)
    assert label.tolist() == [FOREGROUND, IGNORE, BACKGROUND, BACKGROUND, FOREGROUND, FOREGROUND]


def test_matcher_low_quality_ignores_unmatchable_ground_truth():
    """A ground-truth box that overlaps nothing (best IoU 0) promotes nothing."""
    ground_truth = torch.tensor([[500.0, 500.0, 510.0, 510.0], [0.0, 0.0, 10.0, 10.0]])
    predictions = torch.tensor([[0.0, 0.0, 10.0, 6.0], [0.0, 4.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    _, label = Matcher(0.7, 0.3, allow_low_quality_matches=True)(ground_truth, predictions)
    assert label.tolist() == [FOREGROUND, FOREGROUND, BACKGROUND]


@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
def test_matcher_follows_the_iou_matrix(generator, allow_low_quality_matches):
    """On random boxes, the labels read off box_iou's matrix by the rule of the class docstring."""
    corners = torch.rand(2, 400, 2, generator=generator) * 200
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, 400, 2, generator=generator) * 60], -1)
    ground_truth, predictions = boxes[0, :6], boxes[1]
    index, label = Matcher(0.6, 0.4, allow_low_quality_matches)(ground_truth, predictions)
    iou = box_iou(ground_truth, predictions)
    best, want_index = iou.max(0)
    want = torch.full_like(label, IGNORE)
    want[best < 0.4] = BACKGROUND
    want[best >= 0.6] = FOREGROUND
    if allow_low_quality_matches:
        column_best = iou.max(1, keepdim=True).values
        want[((iou == column_best) & (column_best > 0)).any(0)] = FOREGROUND
    assert torch.equal(index, want_index) and torch.equal(label, want)
    assert (label == FOREGROUND).any() and (label == BACKGROUND).any()


def test_matcher_without_ground_truth():
    index, label = Matcher(0.5, 0.5)(torch.zeros(0, 4), torch.rand(4, 4))
    assert index.tolist() == [0] * 4 and label.tolist() == [BACKGROUND] * 4


def test_matcher_rejects_inverted_thresholds():
    with pytest.raises(ValueError, match="bg_threshold"):
        Matcher(0.3, 0.7)


@pytest.mark.parametrize("num_foreground", [2, 10])
def test_sample_balanced(num_foreground, generator):
    label = torch.full((115,), BACKGROUND, dtype=torch.int8)
    label[:num_foreground] = FOREGROUND
    label[-5:] = IGNORE
    positive, negative = sample_balanced(label, 20, 0.25, generator=generator)
    assert len(positive) == min(num_foreground, 5) and len(negative) == 20 - len(positive)
    assert (label[positive] == FOREGROUND).all() and (label[negative] == BACKGROUND).all()
    assert len(set(negative.tolist())) == len(negative)
