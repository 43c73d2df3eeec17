"""The semantic branch's metrics (sfpn/engine/evaluation.py): confusion, IoU scores (the
foreground IoU with stuff classes), labels at the head's stride, the head's stride from its
grid, the printed summary."""
import json

import pytest
import torch

from sfpn.engine.evaluation import format_metrics, grid_stride, labels_at_stride, semantic_confusion, semantic_scores

pytestmark = pytest.mark.usefixtures("single_thread")


def test_confusion_counts_every_labelled_pixel_once(generator):
    num_classes = 5
    labels = torch.randint(0, num_classes + 2, (37, 23), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = 255
    predicted = torch.randint(0, num_classes, labels.shape, generator=generator)
    expected = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for truth, guess in zip(labels.flatten().tolist(), predicted.flatten().tolist()):
        if truth < num_classes:  # 255 and out-of-range labels are not counted
            expected[truth, guess] += 1
    assert torch.equal(semantic_confusion(predicted, labels, num_classes), expected)


def test_confusion_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        semantic_confusion(torch.zeros(4, 5, dtype=torch.int64), torch.zeros(5, 4, dtype=torch.int64), 3)


def test_scores_from_confusion(generator):
    confusion = torch.randint(0, 50, (4, 4), generator=generator)
    confusion[3, :] = 0  # class 3: never true and never predicted -> no IoU, not in the mean
    confusion[:, 3] = 0
    scores = semantic_scores(confusion, ["background", "a", "b", "c"])
    ious = {}
    for k, name in enumerate(["background", "a", "b"]):
        union = confusion[k].sum() + confusion[:, k].sum() - confusion[k, k]
        ious[name] = 100 * confusion[k, k].item() / union.item()
    assert scores["IoU"]["c"] is None
    for name, value in ious.items():
        assert scores["IoU"][name] == pytest.approx(value, abs=1e-3)
    assert scores["mIoU"] == pytest.approx(sum(ious.values()) / 3, abs=1e-3)
    foreground_hit = confusion[1:, 1:].sum().item()
    foreground_union = confusion.sum().item() - confusion[0, 0].item()
    assert scores["fgIoU"] == pytest.approx(100 * foreground_hit / foreground_union, abs=1e-3)


def test_foreground_iou_with_stuff_is_any_thing_against_not_a_thing(generator):
    """Things 1..2, stuff 3..5: a thing named as another thing is foreground found; a thing taken
    for stuff (or background) is foreground missed, and stuff for a thing a false foreground."""
    num_things, num_classes = 2, 6
    labels = torch.randint(0, num_classes, (41, 29), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
    predicted = torch.randint(0, num_classes, labels.shape, generator=generator)
    scores = semantic_scores(semantic_confusion(predicted, labels, num_classes), [str(k) for k in range(num_classes)], num_things)
    labelled = labels != 255
    true_thing = (labels >= 1) & (labels <= num_things) & labelled
    predicted_thing = (predicted >= 1) & (predicted <= num_things) & labelled
    expected = 100 * (true_thing & predicted_thing).sum().item() / (true_thing | predicted_thing).sum().item()
    assert scores["fgIoU"] == pytest.approx(expected, abs=1e-3)
    assert list(scores["IoU"]) == [str(k) for k in range(num_classes)]  # stuff classes are scored too
    for k in range(num_classes):
        hit = ((labels == k) & (predicted == k)).sum().item()
        union = ((labels == k) | (predicted == k) & labelled).sum().item()
        assert scores["IoU"][str(k)] == pytest.approx(100 * hit / union, abs=1e-3)


def test_scores_of_a_perfect_and_an_all_background_prediction():
    perfect = torch.diag(torch.tensor([10, 3, 4]))
    assert semantic_scores(perfect, ["bg", "x", "y"]) == {"mIoU": 100.0, "fgIoU": 100.0, "IoU": {"bg": 100.0, "x": 100.0, "y": 100.0}}
    all_background = torch.tensor([[10, 0, 0], [3, 0, 0], [4, 0, 0]])  # the "no foreground" failure
    scores = semantic_scores(all_background, ["bg", "x", "y"])
    assert scores["fgIoU"] == 0.0 and scores["IoU"]["x"] == 0.0 and scores["IoU"]["bg"] == pytest.approx(100 * 10 / 17, abs=1e-3)


def test_labels_at_stride_take_each_cells_centre(generator):
    stride = 8
    for height, width in ((64, 40), (61, 45), (5, 9)):
        labels = torch.randint(0, 255, (height, width), generator=generator)
        grid = (-(-height // stride), -(-width // stride))
        coarse = labels_at_stride(labels, stride, grid)
        assert coarse.shape == grid
        for i in range(grid[0]):
            for j in range(grid[1]):
                y = (i * stride + min((i + 1) * stride, height)) // 2
                x = (j * stride + min((j + 1) * stride, width)) // 2
                assert coarse[i, j] == labels[y, x]


def test_format_metrics_prints_the_semantic_scores():
    scores = semantic_scores(torch.diag(torch.tensor([5, 2])), ["background", "circle"])
    text = format_metrics({"bbox": dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"), 1.0), "segm": None,
                           "semantic": {"image": scores, "stride": scores}})
    assert "semantic at image: mIoU 100.00" in text and "circle 100.0" in text
    json.dumps(scores)  # eval.json-ready


def test_grid_stride_recovers_the_heads_stride():
    assert grid_stride((256, 320), (32, 40)) == 8
    assert grid_stride((250, 317), (32, 40)) == 8  # padded to 256 x 320 before the backbone
    assert grid_stride((9, 70), (2, 9)) == 8
    with pytest.raises(ValueError, match="stride"):
        grid_stride((256, 320), (31, 40))
