"""Training configuration: solver, data and loop settings with their allowed values, and presets.

The detector's own config lives with the model (``sfpn.config``); this one says how it is
trained. ``training_config(preset)`` gives the paper's 1x schedule for the full-size presets
(batch 16, LR 0.02, 90k iterations, LR x0.1 at 60k and 80k, linear warmup, 800/1333 images) and
a CPU-sized schedule for the ``*_small`` presets, the default of ``python -m sfpn.train``.
Each field declares its allowed values as the detector config's do (:func:`sfpn.overrides.setting`);
overrides go through :func:`sfpn.overrides.set_key` and :func:`validate` checks the whole config.
"""
from __future__ import annotations

import dataclasses

from ..overrides import (
    AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_config, check_not_empty, key_names, setting,
)
from ..semantic_labels import SEMANTIC_SOURCES


@dataclasses.dataclass
class SolverConfig:
    #: Images per iteration over all processes (each process gets batch_size / world_size).
    batch_size: int = setting(16, AT_LEAST_ONE)
    lr: float = setting(0.02, POSITIVE)
    momentum: float = setting(0.9, FRACTION)
    weight_decay: float = setting(1e-4, NON_NEGATIVE)
    max_iters: int = setting(90_000, AT_LEAST_ONE)
    #: Where the LR is multiplied by ``gamma``, as fractions of ``max_iters`` (so ``--iters``
    #: scales the schedule): 1x = 60k and 80k of 90k.
    steps: tuple[float, ...] = setting((2 / 3, 8 / 9), Range(0, 1, low_open=True))
    gamma: float = setting(0.1, POSITIVE)
    warmup_iters: int = setting(1000, NON_NEGATIVE)
    #: The LR starts at warmup_factor * lr and rises linearly over warmup_iters.
    warmup_factor: float = setting(0.001, Range(0, 1, low_open=True))
    #: Clip the gradients' global L2 norm to this; 0 disables clipping.
    clip_grad_norm: float = setting(0.0, NON_NEGATIVE)
    #: Mixed precision, in training and evaluation: "auto" (CUDA: bf16 where supported, else
    #: fp16; CPU: bf16 where the CPU computes bf16 natively, else fp32), "bf16", "fp16" (CUDA
    #: only) or "off" (fp32). On the CPU every mode lays weights and activations out channels_last.
    #: See sfpn.engine.precision.
    amp: str = setting("auto", ("auto", "bf16", "fp16", "off"))


@dataclasses.dataclass
class DataConfig:
    #: Shorter side when training; several values = multi-scale training (one drawn per image).
    min_size: tuple[int, ...] = setting((800,), AT_LEAST_ONE)
    max_size: int = setting(1333, AT_LEAST_ONE)
    test_min_size: int = setting(800, AT_LEAST_ONE)
    flip_prob: float = setting(0.5, FRACTION)
    #: Where the semantic labels of SFPN come from (when the detector trains its branch): the
    #: datasets paint each image's map from its instance masks (a box where an annotation has
    #: none), from its boxes, from label PNGs in ``semantic_dir``, or make none ("none": the
    #: detector paints them from each target's masks, else its boxes).
    semantic: str = setting("masks", SEMANTIC_SOURCES)
    semantic_dir: str = ""
    #: Add COCO-stuff's 91 stuff categories to the annotation file's (COCO's instances files list
    #: things only) so that COCO-stuff's label PNGs train things and stuff.
    coco_stuff: bool = False
    #: COCO panoptic ground truth of the val split (its ``panoptic_*.json``): evaluation then
    #: scores the detector's panoptic result too (PQ, SQ, RQ); ``panoptic_dir`` is the folder of
    #: its PNGs, by default the JSON's path without ``.json`` (COCO's convention).
    panoptic_json: str = ""
    panoptic_dir: str = ""
    num_workers: int = setting(4, NON_NEGATIVE)


@dataclasses.dataclass
class TrainConfig:
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    #: Evaluate on the val split every this many iterations (0: only at the end).
    eval_every: int = setting(0, NON_NEGATIVE)
    checkpoint_every: int = setting(5000, AT_LEAST_ONE)
    #: Periodic checkpoints kept on disk (the final one is always kept); 0 keeps all.
    keep_checkpoints: int = setting(3, NON_NEGATIVE)
    log_every: int = setting(20, AT_LEAST_ONE)
    seed: int = setting(0, NON_NEGATIVE)
    #: Images per process and batch when evaluating.
    eval_batch_size: int = setting(1, AT_LEAST_ONE)
    #: DDP's find_unused_parameters, for detectors whose forward skips some parameters.
    find_unused_parameters: bool = False
    #: On the CPU, "adaptive" fits the intra-op thread count to the cores that other processes
    #: leave free, measured every few seconds (never more than torch's count at the start; see
    #: sfpn._threads.SharedCoreThreads); "fixed" keeps torch's count, for bitwise-reproducible runs.
    cpu_threads: str = setting("adaptive", ("adaptive", "fixed"))
    #: The divergence guard stops the run when the total loss is non-finite or more than
    #: ``divergence_factor`` times the median loss of its first ``divergence_window`` iterations
    #: (a window of 0 disables the ratio test; non-finite losses always stop the run).
    divergence_factor: float = setting(100.0, Range(1, low_open=True))
    divergence_window: int = setting(20, NON_NEGATIVE)


def training_config(preset: str) -> TrainConfig:
    """The training schedule that goes with a detector preset."""
    if not preset.endswith("_small"):
        return TrainConfig()
    # Sized for minutes, not hours, on two CPU cores with the synthetic shapes dataset (README.md
    # gives the measured time); the three evaluations on the way draw the AP curve of plot.png.
    return TrainConfig(
        solver=SolverConfig(batch_size=4, lr=0.02, max_iters=1000, steps=(0.75, 0.92), warmup_iters=100, warmup_factor=0.01),
        data=DataConfig(min_size=(256,), max_size=320, test_min_size=256, flip_prob=0.5, num_workers=1),
        eval_every=250,
        checkpoint_every=250,
        keep_checkpoints=2,
        log_every=10,
    )


def validate(config: TrainConfig) -> None:
    """Checks every field (type, range, choices) and the rules between fields; a ``ValueError``
    names the first bad key."""
    check_config(config)
    check_not_empty(key_names("data.min_size"), config.data.min_size)
    if config.data.semantic == "png" and not config.data.semantic_dir:
        raise ValueError("config key 'data.semantic=png' needs data.semantic_dir, the folder of label PNGs")
    if config.data.panoptic_dir and not config.data.panoptic_json:
        raise ValueError("config key 'data.panoptic_dir' needs data.panoptic_json, the panoptic annotation file")
