"""Evaluate a checkpoint: ``python -m sfpn.eval CHECKPOINT``.

Scores the detector with COCOeval (bbox, and segm when it predicts masks or a semantic map: see
``sfpn.engine.evaluation``) on the validation split it was trained with, or on any COCO-format
dataset given with ``--data-root``/``--ann-file``. Prints the COCO AP table (AP, AP50, AP75 and
the per-size APs), writes the COCO results JSON and, with ``--metrics-json``, the metrics. With
COCO panoptic ground truth (``--panoptic-json``, or the training config's ``data.panoptic_json``
for its validation split) it scores the panoptic result too and prints PQ, SQ, RQ. A branch
trained on label PNGs (``data.semantic=png``) is scored on another dataset with its label PNGs
(``--semantic-dir``): e.g. a larger validation split of the same synthetic set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ._cli import check_not_shadowed
from ._memory import keep_freed_memory


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low``, else argparse's one-line usage error."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in its error
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    from .engine.config import TrainConfig
    from .engine.precision import AMP_MODES
    from .overrides import allowed

    parser = argparse.ArgumentParser(prog="python -m sfpn.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint file, or a training output folder (its last checkpoint)")
    parser.add_argument("--data-root", help="image folder (default: the checkpoint's validation split)")
    parser.add_argument("--ann-file", help="COCO annotation file (with --data-root)")
    parser.add_argument("--results", help="where to write the COCO results JSON (default: results_eval.json beside the checkpoint)")
    parser.add_argument("--panoptic-json", help="COCO panoptic annotation file of the images: also score PQ, SQ, RQ "
                        "(default: the training config's data.panoptic_json, for its validation split)")
    parser.add_argument("--panoptic-dir", help="folder of the panoptic PNGs (default: the JSON's path without .json)")
    parser.add_argument("--semantic-dir", help="folder of the label PNGs of --data-root's images, as the checkpoint's "
                        "training read them (data.semantic=png): also score the semantic map (default: not scored "
                        "on another dataset)")
    parser.add_argument("--metrics-json", help="also write the metrics as JSON here")
    parser.add_argument("--min-size", type=int_at_least(1), help="shorter side of the test images (default: the training config's data.test_min_size)")
    parser.add_argument("--max-size", type=int_at_least(1), help="cap on the longer side (default: the training config's data.max_size)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=1, help="images per forward pass (default 1)")
    parser.add_argument("--num-workers", type=int_at_least(0), default=1, help="data loading workers (default 1)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--amp", choices=AMP_MODES, help="mixed precision, as the training config's solver.amp (default: the checkpoint's)")
    parser.add_argument("--cpu-threads", choices=allowed(TrainConfig, "cpu_threads"), help="on the CPU, fit the thread count to the "
                        "cores other processes leave free, or keep torch's, as the training config's cpu_threads "
                        "(default: the checkpoint's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    check_not_shadowed()
    args = parse_args(argv)
    import torch

    from ._threads import fitted_cpu_threads
    from .data.coco import CocoDetection
    from .data.panoptic import PanopticGroundTruth
    from .data.transforms import build_transforms
    from .engine import distributed
    from .engine.checkpoint import CheckpointError, model_from_checkpoint, resolve_checkpoint
    from .engine.evaluation import evaluate, format_metrics
    from .engine.precision import choose_precision, prepare_model

    if (args.data_root is None) != (args.ann_file is None):
        raise SystemExit("error: give both --data-root and --ann-file, or neither")
    if args.panoptic_dir and not args.panoptic_json:
        raise SystemExit("error: --panoptic-dir needs --panoptic-json")
    if args.semantic_dir and args.data_root is None:
        raise SystemExit("error: --semantic-dir needs --data-root (the checkpoint's own split has its label PNGs)")
    if args.semantic_dir and not os.path.isdir(args.semantic_dir):
        raise SystemExit(f"error: --semantic-dir {args.semantic_dir!r} is not a folder")
    device = distributed.init_distributed(args.device)
    try:
        try:
            path = resolve_checkpoint(args.checkpoint)
            model, meta = model_from_checkpoint(path, device)
        except (FileNotFoundError, CheckpointError) as error:
            raise SystemExit(f"error: {error}") from None
        if args.data_root is None:
            image_root, ann_file = meta["data"]["val"]["image_root"], meta["data"]["val"]["ann_file"]
        else:
            image_root, ann_file = args.data_root, args.ann_file
        amp = args.amp or meta.get("train_config", {}).get("solver", {}).get("amp", "auto")
        if args.amp is None and amp == "fp16" and device.type != "cuda":
            amp = "auto"  # trained in fp16 on a GPU: on the CPU, the CPU's own choice
        try:
            precision = choose_precision(amp, device)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        prepare_model(model, precision)
        cpu_threads = args.cpu_threads or meta.get("train_config", {}).get("cpu_threads", "adaptive")
        if distributed.is_main_process():
            thread_policy = f"CPU threads {torch.get_num_threads()}, {cpu_threads}; " if device.type == "cpu" else ""
            print(f"sfpn.eval: {path} on {device}; {thread_policy}precision {precision.describe()}", flush=True)
        data_config = meta.get("train_config", {}).get("data", {})
        transforms = build_transforms(args.min_size or data_config.get("test_min_size", 800), args.max_size or data_config.get("max_size", 1333))
        # Semantic labels as in training, so that the semantic branch is scored too (its mIoU).
        has_branch = getattr(model.neck, "has_semantic_branch", False)
        semantic = data_config.get("semantic", "masks") if has_branch else "none"
        semantic_dir = data_config.get("semantic_dir") or None
        if args.semantic_dir and has_branch and semantic != "png":  # (a detector without a branch has nothing to score)
            raise SystemExit(f"error: --semantic-dir is for a detector whose semantic branch trained on label PNGs "
                             f"(data.semantic=png); this one's trained on {semantic!r}")
        if semantic == "png" and args.data_root is not None:  # the training's label PNGs are not this dataset's
            semantic_dir = args.semantic_dir
            semantic = "png" if semantic_dir else "none"
        panoptic_json, panoptic_dir = args.panoptic_json, args.panoptic_dir
        if panoptic_json is None and args.data_root is None:  # the panoptic ground truth of the training's val split
            panoptic_json, panoptic_dir = data_config.get("panoptic_json"), data_config.get("panoptic_dir")
        try:
            panoptic = PanopticGroundTruth(panoptic_json, panoptic_dir or None) if panoptic_json else None
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"error: {error}") from None
        dataset = CocoDetection(image_root, ann_file, transforms=transforms, semantic=semantic, semantic_dir=semantic_dir,
                                coco_stuff=data_config.get("coco_stuff", False), panoptic=panoptic)
        if dataset.label_to_category_id != meta["label_to_category_id"]:
            raise SystemExit(f"error: {ann_file} has other categories than the checkpoint was trained on ({meta['classes']})")
        results_file = args.results or os.path.join(os.path.dirname(path), "results_eval.json")
        with fitted_cpu_threads(device.type, cpu_threads) as shared_cores:
            metrics, table = evaluate(model, dataset, device, args.batch_size, args.num_workers, results_file,
                                      progress=not args.no_progress, precision=precision, shared_cores=shared_cores)
        if distributed.is_main_process():
            print(f"{path} on {ann_file} ({len(dataset)} images):\n{table}\n\n{format_metrics(metrics)}")
            print(f"wrote COCO results to {results_file}")
            if args.metrics_json:
                with open(args.metrics_json, "w") as f:
                    json.dump(metrics, f, indent=2)
        return metrics
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    keep_freed_memory()  # this process only: a library import leaves malloc alone (sfpn/_memory.py)
    main()
    sys.exit(0)
