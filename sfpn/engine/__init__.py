"""Training, evaluation, checkpoints and distributed helpers."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import DataConfig, SolverConfig, TrainConfig, training_config
from .evaluation import coco_evaluate, evaluate, format_metrics
from .panoptic_quality import PanopticQuality
from .trainer import Trainer

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "DataConfig",
    "SolverConfig",
    "TrainConfig",
    "training_config",
    "coco_evaluate",
    "evaluate",
    "format_metrics",
    "PanopticQuality",
    "Trainer",
]
