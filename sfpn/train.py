"""Train a detector: ``python -m sfpn.train``.

With no arguments: generates (once) the synthetic shapes dataset, trains the small SFPN detector
on it (about ten minutes on two CPU cores), evaluates it with COCOeval and writes checkpoints,
``metrics.jsonl``, ``plot.png`` and ``eval.json`` to ``./output/<preset>``.

On COCO 2017 with the paper's schedule, on 8 GPUs::

    torchrun --nproc_per_node=8 -m sfpn.train --preset faster_rcnn_r50_sfpn_1x --data-root /data/coco

(``--data-root`` alone expects COCO's layout: train2017/, val2017/, annotations/instances_*.json;
``--ann-file``/``--val-ann-file``/``--val-data-root`` point anywhere else.) ``--set key=value``
overrides the training config (``solver.lr=0.01``, ``data.min_size=(640,800)``, ...) or, for any
other key, the detector's (``neck.alpha=0.5``).
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PRESET = "faster_rcnn_r18_sfpn_small"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sfpn.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"detector preset (default {DEFAULT_PRESET}; see sfpn.list_presets())")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a training or model config key (repeatable)")
    parser.add_argument("--data-root", help="training image folder, or a COCO root with train2017/, val2017/ and annotations/ (default: the synthetic dataset)")
    parser.add_argument("--ann-file", help="training annotation file (COCO format)")
    parser.add_argument("--val-data-root", help="validation image folder (default: --data-root, or <root>/val2017 for a COCO root)")
    parser.add_argument("--val-ann-file", help="validation annotation file (COCO format)")
    parser.add_argument("--output-dir", help="where checkpoints, metrics.jsonl, plot.png and eval.json go (default ./output/<preset>)")
    parser.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT", help="continue from a checkpoint (default: the last one in --output-dir)")
    parser.add_argument("--iters", type=int, help="total iterations (the LR steps scale with it)")
    parser.add_argument("--eval-every", type=int, help="evaluate every N iterations (0: only at the end)")
    parser.add_argument("--checkpoint-every", type=int, help="checkpoint every N iterations")
    parser.add_argument("--batch-size", type=int, help="images per iteration over all processes")
    parser.add_argument("--lr", type=float, help="base learning rate")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--num-workers", type=int, help="data loading workers per process")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), help="mixed precision on CUDA")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def resolve_data(args) -> dict[str, tuple[str, str]]:
    """{"train": (image folder, annotation file), "val": (...)} from the arguments."""
    from .data.synthetic import SyntheticSpec, synthetic_dataset

    if args.data_root is None and args.ann_file is None:
        splits = synthetic_dataset(SyntheticSpec(seed=args.synthetic_seed), progress=not args.no_progress)
        return {name: (split.image_root, split.ann_file) for name, split in splits.items()}
    if args.data_root is None or (args.ann_file is None) != (args.val_ann_file is None):
        raise SystemExit("error: give --data-root alone (a COCO 2017 root) or with both --ann-file and --val-ann-file")
    if args.ann_file is None:
        root = args.data_root
        return {
            "train": (os.path.join(root, "train2017"), os.path.join(root, "annotations", "instances_train2017.json")),
            "val": (args.val_data_root or os.path.join(root, "val2017"), os.path.join(root, "annotations", "instances_val2017.json")),
        }
    return {"train": (args.data_root, args.ann_file), "val": (args.val_data_root or args.data_root, args.val_ann_file)}


def split_overrides(pairs: list[str], train_config) -> tuple[list[tuple[str, object]], dict[str, object]]:
    """``--set`` pairs -> (training config overrides, model overrides)."""
    from .engine.config import has_key, parse_value

    train_overrides, model_overrides = [], {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {pair!r}")
        value = parse_value(text)
        if has_key(train_config, key):
            train_overrides.append((key, value))
        else:
            model_overrides[key.removeprefix("model.")] = value
    return train_overrides, model_overrides


def build_datasets(paths, config, return_masks: bool, semantic: bool = True):
    """Train and val datasets; ``semantic=False`` (a detector without the semantic loss) skips
    rasterising semantic maps."""
    from .data.coco import CocoDetection
    from .data.transforms import build_transforms

    data = config.data
    source = data.semantic if semantic else "none"
    common = dict(semantic=source, semantic_dir=data.semantic_dir or None, return_masks=return_masks)
    train_set = CocoDetection(*paths["train"], transforms=build_transforms(data.min_size, data.max_size, data.flip_prob), remove_empty=True, **common)
    val_set = CocoDetection(*paths["val"], transforms=build_transforms(data.test_min_size, data.max_size), **common)
    if val_set.label_to_category_id != train_set.label_to_category_id:
        raise SystemExit(f"error: {paths['val'][1]} and {paths['train'][1]} have different categories")
    return train_set, val_set


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    from . import build_detector
    from .config import get_config
    from .engine import distributed
    from .engine.config import set_key, training_config
    from .engine.evaluation import format_metrics
    from .engine.trainer import Trainer, seed_everything

    try:
        config = training_config(args.preset)
        train_overrides, model_overrides = split_overrides(args.overrides, config)
        for key, value in train_overrides:
            set_key(config, key, value)
        for key, value in (
            ("solver.max_iters", args.iters),
            ("eval_every", args.eval_every),
            ("checkpoint_every", args.checkpoint_every),
            ("solver.batch_size", args.batch_size),
            ("solver.lr", args.lr),
            ("seed", args.seed),
            ("data.num_workers", args.num_workers),
            ("solver.amp", args.amp),
        ):
            if value is not None:
                set_key(config, key, value)
        output_dir = args.output_dir or os.path.join("output", args.preset)
        # What the targets need (masks for Mask R-CNN, semantic maps for the SFPN loss) follows
        # from the detector's config; num_classes does not matter for that.
        detector = get_config(args.preset, 1, **model_overrides)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    device = distributed.init_distributed(args.device)
    try:
        paths = resolve_data(args)
        train_set, val_set = build_datasets(
            paths,
            config,
            return_masks=detector.meta_architecture == "mask_rcnn",
            semantic=detector.neck.semantic and detector.neck.alpha > 0,
        )
        seed_everything(config.seed)
        model = build_detector(args.preset, train_set.num_classes, **model_overrides).to(device)
        meta = {
            "preset": args.preset,
            "num_classes": train_set.num_classes,
            "model_overrides": model_overrides,
            "classes": train_set.class_names,
            "label_to_category_id": train_set.label_to_category_id,
            "data": {split: {"image_root": root, "ann_file": ann} for split, (root, ann) in paths.items()},
        }
        trainer = Trainer(model, train_set, val_set, config, output_dir, device, meta, progress=not args.no_progress)
        if distributed.is_main_process():
            print(
                f"sfpn.train: {args.preset} on {device} x{distributed.get_world_size()}, "
                f"{len(train_set)} train / {len(val_set)} val images, {train_set.num_classes} classes, "
                f"{config.solver.max_iters} iterations of {config.solver.batch_size} images -> {output_dir}",
                flush=True,
            )
        if args.resume is not None:
            trainer.resume(args.resume or output_dir)
        metrics = trainer.train()
        if distributed.is_main_process():
            print(format_metrics(metrics))
            print(f"wrote {os.path.join(output_dir, 'eval.json')}, metrics.jsonl, plot.png and checkpoints")
        return metrics
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
