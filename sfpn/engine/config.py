"""Training configuration: solver, data and loop settings, with presets and dotted overrides.

The detector's own config lives with the model (``sfpn.build_detector``); this one says how it
is trained. ``training_config(preset)`` gives the paper's 1x schedule for the full-size presets
(batch 16, LR 0.02, 90k iterations, LR x0.1 at 60k and 80k, linear warmup, 800/1333 images) and
a CPU-sized schedule for the ``*_small`` presets, the default of ``python -m sfpn.train``.
"""
from __future__ import annotations

import ast
import dataclasses


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


def training_config(preset: str) -> TrainConfig:
    """The training schedule that goes with a detector preset."""
    if not preset.endswith("_small"):
        return TrainConfig()
    # Sized for about ten minutes on two CPU cores with the synthetic shapes dataset.
    return TrainConfig(
        solver=SolverConfig(batch_size=4, lr=0.02, max_iters=1000, steps=(0.75, 0.92), warmup_iters=100, warmup_factor=0.01),
        data=DataConfig(min_size=(256,), max_size=320, test_min_size=256, flip_prob=0.5, num_workers=1),
        eval_every=0,
        checkpoint_every=250,
        keep_checkpoints=2,
        log_every=10,
    )


def parse_value(text: str):
    """``--set`` values: Python literals (numbers, booleans, tuples, quoted strings), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(current, value, key: str):
    if isinstance(current, tuple):
        items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if current and isinstance(current[0], float):
            items = tuple(float(v) for v in items)
        return items
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected True or False, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not type(current):
        raise ValueError(f"{key}: expected a {type(current).__name__}, got {value!r}")
    return value


def has_key(config, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or not any(f.name == part for f in dataclasses.fields(node)):
            return False
        node = getattr(node, part)
    return True


def set_key(config, key: str, value) -> None:
    """Sets a dotted ``key`` of a nested dataclass config, converting ``value`` to the field's type."""
    *parents, name = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part)
    setattr(node, name, _coerce(getattr(node, name), value, key))
