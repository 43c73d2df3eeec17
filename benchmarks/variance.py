"""Where a study's seed-to-seed spread comes from: the validation images, or the training.

    python benchmarks/variance.py output-study/v3/shapes --dataset shapes --baseline fpn
    python benchmarks/variance.py output-study/v3/clutter-val1000 --dataset clutter --val-images 1000

(the second on a study rescored on a larger validation split by benchmarks/rescore.py)

A run's bbox AP is measured on a finite validation split, so part of the spread between seeds is
measurement error: another draw of 200 images would score the same model differently. This
script estimates that part with a paired bootstrap over the validation images. For each run it
scores ``--replicates`` resamples (images drawn with replacement, the same draws for every run);
the standard deviation over the resamples is the evaluation's own noise. For each configuration
against the baseline it does the same for the paired difference (same seed, same resample).
Comparing that with the observed standard deviation of the paired difference over seeds gives
the share of the variance that the validation split's size causes; the rest comes from training
(initialisation, data order and sampling, which ``--seed`` changes together).

AP is COCO's (pycocotools' per-image matching, then its 101-point interpolated precision over
IoU 0.50:0.95, area "all", 100 detections); the resampled AP of the identity draw equals
pycocotools' own AP, which the script checks for every run before it uses it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


class PerImageMatches:
    """One run's detections matched to the ground truth per image (COCOeval.evaluate), kept so
    that AP can be recomputed for any multiset of images."""

    def __init__(self, ground_truth: COCO, results_file: str):
        with open(results_file) as f:
            results = json.load(f)
        with contextlib.redirect_stdout(io.StringIO()):
            detections = ground_truth.loadRes(results) if results else COCO()
            evaluator = COCOeval(ground_truth, detections, "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        self.coco_ap = float(evaluator.stats[0])
        params = evaluator.params
        self.image_ids = list(params.imgIds)
        self.category_ids = list(params.catIds)
        self.iou_thresholds = params.iouThrs
        area_all = params.areaRngLbl.index("all")
        images, areas = len(params.imgIds), len(params.areaRng)
        max_dets = params.maxDets[-1]
        # per category: per image (scores, matched (T, D), ignored (T, D), non-ignored gt count)
        self.per_category = []
        for k in range(len(params.catIds)):
            per_image = []
            for i in range(images):
                entry = evaluator.evalImgs[k * areas * images + area_all * images + i]
                if entry is None:
                    per_image.append(None)
                    continue
                scores = np.asarray(entry["dtScores"][:max_dets])
                matched = entry["dtMatches"][:, :max_dets] > 0
                ignored = entry["dtIgnore"][:, :max_dets].astype(bool)
                gt_count = int(np.count_nonzero(~np.asarray(entry["gtIgnore"], dtype=bool)))
                per_image.append((scores, matched, ignored, gt_count))
            self.per_category.append(per_image)

    def ap(self, image_indices: np.ndarray) -> float:
        """COCO bbox AP (0-100) over the images at ``image_indices`` (repeats count again)."""
        precisions = []
        for per_image in self.per_category:
            entries = [per_image[i] for i in image_indices if per_image[i] is not None]
            gt_count = sum(e[3] for e in entries)
            if gt_count == 0:
                continue  # a category absent from the draw is left out, as COCOeval does (-1)
            if entries:
                scores = np.concatenate([e[0] for e in entries])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e[1] for e in entries], axis=1)[:, order]
                ignored = np.concatenate([e[2] for e in entries], axis=1)[:, order]
            else:
                matched = ignored = np.zeros((len(self.iou_thresholds), 0), dtype=bool)
            true_positives = np.cumsum(matched & ~ignored, axis=1, dtype=float)
            false_positives = np.cumsum(~matched & ~ignored, axis=1, dtype=float)
            for tp, fp in zip(true_positives, false_positives):
                recall = tp / gt_count
                precision = tp / (tp + fp + np.spacing(1))  # as COCOeval.accumulate
                precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
                at = np.searchsorted(recall, RECALL_POINTS, side="left")
                sampled = np.zeros(len(RECALL_POINTS))
                valid = at < len(precision)
                sampled[valid] = precision[at[valid]]
                precisions.append(sampled.mean())
        return 100.0 * float(np.mean(precisions)) if precisions else -100.0


def run_folders(study: str) -> dict[str, dict[int, str]]:
    """{config: {seed: results.json}} of the finished runs under ``study`` that kept their results."""
    from rescore import finished_runs

    runs: dict[str, dict[int, str]] = {}
    for config, seed in finished_runs(study):
        results = os.path.join(study, config, seed, "results.json")
        if os.path.isfile(results):
            runs.setdefault(config, {})[int(seed[4:])] = results
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a sfpn.study output folder (<config>/seed<k>/results.json)")
    parser.add_argument("--dataset", default="shapes", help="the synthetic dataset the study ran on (its val split is the ground truth)")
    parser.add_argument("--val-images", type=int, help="the validation split's size, for a study rescored by rescore.py (default: the study's own split)")
    parser.add_argument("--baseline", default="fpn")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="of the bootstrap draws")
    parser.add_argument("--output", help="write the figures as JSON here too")
    args = parser.parse_args(argv)

    from sfpn.data.synthetic import split_files

    from rescore import validation_spec

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(split_files(validation_spec(args.dataset, args.val_images))["val"].ann_file)
    runs = run_folders(args.study)
    if args.baseline not in runs:
        raise SystemExit(f"error: no finished run of the baseline {args.baseline!r} in {args.study}")
    matches = {config: {seed: PerImageMatches(ground_truth, path) for seed, path in seeds.items()} for config, seeds in runs.items()}
    images = len(next(iter(next(iter(matches.values())).values())).image_ids)
    identity = np.arange(images)
    for config, seeds in matches.items():
        for seed, run in seeds.items():
            if not math.isclose(run.ap(identity), 100 * run.coco_ap, abs_tol=1e-6):
                raise SystemExit(f"error: {config} seed {seed}: recomputed AP {run.ap(identity):.4f} != COCOeval's {100 * run.coco_ap:.4f}")
    rng = np.random.default_rng(args.seed)
    draws = [rng.integers(0, images, images) for _ in range(args.replicates)]
    resampled = {config: {seed: np.array([run.ap(d) for d in draws]) for seed, run in seeds.items()} for config, seeds in matches.items()}

    report = {"images": images, "replicates": args.replicates, "configs": {}}
    print(f"{images} validation images, {args.replicates} paired bootstrap draws; bbox AP")
    print("| config | seeds | AP mean ± seed std | eval std of one run | Δ vs baseline ± seed std | eval std of Δ | eval share of Δ's variance |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = resampled[args.baseline]
    for config, seeds in resampled.items():
        aps = [100 * matches[config][s].coco_ap for s in seeds]
        eval_std = statistics.mean(float(r.std(ddof=1)) for r in seeds.values())
        row = {"ap": aps, "eval_std": eval_std}
        cells = [config, str(len(aps)), f"{statistics.mean(aps):.1f} ± {statistics.stdev(aps):.1f}" if len(aps) > 1 else f"{aps[0]:.1f}", f"{eval_std:.2f}"]
        paired = [s for s in seeds if s in base]
        if config != args.baseline and paired:
            diffs = [100 * (matches[config][s].coco_ap - matches[args.baseline][s].coco_ap) for s in paired]
            diff_eval_std = statistics.mean(float((seeds[s] - base[s]).std(ddof=1)) for s in paired)
            seed_std = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
            share = diff_eval_std ** 2 / seed_std ** 2 if len(diffs) > 1 else float("nan")
            row.update(diffs=diffs, diff_eval_std=diff_eval_std, diff_seed_std=seed_std)
            cells += [f"{statistics.mean(diffs):+.2f} ± {seed_std:.2f}", f"{diff_eval_std:.2f}", f"{100 * min(share, 1.0):.0f}%"]
        else:
            cells += ["baseline" if config == args.baseline else "-", "-", "-"]
        report["configs"][config] = row
        print("| " + " | ".join(cells) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
