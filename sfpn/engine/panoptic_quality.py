"""Panoptic quality (PQ, SQ, RQ), as COCO's panoptic evaluation (panopticapi) defines it.

Per image, a predicted and a ground-truth segment of the same category match when their IoU is
above 0.5 (at most one match each, since segments do not overlap). Per category, over all images:

    PQ = sum of the matches' IoU / (TP + FP / 2 + FN / 2),  SQ = sum of IoU / TP,  RQ = TP / (TP + FP / 2 + FN / 2)

so PQ = SQ * RQ. The averages are means over the categories that occur (TP + FP + FN > 0),
overall and over the thing and the stuff categories apart. Void and crowd, as COCO:

- void is segment id 0 of the ground truth (unlabelled pixels). A prediction's pixels on void
  leave its IoU's union;
- a crowd ground-truth segment (``iscrowd`` 1) is never matched and is no false negative;
- an unmatched prediction is no false positive when more than half of its pixels lie on void
  or on crowd segments of its own category.

One departure, where COCO's code has a quirk rather than a rule: an image with several crowd
segments of one category counts the prediction's pixels on all of them (panopticapi keeps only
the last one listed; its own data has at most one per category and image). Areas are pixel
counts of the id maps (COCO's ground-truth JSON ``area`` is the same count).

torchmetrics' ``PanopticQuality`` (1.9) is not used: it has no crowd segments, and it treats a
prediction's unlabelled pixels as void too, dropping them from the IoU's union and forgiving the
false negatives they cover, which COCO counts.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

#: The IoU a match must exceed.
MATCH_IOU = 0.5
#: The share of a prediction on void (or its category's crowd) above which it is no false positive.
IGNORED_SHARE = 0.5


class PanopticQuality:
    """Accumulates panoptic matches over images and scores them.

    Args:
        categories: every category that may occur, as COCO's panoptic ``categories`` list: dicts
            with ``id`` and ``isthing`` (0/1 or bool); other keys are ignored.

    ``update`` adds one image; ``compute`` scores all images added so far, counts summed over
    images (not an average of per-image scores). ``a += b`` adds ``b``'s counts (e.g. another
    process's share of the images).
    """

    def __init__(self, categories: Iterable[Mapping]):
        self.isthing: dict[int, bool] = {}
        for index, category in enumerate(categories):
            if "id" not in category or "isthing" not in category:
                raise ValueError(f"categories[{index}] must have 'id' and 'isthing', got {dict(category)}")
            if int(category["id"]) in self.isthing:
                raise ValueError(f"categories: duplicate id {category['id']}")
            self.isthing[int(category["id"])] = bool(category["isthing"])
        if not self.isthing:
            raise ValueError("categories is empty")
        self.iou_sum = dict.fromkeys(self.isthing, 0.0)
        self.true_positives = dict.fromkeys(self.isthing, 0)
        self.false_positives = dict.fromkeys(self.isthing, 0)
        self.false_negatives = dict.fromkeys(self.isthing, 0)

    def update(self, pred_ids, pred_segments: list[Mapping], gt_ids, gt_segments: list[Mapping]) -> None:
        """Adds one image.

        Args:
            pred_ids: ``(H, W)`` integer segment ids of the prediction (tensor or array), 0 =
                unlabelled.
            pred_segments: the predicted segments, dicts with ``id`` and ``category_id``; each
                nonzero id of ``pred_ids`` listed once, and each listed id present in it.
            gt_ids: ``(H, W)`` integer segment ids of the ground truth, 0 = void.
            gt_segments: as ``pred_segments``, with ``iscrowd`` (default 0).
        """
        pred = _id_map(pred_ids, "pred_ids")
        gt = _id_map(gt_ids, "gt_ids")
        if pred.shape != gt.shape:
            raise ValueError(f"pred_ids {pred.shape} and gt_ids {gt.shape} must have the same shape")
        pred_info = self._segments_by_id(pred_segments, "pred_segments")
        gt_info = self._segments_by_id(gt_segments, "gt_segments")
        pred_area = _areas(pred, pred_info, "pred")
        gt_area = _areas(gt, gt_info, "gt")
        intersections = _intersections(gt, pred)

        matched_gt, matched_pred = set(), set()
        for (gt_id, pred_id), intersection in intersections.items():
            if gt_id == 0 or pred_id == 0:
                continue
            truth, guess = gt_info[gt_id], pred_info[pred_id]
            if truth.get("iscrowd", 0) or truth["category_id"] != guess["category_id"]:
                continue
            union = pred_area[pred_id] + gt_area[gt_id] - intersection - intersections.get((0, pred_id), 0)
            iou = intersection / union
            if iou > MATCH_IOU:
                category = truth["category_id"]
                self.true_positives[category] += 1
                self.iou_sum[category] += iou
                matched_gt.add(gt_id)
                matched_pred.add(pred_id)

        crowds: dict[int, list[int]] = {}
        for gt_id, truth in gt_info.items():
            if truth.get("iscrowd", 0):
                crowds.setdefault(truth["category_id"], []).append(gt_id)
            elif gt_id not in matched_gt:
                self.false_negatives[truth["category_id"]] += 1
        for pred_id, guess in pred_info.items():
            if pred_id in matched_pred:
                continue
            ignored = intersections.get((0, pred_id), 0) + sum(
                intersections.get((crowd_id, pred_id), 0) for crowd_id in crowds.get(guess["category_id"], ())
            )
            if ignored / pred_area[pred_id] <= IGNORED_SHARE:
                self.false_positives[guess["category_id"]] += 1

    def compute(self) -> dict:
        """The scores so far, in percent.

        Returns:
            ``{PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st, per_class}``: the means over
            all, thing and stuff categories that occur (None where none does); ``per_class`` maps
            each category id to ``{PQ, SQ, RQ, TP, FP, FN}`` (the scores None for a category that
            never occurred; SQ 0 for one without a match).
        """
        per_class = {}
        for category in self.isthing:
            tp, fp, fn = self.true_positives[category], self.false_positives[category], self.false_negatives[category]
            scores = dict.fromkeys(("PQ", "SQ", "RQ"))
            if tp + fp + fn > 0:
                iou_sum = self.iou_sum[category]
                scores = {
                    "PQ": 100 * iou_sum / (tp + 0.5 * fp + 0.5 * fn),
                    "SQ": 100 * iou_sum / tp if tp else 0.0,
                    "RQ": 100 * tp / (tp + 0.5 * fp + 0.5 * fn),
                }
            per_class[category] = {**scores, "TP": tp, "FP": fp, "FN": fn}
        result = {}
        for suffix, members in (("", (True, False)), ("_th", (True,)), ("_st", (False,))):
            occurring = [per_class[c] for c, isthing in self.isthing.items() if isthing in members and per_class[c]["PQ"] is not None]
            for name in ("PQ", "SQ", "RQ"):
                result[name + suffix] = sum(s[name] for s in occurring) / len(occurring) if occurring else None
        result["per_class"] = per_class
        return result

    def __iadd__(self, other: PanopticQuality) -> PanopticQuality:
        if other.isthing != self.isthing:
            raise ValueError("cannot add PanopticQuality counts over different categories")
        for counts, more in ((self.iou_sum, other.iou_sum), (self.true_positives, other.true_positives),
                             (self.false_positives, other.false_positives), (self.false_negatives, other.false_negatives)):
            for category, value in more.items():
                counts[category] += value
        return self

    def _segments_by_id(self, segments: list[Mapping], name: str) -> dict[int, Mapping]:
        by_id = {}
        for index, segment in enumerate(segments):
            if "id" not in segment or "category_id" not in segment:
                raise ValueError(f"{name}[{index}] must have 'id' and 'category_id', got {dict(segment)}")
            segment_id = int(segment["id"])
            if segment_id <= 0:
                raise ValueError(f"{name}[{index}]: segment ids must be positive (0 is void), got {segment_id}")
            if segment_id in by_id:
                raise ValueError(f"{name}: duplicate segment id {segment_id}")
            if segment["category_id"] not in self.isthing:
                raise ValueError(f"{name}[{index}] (id {segment_id}) has category_id {segment['category_id']}, "
                                 f"which is not among the categories {sorted(self.isthing)}")
            by_id[segment_id] = segment
        return by_id


def _id_map(ids, name: str) -> np.ndarray:
    """An ``(H, W)`` id map (tensor or array) as an int64 array."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected an (H, W) integer id map, got {ids.dtype} of shape {ids.shape}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name}: segment ids must be non-negative, found {ids.min()}")
    return ids.astype(np.int64, copy=False)


def _areas(ids: np.ndarray, segments: dict[int, Mapping], side: str) -> dict[int, int]:
    """Pixel count of each listed segment; the map and the list must name the same segments."""
    values, counts = np.unique(ids, return_counts=True)
    areas = {int(v): int(c) for v, c in zip(values, counts) if v != 0}
    unlisted = sorted(set(areas) - set(segments))
    if unlisted:
        raise ValueError(f"{side}_ids holds segment ids {unlisted} that {side}_segments does not list")
    absent = sorted(set(segments) - set(areas))
    if absent:
        raise ValueError(f"{side}_segments lists segment ids {absent} that {side}_ids does not hold")
    return areas


def _intersections(gt: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], int]:
    """``{(gt id, pred id): pixels}`` over the pairs that share a pixel."""
    base = int(pred.max(initial=0)) + 1
    pairs, counts = np.unique(gt.ravel() * base + pred.ravel(), return_counts=True)
    return {(int(p // base), int(p % base)): int(c) for p, c in zip(pairs, counts)}
