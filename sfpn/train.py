"""Train a detector: ``python -m sfpn.train``.

With no arguments: generates (once) the synthetic shapes dataset, trains the small SFPN detector
on it for 1000 iterations (README.md gives the measured time; the semantic branch learns the
set's things and stuff from its label maps), evaluates it with COCOeval every 250 iterations and
at the end, and writes checkpoints, ``metrics.jsonl``, ``plot.png`` and ``eval.json`` to
``./output/<preset>``. ``--dataset clutter`` trains on another synthetic dataset
(``sfpn.data.synthetic.DATASETS``).

On COCO 2017 with the paper's schedule, on 8 GPUs, the semantic branch learning COCO-stuff's
things and stuff (``<root>/stuffthingmaps_trainval2017/``, COCO-stuff's label maps, unzipped
into the COCO root)::

    torchrun --nproc_per_node=8 -m sfpn.train --preset faster_rcnn_r50_sfpn_1x --data-root /data/coco

(``--data-root`` alone expects COCO's layout: train2017/, val2017/, annotations/instances_*.json;
``--ann-file``/``--val-ann-file``/``--val-data-root`` point anywhere else.) ``--set key=value``
overrides a training config key (``solver.lr=0.01``, ``data.min_size=(640,800)``, ...) or a
detector config key (``model.neck.alpha=0.5``, or ``neck.alpha=0.5``); ``--list-keys`` lists them.
"""
from __future__ import annotations

import argparse
import os
import sys

from ._cli import check_not_shadowed
from ._memory import describe as describe_memory, keep_freed_memory

DEFAULT_PRESET = "faster_rcnn_r18_sfpn_small"
#: The synthetic dataset trained on when no data is given.
DEFAULT_DATASET = "shapes"
#: The flags that set a config key, and the key: a flag wins over ``--set`` of the same key.
FLAG_KEYS = {
    "iters": "solver.max_iters",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
    "batch_size": "solver.batch_size",
    "lr": "solver.lr",
    "seed": "seed",
    "num_workers": "data.num_workers",
    "amp": "solver.amp",
}
EPILOG = f"""\
precedence: a config key takes the preset's value, then the data's (a synthetic dataset, or a COCO
root with stuffthingmaps_trainval2017/, sets data.semantic=png and its label maps), then each --set
of it in order, then its flag (--iters, --lr, ...): a flag wins over --set of the same key. Every
value is checked before any work starts. Keys: the training config's (solver.*, data.*,
eval_every, ...) and the detector's under model. (model.neck.alpha, or neck.alpha); list them
with their values: --list-keys.
Flag defaults shown are {DEFAULT_PRESET}'s; other presets have their own (--list-keys shows them)."""


def parse_args(argv=None) -> argparse.Namespace:
    from .data.synthetic import DATASETS
    from .engine.config import training_config
    from .overrides import config_fields

    defaults = config_fields(training_config(DEFAULT_PRESET))
    parser = argparse.ArgumentParser(
        prog="python -m sfpn.train", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def config_flag(flag: str, help: str, **options) -> None:
        key = FLAG_KEYS[flag.removeprefix("--").replace("-", "_")]
        if isinstance(defaults[key].allowed, tuple):  # shown as argparse shows choices; checked with the config
            options["metavar"] = "{" + ",".join(map(str, defaults[key].allowed)) + "}"
        parser.add_argument(flag, help=f"{help}; sets {key} (default {defaults[key].value!r})", **options)

    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"detector preset (default {DEFAULT_PRESET}; see sfpn.list_presets())")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a training or detector config key (repeatable; see --list-keys)")
    parser.add_argument("--list-keys", action="store_true", help="print every --set key of the preset with its value (after --set and flags) and exit")
    parser.add_argument("--dataset", choices=list(DATASETS), help=f"a synthetic dataset, generated on first use (default {DEFAULT_DATASET} when no --data-root is given)")
    parser.add_argument("--data-root", help="training image folder, or a COCO root with train2017/, val2017/ and annotations/ (default: the synthetic dataset)")
    parser.add_argument("--ann-file", help="training annotation file (COCO format; default: none, see --data-root)")
    parser.add_argument("--val-data-root", help="validation image folder (default: --data-root, or <root>/val2017 for a COCO root)")
    parser.add_argument("--val-ann-file", help="validation annotation file (COCO format; default: none, see --data-root)")
    parser.add_argument("--output-dir", help="where checkpoints, metrics.jsonl, plot.png and eval.json go (default ./output/<preset>)")
    parser.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT", help="continue from a checkpoint (default: start afresh; --resume alone: the last one in --output-dir)")
    config_flag("--iters", "total iterations (the LR steps scale with it)", type=int)
    config_flag("--eval-every", "evaluate every N iterations (0: only at the end)", type=int)
    config_flag("--checkpoint-every", "checkpoint every N iterations", type=int)
    config_flag("--batch-size", "images per iteration over all processes", type=int)
    config_flag("--lr", "base learning rate", type=float)
    config_flag("--seed", "random seed", type=int)
    config_flag("--num-workers", "data loading workers per process", type=int)
    config_flag("--amp", "mixed precision: auto (bf16 on a GPU that has it, else fp16; on the CPU bf16 with channels_last where the CPU computes bf16 natively, else fp32), bf16, fp16 (CUDA) or off")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic dataset (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return parser.parse_args(argv)


def overrides_of(args) -> list[tuple[str, object]]:
    """``(key, value)`` pairs in the order of precedence: ``--set`` in order, then the flags."""
    overrides = []
    for pair in args.overrides:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides.append((key, text))
    overrides += [(key, getattr(args, flag)) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    return overrides


def synthetic_spec(args):
    """The spec of the synthetic dataset the arguments train on, or None for data given by path."""
    from .data.synthetic import DATASETS

    if args.data_root is not None or args.ann_file is not None:
        return None
    return DATASETS[args.dataset or DEFAULT_DATASET](seed=args.synthetic_seed)


#: COCO-stuff's things-and-stuff label maps inside a COCO root, one folder per split.
COCO_STUFF_MAPS = "stuffthingmaps_trainval2017"


def data_defaults(args) -> list[tuple[str, object]]:
    """``(key, value)`` config defaults that come with the data, applied after the preset's and
    before ``--set`` and the flags: the semantic branch learns things and stuff from the label
    maps the data has, a synthetic dataset's own or COCO-stuff's in a COCO root, and a synthetic
    dataset's val split is scored as a panoptic segmentation against its panoptic ground truth."""
    from .data.synthetic import label_maps_dir, split_files

    spec = synthetic_spec(args)
    if spec is not None:
        val = split_files(spec)["val"]
        return [("data.semantic", "png"), ("data.semantic_dir", label_maps_dir(spec)),
                ("data.panoptic_json", val.panoptic_file), ("data.panoptic_dir", val.panoptic_dir)]
    if args.ann_file is None and os.path.isdir(os.path.join(args.data_root, COCO_STUFF_MAPS)):  # a COCO root
        return [("data.semantic", "png"), ("data.semantic_dir", os.path.join(args.data_root, COCO_STUFF_MAPS)), ("data.coco_stuff", True)]
    return []


def resolve_data(args) -> dict[str, tuple[str, str]]:
    """{"train": (image folder, annotation file), "val": (...)} from the arguments."""
    from .data.synthetic import synthetic_dataset

    spec = synthetic_spec(args)
    if spec is not None:
        splits = synthetic_dataset(spec, progress=not args.no_progress)
        return {name: (split.image_root, split.ann_file) for name, split in splits.items()}
    if args.dataset is not None:
        raise SystemExit("error: --dataset names a synthetic dataset: give it or --data-root, not both")
    if args.data_root is None or (args.ann_file is None) != (args.val_ann_file is None):
        raise SystemExit("error: give --data-root alone (a COCO 2017 root) or with both --ann-file and --val-ann-file")
    if args.ann_file is None:
        root = args.data_root
        return {
            "train": (os.path.join(root, "train2017"), os.path.join(root, "annotations", "instances_train2017.json")),
            "val": (args.val_data_root or os.path.join(root, "val2017"), os.path.join(root, "annotations", "instances_val2017.json")),
        }
    return {"train": (args.data_root, args.ann_file), "val": (args.val_data_root or args.data_root, args.val_ann_file)}


def list_keys(train, detector) -> str:
    """One line per ``--set`` key: the key, its value and what it accepts (its choices or range,
    else its type)."""
    from .engine.build import all_keys

    return "\n".join(f"{key}={field.value!r}  ({field.describe()})" for key, field in all_keys(train, detector).items())


def main(argv=None) -> dict | None:
    check_not_shadowed()
    args = parse_args(argv)
    import torch

    from .engine import distributed
    from .engine.build import build_trainer, run_configs
    from .engine.evaluation import format_metrics

    try:
        config, detector = run_configs(args.preset, data_defaults(args) + overrides_of(args))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if args.list_keys:
        print(list_keys(config, detector))
        return {}
    output_dir = args.output_dir or os.path.join("output", args.preset)
    device = distributed.init_distributed(args.device)
    try:
        paths = resolve_data(args)
        try:
            trainer = build_trainer(args.preset, paths, output_dir, config, detector, device, progress=not args.no_progress)
        except ValueError as error:  # datasets that do not fit the config
            raise SystemExit(f"error: {error}") from None
        train_set, val_set = trainer.train_set, trainer.val_set
        if distributed.is_main_process():
            print(
                f"sfpn.train: {args.preset} on {device} x{distributed.get_world_size()}, "
                f"{len(train_set)} train / {len(val_set)} val images, {train_set.num_classes} classes, "
                f"{config.solver.max_iters} iterations of {config.solver.batch_size} images -> {output_dir}; "
                f"malloc: {describe_memory()}; "
                + (f"CPU threads {torch.get_num_threads()}, {config.cpu_threads}; " if device.type == "cpu" else "")
                + f"precision {trainer.precision.describe()}",
                flush=True,
            )
        from .engine.checkpoint import CheckpointError
        from .engine.trainer import TrainingDiverged

        try:  # a broken checkpoint or a diverged run: one error line, not a traceback
            if args.resume is not None:
                trainer.resume(args.resume or output_dir)
            metrics = trainer.train()
        except (CheckpointError, TrainingDiverged) as error:
            raise SystemExit(f"error: {error}") from None
        if distributed.is_main_process():
            print(format_metrics(metrics))
            print(f"wrote {os.path.join(output_dir, 'eval.json')}, metrics.jsonl, plot.png and checkpoints")
        return metrics
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    keep_freed_memory()  # this process only: a library import leaves malloc alone (sfpn/_memory.py)
    sys.exit(0 if main() is not None else 1)
