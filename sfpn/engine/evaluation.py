"""COCO evaluation: run a detector over a dataset, write COCO results, score them with COCOeval.

Predictions come out in the coordinates of the (resized) images the model saw; they are mapped
back to each image's original size (:mod:`sfpn.modeling.postprocess`) and to the dataset's COCO
category ids before scoring, so the results file is a standard COCO results file for the
original annotation file.

Instance masks for ``segm``: a Mask R-CNN's predicted masks; for a box-only SFPN detector, the
predicted semantic map's foreground inside each box (the semantic branch gives instance masks for
free); a box-only detector without a semantic map is scored on boxes only (``segm`` is None).

The semantic branch is scored on its own too, when the detector has one and the dataset gives
semantic labels: ``metrics["semantic"]`` holds mIoU, foreground IoU and per-class IoU (percent)
over the validation pixels, at image size (the upsampled class map the detector outputs) and at
the head's stride (its logits' argmax against the label at each cell's centre pixel). The
classes are the dataset's semantic classes: things, and stuff where the labels come from
things-and-stuff label maps; foreground IoU is "any thing vs not a thing" either way.

Panoptic segmentation is scored when the dataset has COCO panoptic ground truth
(``dataset.panoptic``) and the detector a semantic map: each image's panoptic result
(:func:`~sfpn.modeling.postprocess.panoptic_at_original_size`, with the detector config's
``panoptic`` thresholds and the label space of the dataset's categories) against the ground truth
with :class:`~sfpn.engine.panoptic_quality.PanopticQuality`: ``metrics["panoptic"]`` holds PQ,
SQ, RQ and their thing and stuff means (percent).
"""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import torch
from tqdm import tqdm

from .._threads import SharedCoreThreads
from ..data.samplers import ListBatchSampler, loader_generator, shard_indices
from ..data.panoptic import panoptic_label_space
from ..modeling.layers import InferenceWeightCache
from ..modeling.postprocess import detections_at_original_size, panoptic_at_original_size
from . import distributed
from .panoptic_quality import PanopticQuality
from .precision import Precision

#: COCOeval.stats entries we report, in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: PanopticQuality.compute entries we report, in order.
PANOPTIC_METRIC_NAMES = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")
IOU_TYPES = ("bbox", "segm")


def semantic_confusion(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 pixel counts, row = true class, column = predicted class.

    Args:
        predicted: ``(H, W)`` integer classes in ``0..K-1``.
        labels: ``(H, W)`` integer classes; 255 (ignore) and values >= K are not counted.
        num_classes: K.
    """
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and labels {tuple(labels.shape)} must have the same shape")
    labels, predicted = labels.reshape(-1).long(), predicted.reshape(-1).long()
    counted = (labels >= 0) & (labels < num_classes)
    pairs = labels[counted] * num_classes + predicted[counted].clamp(0, num_classes - 1)
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def labels_at_stride(labels: torch.Tensor, stride: int, grid: tuple[int, int]) -> torch.Tensor:
    """The label of the centre pixel of each ``stride`` x ``stride`` cell: ``(H, W)`` -> ``grid``.

    Cell ``(i, j)`` covers pixels ``[s i, s (i + 1))``, where the head's logits sit; a last,
    partial cell takes the centre of its part inside the image.
    """
    def centres(cells: int, extent: int) -> torch.Tensor:
        starts = torch.arange(cells, device=labels.device) * stride
        return (starts + (starts + stride).clamp(max=extent)) // 2

    return labels[centres(grid[0], labels.shape[0])][:, centres(grid[1], labels.shape[1])]


def grid_stride(size: tuple[int, int], grid: tuple[int, int]) -> int:
    """The power-of-two stride ``s`` with ``grid == ceil(size / s)``: the grid of a head whose
    input was padded at the bottom and right. Where several fit (a one-cell axis), all of them
    give the same cell centres."""
    for stride in (1 << k for k in range(16)):
        if all(-(-extent // stride) == cells for extent, cells in zip(size, grid)):
            return stride
    raise ValueError(f"no power-of-two stride maps an image of size {tuple(size)} to a grid of {tuple(grid)}")


def semantic_scores(confusion: torch.Tensor, class_names: list[str], num_things: int | None = None) -> dict:
    """mIoU, foreground IoU and per-class IoU in percent from a ``(K, K)`` confusion matrix.

    A class with no true and no predicted pixel has no IoU (None) and stays out of the mean;
    ``fgIoU`` is the IoU of "any thing" against "not a thing" (background and stuff), which
    separates finding objects from naming them. The things are the classes ``1..num_things``
    (the stuff classes follow them); None: every class but background (0).
    """
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    ious = [None if u == 0 else round(float(100 * tp / u), 3) for tp, u in zip(true_positive, union)]
    present = [v for v in ious if v is not None]
    things = slice(1, None if num_things is None else num_things + 1)
    foreground_hit = confusion[things, things].sum()
    foreground_union = confusion[things, :].sum() + confusion[:, things].sum() - foreground_hit
    names = class_names if len(class_names) == len(ious) else [str(k) for k in range(len(ious))]
    return {
        "mIoU": round(sum(present) / len(present), 3) if present else None,
        "fgIoU": round(float(100 * foreground_hit / foreground_union), 3) if foreground_union > 0 else None,
        "IoU": dict(zip(names, ious)),
    }


def to_coco_results(output: dict, target: dict, input_size: tuple[int, int], label_to_category_id: list[int], with_masks: bool) -> list[dict]:
    """One image's detections as COCO result dicts, in original-image coordinates."""
    from pycocotools import mask as mask_utils

    if output["boxes"].numel() == 0:
        return []
    detections = detections_at_original_size(
        output, input_size, target["orig_size"], with_masks=with_masks, with_semantic=False, num_things=len(label_to_category_id) - 1
    )
    boxes = detections["boxes"]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = detections["scores"].float().tolist()
    category_ids = [label_to_category_id[int(label)] for label in detections["labels"]]
    results = [
        {"image_id": target["image_id"], "category_id": c, "bbox": [round(v, 2) for v in b], "score": round(s, 5)}
        for b, s, c in zip(xywh, scores, category_ids)
    ]
    if "masks" in detections:
        encoded = mask_utils.encode(np.asfortranarray(detections["masks"].permute(1, 2, 0).numpy().astype(np.uint8)))
        for result, rle in zip(results, encoded):
            rle["counts"] = rle["counts"].decode("ascii")
            result["segmentation"] = rle
    return results


def _accumulate_semantic(confusions: dict, output: dict, target: dict) -> None:
    """Adds one image's semantic confusion matrices, at image size and at the head's stride."""
    logits, labels = output["semantic_logits"], target["semantic"].to(output["semantic"].device)
    num_classes = logits.shape[0]
    coarse = labels_at_stride(labels, grid_stride(tuple(labels.shape), tuple(logits.shape[-2:])), tuple(logits.shape[-2:]))
    for key, predicted, truth in (("image", output["semantic"], labels), ("stride", logits.argmax(0), coarse)):
        confusion = semantic_confusion(predicted, truth, num_classes)
        confusions[key] = confusion if key not in confusions else confusions[key] + confusion


def _accumulate_panoptic(quality: PanopticQuality, label_space, output: dict, target: dict, input_size: tuple[int, int],
                         dataset, panoptic_config) -> None:
    """Adds one image's panoptic result against its ground truth."""
    classes = output["semantic_logits"].shape[0]
    if classes != len(label_space.semantic_to_category_id):
        raise ValueError(f"the semantic branch has {classes} classes, the dataset's categories give "
                         f"{len(label_space.semantic_to_category_id)} (background, the things, then any stuff)")
    predicted = panoptic_at_original_size(output, input_size, target["orig_size"], label_space, panoptic_config)
    quality.update(*predicted, *dataset.panoptic.read(target["image_id"]))


@torch.no_grad()
def predict(model, dataset, device, batch_size: int = 1, num_workers: int = 0, progress: bool = True,
            masks: bool = True, precision: Precision | None = None,
            shared_cores: SharedCoreThreads | None = None) -> tuple[list[dict], bool, dict, PanopticQuality | None]:
    """Runs ``model`` over this rank's share of ``dataset``; every rank gets all COCO results.
    ``precision`` gives the autocast to run the model under (default fp32); the model's layout is
    the caller's (see :func:`~sfpn.engine.precision.prepare_model`). ``shared_cores``, when given,
    is ticked after every batch, so that the CPU thread count follows the free cores (the
    trainer's ``cpu_threads=adaptive``).

    ``masks``: whether the results get instance masks (the detector's, or those made from its
    semantic map, one full-size mask per detection); False leaves them out, unmade.

    Returns (results, whether the results have masks, ``{"image", "stride"}`` semantic confusion
    matrices summed over all ranks, empty without a semantic branch or semantic labels, the
    panoptic counts summed over all ranks, None without panoptic ground truth
    (``dataset.panoptic``) or a semantic branch).
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
    autocast = precision.autocast(torch.device(device).type) if precision is not None else contextlib.nullcontext()
    results, with_masks, confusions = [], None, {}
    panoptic = getattr(dataset, "panoptic", None)
    quality = label_space = None
    if panoptic is not None and getattr(model.neck, "has_semantic_branch", False):
        quality = PanopticQuality(panoptic.categories)
        label_space = panoptic_label_space(dataset.label_to_category_id, dataset.semantic_to_category_id, panoptic.categories)
    try:
        # The weights do not change during the loop: each convolution folds and casts them once.
        cache = InferenceWeightCache()
        for images, targets in tqdm(loader, desc="evaluating", disable=not (progress and rank == 0), leave=False, dynamic_ncols=True):
            with autocast, cache:
                outputs = model([image.to(device) for image in images])
            for image, output, target in zip(images, outputs, targets):
                if with_masks is None:
                    with_masks = masks and ("masks" in output or "semantic" in output)
                results.extend(to_coco_results(output, target, tuple(image.shape[-2:]), dataset.label_to_category_id, with_masks))
                if "semantic_logits" in output and "semantic" in target:
                    _accumulate_semantic(confusions, output, target)
                if quality is not None:
                    _accumulate_panoptic(quality, label_space, output, target, tuple(image.shape[-2:]), dataset, model.config.panoptic)
            if shared_cores is not None:
                shared_cores.tick()
    finally:
        model.train(was_training)
    gathered = distributed.all_gather_objects((results, bool(with_masks), confusions, quality))
    summed, total_quality = {}, None
    for _, _, rank_confusions, rank_quality in gathered:
        for key, confusion in rank_confusions.items():
            summed[key] = confusion if key not in summed else summed[key] + confusion
        if total_quality is None:
            total_quality = rank_quality
        elif rank_quality is not None:
            total_quality += rank_quality
    return ([r for rank_results, *_ in gathered for r in rank_results], any(m for _, m, *_ in gathered), summed,
            total_quality)


def coco_evaluate(coco_gt, results: list[dict], iou_types=IOU_TYPES, image_ids=None, category_ids=None) -> tuple[dict, str]:
    """Scores COCO results. Returns ({iou_type: {metric: AP in percent or None}}, the COCO table).

    Metrics COCO cannot compute (no ground truth of that size) are None. An empty result list
    scores 0. ``image_ids``, ``category_ids``: score these only (default: all of ``coco_gt``'s).
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
            if category_ids is not None:
                evaluator.params.catIds = list(category_ids)
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


def evaluate(model, dataset, device, batch_size: int = 1, num_workers: int = 0, results_file: str | None = None, progress: bool = True,
             precision: Precision | None = None, shared_cores: SharedCoreThreads | None = None) -> tuple[dict, str]:
    """Predicts over ``dataset`` (under ``precision``'s autocast, default fp32; ``shared_cores``
    as :func:`predict` takes it) and scores it. Every rank returns the same metrics.

    Returns ({"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...} or None, "semantic":
    {"image": {mIoU, fgIoU, IoU: {class: IoU}}, "stride": {...}} or None, and, with panoptic
    ground truth and a semantic branch, "panoptic": {PQ, SQ, RQ, PQ_th, PQ_st}}, the COCO table).
    Rank 0 writes the COCO results to ``results_file`` when given.
    """
    # Masks can only be scored against ground truth that has them: COCOeval fails on the first
    # annotation without a 'segmentation'. On box-only datasets no masks are made at all.
    ground_truth_masks = all("segmentation" in a for a in dataset.coco.dataset["annotations"])
    results, with_masks, confusions, quality = predict(model, dataset, device, batch_size, num_workers, progress,
                                                       masks=ground_truth_masks, precision=precision, shared_cores=shared_cores)
    if results_file and distributed.is_main_process():
        with open(results_file, "w") as f:
            json.dump(results, f)
    iou_types = IOU_TYPES if with_masks else ("bbox",)
    # The detector's classes only: stuff categories are no detection targets.
    metrics, table = coco_evaluate(dataset.coco, results, iou_types, image_ids=dataset.image_ids, category_ids=dataset.label_to_category_id[1:])
    metrics.setdefault("segm", None)
    class_names = ["background", *dataset.semantic_class_names]
    metrics["semantic"] = {key: semantic_scores(c, class_names, dataset.num_classes) for key, c in confusions.items()} or None
    if quality is not None:
        scores = quality.compute()
        metrics["panoptic"] = {name: None if scores[name] is None else round(scores[name], 3) for name in PANOPTIC_METRIC_NAMES}
    return metrics, table


def format_metrics(metrics: dict) -> str:
    """A compact AP table: one row per IoU type, AP in percent; then the semantic mIoU and the
    panoptic PQ, SQ, RQ if any."""
    header = f"{'':6}" + "".join(f"{name:>8}" for name in METRIC_NAMES)
    rows = [header]
    for iou_type in IOU_TYPES:
        values = metrics.get(iou_type)
        if values is None:
            continue
        cells = "".join(f"{'-' if values[n] is None or math.isnan(values[n]) else format(values[n], '.2f'):>8}" for n in METRIC_NAMES)
        rows.append(f"{iou_type:6}{cells}")
    for where, scores in (metrics.get("semantic") or {}).items():
        per_class = ", ".join(f"{name} {'-' if iou is None else format(iou, '.1f')}" for name, iou in scores["IoU"].items())
        rows.append(f"semantic at {where}: mIoU {_percent(scores['mIoU'])}, foreground IoU {_percent(scores['fgIoU'])} ({per_class})")
    if metrics.get("panoptic"):
        rows.append("panoptic: " + ", ".join(f"{name} {_percent(metrics['panoptic'][name])}" for name in PANOPTIC_METRIC_NAMES))
    return "\n".join(rows)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.2f}"
