"""COCO evaluation: run a detector over a dataset, write COCO results, score them with COCOeval.

Predictions come out in the coordinates of the (resized) images the model saw; they are mapped
back to each image's original size and to the dataset's COCO category ids before scoring, so
the results file is a standard COCO results file for the original annotation file.

Instance masks for ``segm``: a Mask R-CNN's predicted masks; for a box-only SFPN detector, the
predicted semantic map's foreground inside each box (the semantic branch gives instance masks for
free); a box-only detector without a semantic map is scored on boxes
only (``segm`` is None).
"""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.semantic import IGNORE_LABEL
from ..data.samplers import ListBatchSampler, loader_generator, shard_indices
from . import distributed

#: COCOeval.stats entries we report, in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def _masks_for(output: dict) -> torch.Tensor | None:
    """(D, H, W) bool instance masks at the model's input size, or None."""
    if "masks" in output:
        masks = output["masks"]
        return masks[:, 0] if masks.dim() == 4 else masks
    if "semantic" not in output:
        return None
    semantic, boxes = output["semantic"], output["boxes"]
    height, width = semantic.shape
    ys = torch.arange(height, device=semantic.device).view(1, -1, 1) + 0.5
    xs = torch.arange(width, device=semantic.device).view(1, 1, -1) + 0.5
    inside = (
        (xs >= boxes[:, 0, None, None]) & (xs <= boxes[:, 2, None, None])
        & (ys >= boxes[:, 1, None, None]) & (ys <= boxes[:, 3, None, None])
    )
    # Foreground rather than the box's own class: the box head already decided the class, and
    # the semantic map's class confusions would otherwise punch holes in the masks.
    return inside & (semantic[None] > 0) & (semantic[None] != IGNORE_LABEL)


def to_coco_results(output: dict, target: dict, input_size: tuple[int, int], label_to_category_id: list[int], with_masks: bool) -> list[dict]:
    """One image's detections as COCO result dicts, in original-image coordinates."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    orig_h, orig_w = target["orig_size"]
    in_h, in_w = input_size
    boxes = boxes * torch.tensor([orig_w / in_w, orig_h / in_h] * 2)
    boxes[:, 0::2].clamp_(0, orig_w)
    boxes[:, 1::2].clamp_(0, orig_h)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    category_ids = [label_to_category_id[int(label)] for label in output["labels"].cpu()]
    results = [
        {"image_id": target["image_id"], "category_id": c, "bbox": [round(v, 2) for v in b], "score": round(s, 5)}
        for b, s, c in zip(xywh, scores, category_ids)
    ]
    if with_masks:
        masks = _masks_for(output)
        if masks is not None:
            masks = F.interpolate(masks[None].float().cpu(), size=(orig_h, orig_w), mode="nearest")[0].to(torch.uint8)
            encoded = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy()))
            for result, rle in zip(results, encoded):
                rle["counts"] = rle["counts"].decode("ascii")
                result["segmentation"] = rle
    return results


@torch.no_grad()
def predict(model, dataset, device, batch_size: int = 1, num_workers: int = 0, progress: bool = True) -> tuple[list[dict], bool]:
    """Runs ``model`` over this rank's share of ``dataset``; every rank gets all COCO results.

    Returns (results, whether the results have masks).
    """
    from ..data.coco import collate

    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=ListBatchSampler(shard_indices(len(dataset), rank, world_size), batch_size),
        collate_fn=collate,
        num_workers=num_workers,
        generator=loader_generator(),
    )
    was_training = model.training
    model.eval()
    results, with_masks = [], None
    try:
        for images, targets in tqdm(loader, desc="evaluating", disable=not (progress and rank == 0), leave=False, dynamic_ncols=True):
            outputs = model([image.to(device) for image in images])
            for image, output, target in zip(images, outputs, targets):
                if with_masks is None:
                    with_masks = "masks" in output or "semantic" in output
                results.extend(to_coco_results(output, target, tuple(image.shape[-2:]), dataset.label_to_category_id, with_masks))
    finally:
        model.train(was_training)
    gathered = distributed.all_gather_objects((results, bool(with_masks)))
    return [r for rank_results, _ in gathered for r in rank_results], any(m for _, m in gathered)


def coco_evaluate(coco_gt, results: list[dict], iou_types=IOU_TYPES, image_ids=None) -> tuple[dict, str]:
    """Scores COCO results. Returns ({iou_type: {metric: AP in percent or None}}, the COCO table).

    Metrics COCO cannot compute (no ground truth of that size) are None. An empty result list
    scores 0.
    """
    from pycocotools.cocoeval import COCOeval

    metrics, tables = {}, []
    for iou_type in iou_types:
        if not results:
            metrics[iou_type] = {name: 0.0 for name in METRIC_NAMES}
            tables.append(f"{iou_type}: no detections, AP = 0")
            continue
        # loadRes takes a detection's area from its box when it has one, so segm results go in
        # without boxes (their area is the mask's); it also writes into the dicts: pass copies.
        drop = "bbox" if iou_type == "segm" else "segmentation"
        typed = [{k: v for k, v in r.items() if k != drop} for r in results]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(typed)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            evaluator.summarize()
        tables.append(f"{iou_type}:\n{table.getvalue().rstrip()}")
        metrics[iou_type] = {
            name: (None if value < 0 else round(float(value) * 100, 3))
            for name, value in zip(METRIC_NAMES, evaluator.stats[: len(METRIC_NAMES)])
        }
    return metrics, "\n".join(tables)


def evaluate(model, dataset, device, batch_size: int = 1, num_workers: int = 0, results_file: str | None = None, progress: bool = True) -> tuple[dict, str]:
    """Predicts over ``dataset`` and scores it. Every rank returns the same metrics.

    Returns ({"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...} or None}, the COCO table).
    Rank 0 writes the COCO results to ``results_file`` when given.
    """
    results, with_masks = predict(model, dataset, device, batch_size, num_workers, progress)
    if results_file and distributed.is_main_process():
        with open(results_file, "w") as f:
            json.dump(results, f)
    # Masks can only be scored against ground truth that has them: COCOeval fails on the first
    # annotation without a 'segmentation' (box-only datasets, whose SFPN still predicts masks).
    ground_truth_masks = all("segmentation" in a for a in dataset.coco.dataset["annotations"])
    iou_types = IOU_TYPES if with_masks and ground_truth_masks else ("bbox",)
    metrics, table = coco_evaluate(dataset.coco, results, iou_types, image_ids=dataset.image_ids)
    metrics.setdefault("segm", None)
    return metrics, table


def format_metrics(metrics: dict) -> str:
    """A compact AP table: one row per IoU type, AP in percent."""
    header = f"{'':6}" + "".join(f"{name:>8}" for name in METRIC_NAMES)
    rows = [header]
    for iou_type, values in metrics.items():
        if values is None:
            continue
        cells = "".join(f"{'-' if values[n] is None or math.isnan(values[n]) else format(values[n], '.2f'):>8}" for n in METRIC_NAMES)
        rows.append(f"{iou_type:6}{cells}")
    return "\n".join(rows)
