"""From a preset, ``--set`` overrides and data paths to a ready :class:`~sfpn.engine.trainer.Trainer`.

``python -m sfpn.train`` and the tests build their runs here, so both wire the same things: the
two configs (detector and training) with their overrides, the datasets whose targets the
detector needs, the seeded model and the trainer.

Config keys form one namespace: the training config's own keys (``solver.lr``, ``data.min_size``,
``eval_every``, ...) and the detector config's under ``model.`` (``model.neck.alpha``). The two
configs' top-level names are disjoint, so a detector key may also drop the ``model.`` prefix
(``neck.alpha``): it resolves the same way whatever the value.
"""
from __future__ import annotations

import dataclasses

import torch

from ..config import DetectorConfig, check_detector_config, preset_config
from ..modeling.build import build
from ..overrides import Key, config_fields, set_key, unknown_key_message
from .config import TrainConfig, training_config, validate
from .trainer import Trainer, seed_everything

MODEL_PREFIX = "model."
#: Set from the training data, not by an override.
_DATA_KEYS = ("num_classes", "num_stuff_classes")


def all_keys(train: TrainConfig, detector: DetectorConfig) -> dict[str, Key]:
    """Every ``--set`` key of a run with its value and allowed values, training keys first."""
    model_keys = {MODEL_PREFIX + key: field for key, field in config_fields(detector).items() if key not in _DATA_KEYS}
    return {**config_fields(train), **model_keys}


def check_run(train: TrainConfig, detector: DetectorConfig) -> None:
    """Checks both configs of a run completely, the rules between their fields too, before any
    data is read; a ``ValueError`` names the first bad key."""
    validate(train)
    check_detector_config(detector)


def run_configs(preset: str, overrides: list[tuple[str, object]] = ()) -> tuple[TrainConfig, DetectorConfig]:
    """The training and detector configs of ``preset`` with ``(key, value)`` overrides applied in
    order and both checked (:func:`check_run`); a ``ValueError`` names the first bad key."""
    train, detector = training_config(preset), preset_config(preset)
    train_keys = config_fields(train)
    detector_keys = config_fields(detector)
    for key, value in overrides:
        model_key = key.removeprefix(MODEL_PREFIX)
        if key in train_keys:
            set_key(train, key, value)
        elif model_key in detector_keys and model_key not in _DATA_KEYS:
            set_key(detector, model_key, value)
        else:
            raise ValueError(unknown_key_message(key, all_keys(train, detector)))
    check_run(train, detector)
    return train, detector


def build_datasets(paths: dict[str, tuple[str, str]], train: TrainConfig, detector: DetectorConfig):
    """Train and val :class:`~sfpn.data.coco.CocoDetection` with the targets ``detector`` trains
    on: masks for Mask R-CNN, semantic maps when the semantic loss is on (else none are made)."""
    from ..data.coco import CocoDetection
    from ..data.panoptic import PanopticGroundTruth
    from ..data.transforms import build_transforms

    data = train.data
    common = dict(
        semantic=data.semantic if detector.trains_semantic else "none",
        semantic_dir=data.semantic_dir or None,
        coco_stuff=data.coco_stuff,
        return_masks=detector.meta_architecture == "mask_rcnn",
    )
    train_set = CocoDetection(*paths["train"], transforms=build_transforms(data.min_size, data.max_size, data.flip_prob), remove_empty=True, **common)
    panoptic = PanopticGroundTruth(data.panoptic_json, data.panoptic_dir or None) if data.panoptic_json else None
    val_set = CocoDetection(*paths["val"], transforms=build_transforms(data.test_min_size, data.max_size), panoptic=panoptic, **common)
    if (val_set.label_to_category_id, val_set.semantic_class_names) != (train_set.label_to_category_id, train_set.semantic_class_names):
        raise ValueError(f"{paths['val'][1]} and {paths['train'][1]} have different categories")
    return train_set, val_set


def build_trainer(
    preset: str,
    paths: dict[str, tuple[str, str]],
    output_dir: str,
    train: TrainConfig | None = None,
    detector: DetectorConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Trainer:
    """The trainer of a run: ``paths`` is ``{"train": (image folder, annotation file), "val": ...}``;
    ``train`` and ``detector`` default to the preset's configs; both are checked before the data
    is read (:func:`check_run`). ``num_classes`` and ``num_stuff_classes`` come from the training data."""
    train, detector = train or training_config(preset), detector or preset_config(preset)
    check_run(train, detector)
    train_set, val_set = build_datasets(paths, train, detector)
    detector = dataclasses.replace(detector, num_classes=train_set.num_classes, num_stuff_classes=train_set.num_stuff_classes)
    seed_everything(train.seed)
    model = build(detector).to(device)
    meta = {
        "preset": preset,
        "num_classes": train_set.num_classes,
        "classes": train_set.class_names,
        "semantic_classes": train_set.semantic_class_names,
        "label_to_category_id": train_set.label_to_category_id,
        "data": {split: {"image_root": root, "ann_file": ann} for split, (root, ann) in paths.items()},
    }
    return Trainer(model, train_set, val_set, train, output_dir, torch.device(device), meta, progress=progress)
