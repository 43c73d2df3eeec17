"""The matcher and balanced sampling (sfpn/modeling/matcher.py): thresholds, low-quality
matches, no ground truth, bad thresholds, sampled counts."""
import pytest
import torch

from sfpn.modeling import Matcher
from sfpn.modeling.matcher import BACKGROUND, FOREGROUND, IGNORE, sample_balanced

pytestmark = pytest.mark.usefixtures("single_thread")


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.8, 0.4, 0.1, 0.0, 0.3], [0.2, 0.5, 0.25, 0.0, 0.1]])
    index, label = Matcher(0.7, 0.3)(iou)
    assert index.tolist() == [0, 1, 1, 0, 0]
    assert label.tolist() == [FOREGROUND, IGNORE, BACKGROUND, BACKGROUND, IGNORE]  # 0.3 is not < 0.3
    index, label = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert label.tolist() == [FOREGROUND, FOREGROUND, BACKGROUND, BACKGROUND, IGNORE]


def test_matcher_low_quality_ignores_unmatchable_ground_truth():
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.6, 0.1]])  # box 0 overlaps nothing; box 1 ties
    _, label = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert label.tolist() == [FOREGROUND, FOREGROUND, BACKGROUND]


def test_matcher_without_ground_truth():
    index, label = Matcher(0.5, 0.5)(torch.zeros(0, 4))
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
