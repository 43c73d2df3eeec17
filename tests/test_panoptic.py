"""Panoptic segmentation: the merge of instances and the semantic map, the PQ metric (against
hand-computed COCO cases and a per-mask reference of COCO's definition), and the COCO panoptic
ground-truth loader."""
import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from sfpn.data.coco import AnnotationError
from sfpn.data.panoptic import (
    load_panoptic_annotations,
    read_panoptic_ground_truth,
    read_segment_ids,
    write_segment_ids,
)
from sfpn.semantic_labels import rgb_to_segment_ids, segment_ids_to_rgb
from sfpn.engine.panoptic_quality import PanopticQuality
from sfpn.modeling.boxes import box_pixel_masks
from sfpn.modeling.panoptic import panoptic_merge

pytestmark = pytest.mark.usefixtures("single_thread")

THING, OTHER_THING, STUFF = 1, 3, 2
CATEGORIES = [{"id": THING, "isthing": 1}, {"id": STUFF, "isthing": 0}, {"id": OTHER_THING, "isthing": 1}]


def scores_of(pairs, categories=CATEGORIES):
    """PQ over images given as ``(pred_ids, pred_segments, gt_ids, gt_segments)``."""
    metric = PanopticQuality(categories)
    for pair in pairs:
        metric.update(*pair)
    return metric.compute()


def segments(*entries):
    """``(id, category_id[, iscrowd])`` tuples -> segment dicts."""
    return [{"id": e[0], "category_id": e[1], "iscrowd": e[2] if len(e) > 2 else 0} for e in entries]


def assert_scores(result, expected):
    for key, value in expected.items():
        if value is None:
            assert result[key] is None, key
        else:
            assert result[key] == pytest.approx(value, rel=1e-12), key


# -- PQ: hand-computed COCO cases (10 x 10 images, scores in percent) -----------------------------

def test_perfect_match_scores_100():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :5], gt[:, 5:] = 1, 2
    truth = segments((1, STUFF), (2, THING))
    result = scores_of([(gt * 7, segments((7, STUFF), (14, THING)), gt, truth)])  # ids need not agree
    assert_scores(result, {"PQ": 100, "SQ": 100, "RQ": 100, "PQ_th": 100, "PQ_st": 100})


def test_one_match_at_a_known_iou():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :5] = 1  # 50 px thing; the rest is void
    pred = np.zeros_like(gt)
    pred[:6, :5] = 5  # 30 px on the thing ...
    pred[:, 5:7] = 5  # ... and 20 px on void, which leaves the union: IoU = 30 / 50
    pred[6:, 0] = 9  # 4 px of another thing on the gt thing: no match, not on void -> a false positive
    result = scores_of([(pred, segments((5, THING), (9, THING)), gt, segments((1, THING)))])
    # TP 1 at IoU 0.6, FP 1: PQ = 0.6 / 1.5, SQ = 0.6, RQ = 1 / 1.5
    assert_scores(result, {"PQ": 40, "SQ": 60, "RQ": 100 / 1.5, "PQ_th": 40, "PQ_st": None})
    assert result["per_class"][THING] == {"PQ": pytest.approx(40), "SQ": pytest.approx(60), "RQ": pytest.approx(100 / 1.5),
                                          "TP": 1, "FP": 1, "FN": 0}
    assert result["per_class"][STUFF] == {"PQ": None, "SQ": None, "RQ": None, "TP": 0, "FP": 0, "FN": 0}


def test_a_false_positive_and_the_thing_stuff_split():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :5], gt[:, 5:] = 1, 2  # stuff 50 px, thing 50 px
    pred = gt.copy()
    pred[:2, :5] = 3  # a thing predicted on 10 px of the stuff
    result = scores_of([(pred, segments((1, STUFF), (2, THING), (3, THING)), gt, segments((1, STUFF), (2, THING)))])
    # thing: TP at IoU 1 and FP 1 -> PQ = RQ = 1 / 1.5; stuff: TP at IoU 40 / 50
    assert_scores(result, {"PQ_th": 100 / 1.5, "SQ_th": 100, "RQ_th": 100 / 1.5, "PQ_st": 80, "SQ_st": 80, "RQ_st": 100,
                           "PQ": (100 / 1.5 + 80) / 2, "SQ": 90, "RQ": (100 / 1.5 + 100) / 2})


def test_a_false_negative_under_unlabelled_prediction():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[2:6, 2:7] = 4
    pred = np.zeros_like(gt)  # the prediction leaves everything unlabelled: COCO still counts the FN
    result = scores_of([(pred, [], gt, segments((4, THING)))])
    assert_scores(result, {"PQ": 0, "SQ": 0, "RQ": 0, "PQ_th": 0, "PQ_st": None})
    assert result["per_class"][THING]["FN"] == 1


def test_unlabelled_prediction_pixels_stay_in_the_union():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :] = 1
    pred = np.zeros_like(gt)
    pred[:6] = 1  # 60 of 100 px, the rest unlabelled: IoU 0.6 (torchmetrics 1.9 says 1.0)
    assert_scores(scores_of([(pred, segments((1, STUFF)), gt, segments((1, STUFF)))]), {"PQ": 60, "SQ": 60, "RQ": 100})
    pred[5] = 0  # 50 px: IoU 0.5 is no match -> FN + FP
    result = scores_of([(pred, segments((1, STUFF)), gt, segments((1, STUFF)))])
    assert result["per_class"][STUFF] == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "TP": 0, "FP": 1, "FN": 1}


@pytest.mark.parametrize("on_void,counted", [(6, False), (5, True)])
def test_a_prediction_mostly_on_void_is_no_false_positive(on_void, counted):
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, 5:] = 1  # stuff on the right, void on the left
    pred = gt.copy()
    pred[:on_void, 0] = 2  # a 10 px thing, `on_void` of them on void
    pred[: 10 - on_void, 5] = 2
    result = scores_of([(pred, segments((1, STUFF), (2, THING)), gt, segments((1, STUFF)))])
    assert result["per_class"][THING]["FP"] == int(counted)  # ignored only when more than half is void
    assert result["per_class"][STUFF]["TP"] == 1


def test_a_crowd_region_absorbs_predictions_of_its_category_only():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :5], gt[:, 5:] = 1, 2  # stuff, and a crowd of THING
    truth = segments((1, STUFF), (2, THING, 1))
    pred = gt.copy()
    pred[:, 5:] = 0
    pred[0:2, 3:8] = 3  # THING, 10 px: 6 on the crowd -> ignored
    pred[5:7, 3:8] = 4  # OTHER_THING, 10 px: 6 on the THING crowd -> a false positive
    pred[8:10, 5:10] = 5  # THING, exactly the crowd's pixels: a crowd is never matched, and it is not an FP
    result = scores_of([(pred, segments((1, STUFF), (3, THING), (4, OTHER_THING), (5, THING)), gt, truth)])
    assert result["per_class"][THING] == {"PQ": None, "SQ": None, "RQ": None, "TP": 0, "FP": 0, "FN": 0}
    assert result["per_class"][OTHER_THING]["FP"] == 1
    assert result["per_class"][STUFF]["TP"] == 1  # IoU 42 / 50: 8 of its pixels went to the two things
    assert_scores(result, {"PQ_st": 84, "PQ_th": 0, "PQ": 42})


def test_images_accumulate_counts_not_scores():
    first_gt = np.zeros((10, 10), dtype=np.int64)
    first_gt[:, :5] = 1
    first_pred = np.zeros_like(first_gt)
    first_pred[:6, :5] = 1  # IoU 30 / 50
    first = (first_pred, segments((1, THING)), first_gt, segments((1, THING)))
    second_gt = np.zeros((10, 10), dtype=np.int64)
    second_gt[:, :5], second_gt[:, 5:] = 1, 2
    second_pred = np.full_like(second_gt, 8)  # one segment over two things: IoU 0.5 each -> 2 FN, 1 FP
    second = (second_pred, segments((8, THING)), second_gt, segments((1, THING), (2, THING)))
    # THING over both images: TP 1 (IoU 0.6), FP 1, FN 2 -> PQ = 0.6 / 2.5; the mean of the images' PQ would be 30
    assert_scores(scores_of([first, second]), {"PQ": 24, "SQ": 60, "RQ": 40})
    assert_scores(scores_of([first]), {"PQ": 60})
    assert_scores(scores_of([second]), {"PQ": 0})
    split = PanopticQuality(CATEGORIES)
    split.update(*first)
    rest = PanopticQuality(CATEGORIES)
    rest.update(*second)
    split += rest
    assert split.compute() == scores_of([first, second])


def test_torch_and_numpy_id_maps_score_alike(generator):
    gt, gt_segments, pred, pred_segments = _random_image(generator, 17, 23)
    as_numpy = scores_of([(pred, pred_segments, gt, gt_segments)])
    as_torch = scores_of([(torch.from_numpy(pred).int(), pred_segments, torch.from_numpy(gt), gt_segments)])
    assert as_numpy == as_torch


def test_an_empty_evaluation_has_no_scores():
    assert_scores(scores_of([]), {"PQ": None, "SQ": None, "RQ": None, "PQ_th": None, "PQ_st": None})


@pytest.mark.parametrize(
    "pred_segments,gt_segments,message",
    [
        (segments((1, THING)), segments((1, THING)), r"pred_ids holds segment ids \[2\]"),
        (segments((1, THING), (2, THING), (3, THING)), segments((1, THING)), r"pred_segments lists segment ids \[3\]"),
        (segments((1, THING), (2, 99)), segments((1, THING)), "category_id 99, which is not among"),
        (segments((1, THING), (2, THING), (2, STUFF)), segments((1, THING)), "duplicate segment id 2"),
        (segments((1, THING), (2, THING), (0, THING)), segments((1, THING)), "must be positive"),
        (segments((1, THING), (2, THING)), [{"id": 1}], "must have 'id' and 'category_id'"),
    ],
)
def test_inconsistent_segments_are_rejected(pred_segments, gt_segments, message):
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:2] = 1
    pred = gt.copy()
    pred[3] = 2
    with pytest.raises(ValueError, match=message):
        PanopticQuality(CATEGORIES).update(pred, pred_segments, gt, gt_segments)


def test_bad_maps_and_categories_are_rejected():
    metric = PanopticQuality(CATEGORIES)
    with pytest.raises(ValueError, match="same shape"):
        metric.update(np.zeros((4, 4), dtype=np.int64), [], np.zeros((4, 5), dtype=np.int64), [])
    with pytest.raises(ValueError, match="pred_ids: expected an"):
        metric.update(np.zeros((4, 4)), [], np.zeros((4, 4), dtype=np.int64), [])
    with pytest.raises(ValueError, match="isthing"):
        PanopticQuality([{"id": 1}])
    with pytest.raises(ValueError, match="duplicate id 1"):
        PanopticQuality([{"id": 1, "isthing": 1}, {"id": 1, "isthing": 0}])
    with pytest.raises(ValueError, match="different categories"):
        metric += PanopticQuality(CATEGORIES[:2])


# -- PQ: random images against a per-mask reference of COCO's definition -------------------------

def _random_image(generator, height, width):
    """A ground truth of random rectangles over some void (a few crowd segments) and a prediction
    made from it by moving pixels, dropping pixels to unlabelled and relabelling segments."""
    category_ids = [c["id"] for c in CATEGORIES]

    def randint(low, high):
        return int(torch.randint(low, high, (), generator=generator))

    gt = np.zeros((height, width), dtype=np.int64)
    for segment_id in range(1, randint(3, 9)):
        y, x = randint(0, height - 2), randint(0, width - 2)
        gt[y: y + randint(2, height), x: x + randint(2, width)] = segment_id
    present = sorted(set(np.unique(gt).tolist()) - {0})
    gt_segments = [{"id": i, "category_id": category_ids[randint(0, 3)], "iscrowd": int(randint(0, 5) == 0)} for i in present]

    pred = np.where(gt > 0, gt + 100, 0)
    noise = torch.rand(gt.shape, generator=generator).numpy()
    pred[noise < 0.15] = 0
    moved = noise > 0.8
    pred[moved] = np.roll(pred, randint(1, 4), axis=1)[moved]
    pred_present = sorted(set(np.unique(pred).tolist()) - {0})
    categories = {s["id"] + 100: s["category_id"] for s in gt_segments}
    pred_segments = [{"id": i, "category_id": categories[i] if randint(0, 4) else category_ids[randint(0, 3)]} for i in pred_present]
    return gt, gt_segments, pred, pred_segments


def _reference_counts(pred, pred_segments, gt, gt_segments):
    """COCO's per-category sums, written with one boolean mask per segment."""
    counts = defaultdict(lambda: {"iou": 0.0, "TP": 0, "FP": 0, "FN": 0})
    void = gt == 0
    crowd = defaultdict(lambda: np.zeros(gt.shape, dtype=bool))
    for g in gt_segments:
        if g["iscrowd"]:
            crowd[g["category_id"]] |= gt == g["id"]
    matched = set()
    for g in gt_segments:
        if g["iscrowd"]:
            continue
        in_gt = gt == g["id"]
        hit = False
        for p in pred_segments:
            in_pred = pred == p["id"]
            union = (in_gt | in_pred).sum() - (in_pred & void).sum()
            if p["category_id"] == g["category_id"] and (in_gt & in_pred).sum() / union > 0.5:
                counts[g["category_id"]]["iou"] += (in_gt & in_pred).sum() / union
                counts[g["category_id"]]["TP"] += 1
                matched.add(p["id"])
                hit = True
        counts[g["category_id"]]["FN"] += not hit
    for p in pred_segments:
        in_pred = pred == p["id"]
        ignored = (in_pred & (void | crowd[p["category_id"]])).sum()
        if p["id"] not in matched and ignored / in_pred.sum() <= 0.5:
            counts[p["category_id"]]["FP"] += 1
    return counts


def test_random_images_match_the_reference(generator):
    images = [_random_image(generator, 13 + k, 19 - k) for k in range(12)]
    metric = PanopticQuality(CATEGORIES)
    expected = defaultdict(lambda: {"iou": 0.0, "TP": 0, "FP": 0, "FN": 0})
    for gt, gt_segments, pred, pred_segments in images:
        metric.update(pred, pred_segments, gt, gt_segments)
        for category, counts in _reference_counts(pred, pred_segments, gt, gt_segments).items():
            for key, value in counts.items():
                expected[category][key] += value
    result = metric.compute()
    assert sum(c["TP"] for c in expected.values()) > 0 and sum(c["FP"] + c["FN"] for c in expected.values()) > 0
    pq = {}
    for category in (c["id"] for c in CATEGORIES):
        counts, scores = expected[category], result["per_class"][category]
        assert (scores["TP"], scores["FP"], scores["FN"]) == (counts["TP"], counts["FP"], counts["FN"])
        if counts["TP"] + counts["FP"] + counts["FN"]:
            pq[category] = 100 * counts["iou"] / (counts["TP"] + 0.5 * counts["FP"] + 0.5 * counts["FN"])
            assert scores["PQ"] == pytest.approx(pq[category], rel=1e-12)
    assert result["PQ"] == pytest.approx(sum(pq.values()) / len(pq), rel=1e-12)


# -- the merge --------------------------------------------------------------------------------

def merge(boxes, scores, labels, semantic, **options):
    settings = {"label_to_semantic": {1: 1, 2: 2}, "stuff_classes": (5, 6), "score_threshold": 0.5,
                "overlap_threshold": 0.5, "stuff_min_area": 1, **options}
    return panoptic_merge(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores, dtype=torch.float32),
                          torch.tensor(labels, dtype=torch.int64), semantic, **settings)


def rectangle_masks(*rectangles, size=(10, 10)):
    masks = torch.zeros(len(rectangles), *size, dtype=torch.bool)
    for mask, (y0, y1, x0, x1) in zip(masks, rectangles):
        mask[y0:y1, x0:x1] = True
    return masks


def test_instances_are_painted_by_score():
    semantic = torch.zeros(10, 10, dtype=torch.int64)
    masks = rectangle_masks((0, 4, 0, 5), (2, 6, 2, 8), (0, 10, 0, 10))  # 20 px, 24 px (6 shared), everything
    ids, segs = merge([[0, 0, 1, 1]] * 3, [0.6, 0.9, 0.3], [1, 2, 1], semantic, masks=masks)
    expected = torch.zeros(10, 10, dtype=torch.int32)
    expected[0:4, 0:5] = 2  # the 0.6 instance, second
    expected[2:6, 2:8] = 1  # the 0.9 instance, first, over it
    assert torch.equal(ids, expected)
    assert segs == [{"id": 1, "category_id": 2, "isthing": True, "score": pytest.approx(0.9), "area": 24},
                    {"id": 2, "category_id": 1, "isthing": True, "score": pytest.approx(0.6), "area": 14}]  # 0.3 is below the threshold


@pytest.mark.parametrize("overlap_threshold,kept", [(0.5, False), (0.6, True)])
def test_the_overlap_threshold_drops_a_mostly_covered_instance(overlap_threshold, kept):
    semantic = torch.zeros(10, 10, dtype=torch.int64)
    masks = rectangle_masks((0, 10, 0, 5), (0, 10, 2, 7))  # the second: 30 of 50 px under the first (0.6)
    ids, segs = merge([[0, 0, 1, 1]] * 2, [0.9, 0.8], [1, 1], semantic, masks=masks, overlap_threshold=overlap_threshold)
    assert [s["area"] for s in segs] == ([50, 20] if kept else [50])
    assert int((ids == 2).sum()) == (20 if kept else 0)


def test_stuff_fills_what_instances_leave_above_a_minimum_area():
    semantic = torch.zeros(10, 10, dtype=torch.int64)
    semantic[:, :4] = 5  # 40 px of stuff 5, 15 of them under an instance
    semantic[:, 4:6] = 6  # 20 px of stuff 6
    semantic[:, 6:] = 1  # thing class 1, no instance: stays void
    masks = rectangle_masks((0, 5, 1, 4))
    ids, segs = merge([[0, 0, 1, 1]], [0.9], [2], semantic, masks=masks, stuff_min_area=21)
    assert [(s["category_id"], s["isthing"], s["score"], s["area"]) for s in segs] == [(2, True, pytest.approx(0.9), 15), (5, False, None, 25)]
    assert torch.equal(ids[:, 4:], torch.zeros(10, 6, dtype=torch.int32))  # stuff 6 under the minimum and thing pixels: void
    assert torch.equal(ids[:, :4] == 2, (semantic[:, :4] == 5) & ~masks[0, :, :4])
    _, segs = merge([[0, 0, 1, 1]], [0.9], [2], semantic, masks=masks, stuff_min_area=20)
    assert [(s["category_id"], s["area"]) for s in segs] == [(2, 15), (5, 25), (6, 20)]
    _, segs = merge([[0, 0, 1, 1]], [0.9], [2], semantic, masks=masks, stuff_min_area=26)
    assert [s["category_id"] for s in segs] == [2]  # stuff 5's area is counted after the instance took its part


def test_box_only_detectors_take_their_class_inside_the_box():
    semantic = torch.zeros(10, 10, dtype=torch.int64)
    semantic[2:8, 2:8] = 7  # the detection's class (label 1 is semantic class 7)
    semantic[4:6, 4:6] = 8  # another thing class inside the box
    semantic[:, 0] = 7  # the same class outside the box
    semantic[8:] = 5  # stuff
    box = [1.6, 1.5, 6.4, 9.0]  # pixel centres 2..5 in x, 2..8 in y
    ids, segs = merge([box], [0.9], [1], semantic, label_to_semantic={1: 7, 2: 8}, stuff_min_area=1)
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[1:9, 2:6] = True
    assert torch.equal(ids == 1, inside & (semantic == 7))
    assert segs[0] == {"id": 1, "category_id": 7, "isthing": True, "score": pytest.approx(0.9), "area": 20}
    assert [(s["category_id"], s["area"]) for s in segs[1:]] == [(5, 20)]


def test_box_pixel_masks_take_the_pixels_whose_centre_is_inside():
    masks = box_pixel_masks(torch.tensor([[0.5, 0.5, 2.5, 1.5], [1.6, 0.0, 1.4, 3.0], [0.0, 0.0, 4.0, 3.0]]), (3, 4))
    expected = torch.zeros(3, 3, 4, dtype=torch.bool)
    expected[0, 0:2, 0:3] = True  # edges included: centres 0.5 and 2.5 in x, 0.5 and 1.5 in y
    expected[2] = True  # box 1 is empty (x2 < x1)
    assert torch.equal(masks, expected)


def test_random_merges_keep_their_invariants(generator):
    for _ in range(10):
        height, width, count = 23, 31, int(torch.randint(0, 12, (), generator=generator))
        semantic = torch.randint(0, 7, (height, width), generator=generator)
        corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
        boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
        scores = torch.rand(count, generator=generator)
        labels = torch.randint(1, 3, (count,), generator=generator)
        masks = torch.rand(count, height, width, generator=generator) < 0.3 if count % 2 else None
        ids, segs = panoptic_merge(boxes, scores, labels, semantic, label_to_semantic={1: 1, 2: 2}, stuff_classes=(5, 6),
                                   score_threshold=0.3, overlap_threshold=0.4, stuff_min_area=8, masks=masks)
        assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
        assert set(torch.unique(ids).tolist()) <= {0, *range(1, len(segs) + 1)}
        things = [s for s in segs if s["isthing"]]
        assert [s["score"] for s in things] == sorted((s["score"] for s in things), reverse=True)
        assert all(s["score"] >= 0.3 for s in things) and segs[: len(things)] == things
        instance_masks = masks if masks is not None else box_pixel_masks(boxes, (height, width)) & (semantic[None] == labels[:, None, None])
        for s in segs:
            pixels = ids == s["id"]
            assert int(pixels.sum()) == s["area"] > 0
            if s["isthing"]:
                detection = int(torch.nonzero(scores == s["score"])[0])
                assert bool((pixels <= instance_masks[detection]).all()) and s["category_id"] == int(labels[detection])
                mask_area = int(instance_masks[detection].sum())
                assert (mask_area - s["area"]) / mask_area <= 0.4
            else:
                assert s["category_id"] in (5, 6) and s["area"] >= 8 and bool((semantic[pixels] == s["category_id"]).all())
        left_stuff = ((semantic == 5) | (semantic == 6)) & (ids == 0)
        for category in (5, 6):  # stuff is left void only where its segment was under the minimum area
            left = int((left_stuff & (semantic == category)).sum())
            assert left == 0 if any(s["category_id"] == category for s in segs) else left < 8


def test_no_detections_give_stuff_only():
    semantic = torch.full((4, 4), 6, dtype=torch.int64)
    ids, segs = merge([], [], [], semantic)
    assert torch.equal(ids, torch.ones(4, 4, dtype=torch.int32))
    assert segs == [{"id": 1, "category_id": 6, "isthing": False, "score": None, "area": 16}]


@pytest.mark.parametrize(
    "options,message",
    [
        ({"label_to_semantic": {2: 2}}, r"no semantic class for the detector labels \[1\]"),
        ({"stuff_classes": (2, 5)}, r"stuff_classes: \[2\] are thing classes too"),
        ({"overlap_threshold": 1.5}, "overlap_threshold must be in"),
        ({"masks": torch.zeros(1, 4, 5, dtype=torch.bool)}, "masks: expected shape"),
    ],
)
def test_bad_merge_inputs_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        merge([[0, 0, 2, 2]], [0.9], [1], torch.zeros(4, 4, dtype=torch.int64), **options)


def test_bad_merge_shapes_are_rejected():
    semantic = torch.zeros(4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="scores: expected shape"):
        merge([[0, 0, 2, 2]], [0.9, 0.8], [1], semantic)
    with pytest.raises(ValueError, match="semantic: expected an"):
        merge([[0, 0, 2, 2]], [0.9], [1], semantic.float())


def test_a_merge_scores_100_against_itself():
    semantic = torch.zeros(10, 10, dtype=torch.int64)
    semantic[5:] = 5
    ids, segs = merge([[0, 0, 4, 4]], [0.9], [1], semantic, masks=rectangle_masks((0, 4, 0, 4)))
    metric = PanopticQuality([{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 5, "isthing": 0}, {"id": 6, "isthing": 0}])
    metric.update(ids, segs, ids, segs)
    assert_scores(metric.compute(), {"PQ": 100, "PQ_th": 100, "PQ_st": 100})


# -- the COCO panoptic ground-truth loader --------------------------------------------------------

def test_segment_ids_round_trip_through_a_png(tmp_path, generator):
    ids = torch.randint(0, 256**3, (7, 9), generator=generator)
    write_segment_ids(str(tmp_path / "ids.png"), ids)
    assert torch.equal(read_segment_ids(str(tmp_path / "ids.png")), ids)
    assert np.array_equal(rgb_to_segment_ids(segment_ids_to_rgb(ids.numpy())), ids.numpy())


def test_segment_ids_are_r_plus_256_g_plus_65536_b(tmp_path):
    rgb = np.array([[[1, 2, 3], [0, 0, 0]], [[255, 0, 0], [0, 0, 1]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert read_segment_ids(str(tmp_path / "a.png")).tolist() == [[1 + 2 * 256 + 3 * 65536, 0], [255, 65536]]
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(ValueError, match="mode 'L'"):
        read_segment_ids(str(tmp_path / "gray.png"))
    with pytest.raises(ValueError, match="segment_ids must lie in"):
        segment_ids_to_rgb(np.array([[256**3]]))


def write_panoptic(tmp_path, segments_info):
    ids = np.zeros((4, 6), dtype=np.int64)
    ids[:, :3], ids[:2, 3:], ids[3, 5] = 1 + 256 * 300, 7, 9  # 12 px stuff, 6 px thing, 1 px crowd
    (tmp_path / "panoptic_val").mkdir(exist_ok=True)
    write_segment_ids(str(tmp_path / "panoptic_val" / "a.png"), ids)
    data = {
        "images": [{"id": 4, "file_name": "a.jpg", "width": 6, "height": 4}],
        "annotations": [{"image_id": 4, "file_name": "a.png", "segments_info": segments_info}],
        "categories": [{"id": 1, "name": "cat", "isthing": 1}, {"id": 90, "name": "sky", "isthing": 0}],
    }
    (tmp_path / "panoptic_val.json").write_text(json.dumps(data))
    return ids, str(tmp_path / "panoptic_val.json"), str(tmp_path / "panoptic_val")


def test_the_ground_truth_loader_reads_json_and_png(tmp_path):
    info = [{"id": 1 + 256 * 300, "category_id": 90, "area": 12}, {"id": 7, "category_id": 1}, {"id": 9, "category_id": 1, "iscrowd": 1}]
    ids, json_file, png_root = write_panoptic(tmp_path, info)
    data = load_panoptic_annotations(json_file)
    segment_ids, segs = read_panoptic_ground_truth(data["annotations"][0], data["categories"], png_root)
    assert torch.equal(segment_ids, torch.from_numpy(ids))
    assert segs == [{"id": 1 + 256 * 300, "category_id": 90, "iscrowd": 0, "isthing": False, "area": 12},
                    {"id": 7, "category_id": 1, "iscrowd": 0, "isthing": True, "area": 6},
                    {"id": 9, "category_id": 1, "iscrowd": 1, "isthing": True, "area": 1}]
    metric = PanopticQuality(data["categories"])
    metric.update(segment_ids, segs, segment_ids, segs)
    assert_scores(metric.compute(), {"PQ": 100, "PQ_th": 100, "PQ_st": 100})


@pytest.mark.parametrize(
    "info,message",
    [
        ([{"id": 7, "category_id": 1}, {"id": 9, "category_id": 1}], r"holds segment ids \[76801\]"),
        ([{"id": 76801, "category_id": 90}, {"id": 7, "category_id": 1}, {"id": 9, "category_id": 1}, {"id": 10, "category_id": 1}],
         r"lists segment ids \[10\]"),
    ],
)
def test_the_loader_rejects_a_png_and_json_that_disagree(tmp_path, info, message):
    _, json_file, png_root = write_panoptic(tmp_path, info)
    data = load_panoptic_annotations(json_file)
    with pytest.raises(ValueError, match=message):
        read_panoptic_ground_truth(data["annotations"][0], data["categories"], png_root)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d["annotations"][0]["segments_info"].append({"id": 7, "category_id": 1}), "duplicate segment id 7"),
        (lambda d: d["annotations"][0]["segments_info"].append({"id": 8, "category_id": 5}), "category_id 5, which is not in"),
        (lambda d: d["annotations"][0].update(image_id=5), "image_id 5, which is not in 'images'"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "a second annotation of image_id 4"),
        (lambda d: d["categories"][0].pop("isthing"), r"categories\[0\] lacks the 'isthing' field"),
        (lambda d: d["annotations"][0]["segments_info"].append({"id": 0, "category_id": 1}), "segment id 0 is not in"),
        (lambda d: d["annotations"][0].update(segments_info={}), "'segments_info' has the wrong type"),
    ],
)
def test_the_loader_rejects_bad_annotation_files(tmp_path, change, message):
    _, json_file, _ = write_panoptic(tmp_path, [{"id": 7, "category_id": 1}])
    with open(json_file) as f:
        data = json.load(f)
    change(data)
    with open(json_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(AnnotationError, match=message) as info:
        load_panoptic_annotations(json_file)
    assert json_file in str(info.value)


def test_a_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO panoptic annotation file not found"):
        load_panoptic_annotations(str(tmp_path / "absent.json"))
