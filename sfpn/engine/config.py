"""Training configuration: solver, data and loop settings, their presets and allowed ranges.

The detector's own config lives with the model (``sfpn.build_detector``); this one says how it
is trained. ``training_config(preset)`` gives the paper's 1x schedule for the full-size presets
(batch 16, LR 0.02, 90k iterations, LR x0.1 at 60k and 80k, linear warmup, 800/1333 images) and
a CPU-sized schedule for the ``*_small`` presets, the default of ``python -m sfpn.train``.
Overrides go through :func:`sfpn.config.set_key`, as the detector config's do; :func:`validate`
checks the result.
"""
from __future__ import annotations

import dataclasses

from ..config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges, config_keys


@dataclasses.dataclass
class SolverConfig:
    #: Images per iteration over all processes (each process gets batch_size / world_size).
    batch_size: int = 16
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iters: int = 90_000
    #: Where the LR is multiplied by ``gamma``, as fractions of ``max_iters`` (so ``--iters``
    #: scales the schedule): 1x = 60k and 80k of 90k.
    steps: tuple[float, ...] = (2 / 3, 8 / 9)
    gamma: float = 0.1
    warmup_iters: int = 1000
    #: The LR starts at warmup_factor * lr and rises linearly over warmup_iters.
    warmup_factor: float = 0.001
    #: Clip the gradients' global L2 norm to this; 0 disables clipping.
    clip_grad_norm: float = 0.0
    #: Mixed precision on CUDA: "auto" (bf16 where supported, else fp16), "bf16", "fp16" or
    #: "off". The CPU always trains in fp32.
    amp: str = "auto"


@dataclasses.dataclass
class DataConfig:
    #: Shorter side when training; several values = multi-scale training (one drawn per image).
    min_size: tuple[int, ...] = (800,)
    max_size: int = 1333
    test_min_size: int = 800
    flip_prob: float = 0.5
    #: Semantic labels for SFPN: "masks", "boxes", "png" (label PNGs in semantic_dir) or "none".
    semantic: str = "masks"
    semantic_dir: str = ""
    #: Add COCO-stuff's 91 stuff categories to the annotation file's (COCO's instances files list
    #: things only) so that COCO-stuff's label PNGs train things and stuff.
    coco_stuff: bool = False
    num_workers: int = 4


@dataclasses.dataclass
class TrainConfig:
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    #: Evaluate on the val split every this many iterations (0: only at the end).
    eval_every: int = 0
    checkpoint_every: int = 5000
    #: Periodic checkpoints kept on disk (the final one is always kept); 0 keeps all.
    keep_checkpoints: int = 3
    log_every: int = 20
    seed: int = 0
    #: Images per process and batch when evaluating.
    eval_batch_size: int = 1
    #: DDP's find_unused_parameters, for detectors whose forward skips some parameters.
    find_unused_parameters: bool = False
    #: The divergence guard stops the run when the total loss is non-finite or more than
    #: ``divergence_factor`` times the median loss of its first ``divergence_window`` iterations
    #: (a window of 0 disables the ratio test; non-finite losses always stop the run).
    divergence_factor: float = 100.0
    divergence_window: int = 20


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


#: The range of every numeric field, checked by :func:`validate` before any work starts (a tuple
#: field's range holds for each of its items).
RANGES: dict[str, Range] = {
    "solver.batch_size": AT_LEAST_ONE,
    "solver.lr": POSITIVE,
    "solver.momentum": FRACTION,
    "solver.weight_decay": NON_NEGATIVE,
    "solver.max_iters": AT_LEAST_ONE,
    "solver.steps": Range(0, 1, low_open=True),
    "solver.gamma": POSITIVE,
    "solver.warmup_iters": NON_NEGATIVE,
    "solver.warmup_factor": Range(0, 1, low_open=True),
    "solver.clip_grad_norm": NON_NEGATIVE,
    "data.min_size": AT_LEAST_ONE,
    "data.max_size": AT_LEAST_ONE,
    "data.test_min_size": AT_LEAST_ONE,
    "data.flip_prob": FRACTION,
    "data.num_workers": NON_NEGATIVE,
    "eval_every": NON_NEGATIVE,
    "checkpoint_every": AT_LEAST_ONE,
    "keep_checkpoints": NON_NEGATIVE,
    "log_every": AT_LEAST_ONE,
    "seed": NON_NEGATIVE,
    "eval_batch_size": AT_LEAST_ONE,
    "divergence_factor": Range(1, low_open=True),
    "divergence_window": NON_NEGATIVE,
}
#: The allowed values of the string fields.
CHOICES = {
    "solver.amp": ("auto", "bf16", "fp16", "off"),
    "data.semantic": ("masks", "boxes", "png", "none"),
}


def validate(config: TrainConfig) -> None:
    """Checks every field's range and choices; a ``ValueError`` names the first bad key."""
    check_ranges(config, RANGES)
    keys = config_keys(config)
    if not config.data.min_size:
        raise ValueError("config key 'data.min_size' needs at least one size")
    for key, options in CHOICES.items():
        if keys[key] not in options:
            raise ValueError(f"config key {key!r} must be one of {options}, got {keys[key]!r}")
    if config.data.semantic == "png" and not config.data.semantic_dir:
        raise ValueError("config key 'data.semantic=png' needs data.semantic_dir, the folder of label PNGs")
