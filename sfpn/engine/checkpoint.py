"""Checkpoints: written atomically, loaded with ``weights_only=True``, resumable exactly.

A checkpoint is a plain dict of tensors and JSON-like values (so ``torch.load(weights_only=True)``
can read it without running pickled code): ``model``, ``optimizer``, ``scheduler`` state dicts,
``iteration``, ``rng`` (every rank's torch/CUDA/numpy/Python RNG states) and ``meta`` (the preset,
the model overrides and config, the training config, the classes), from which ``sfpn.eval`` and
``sfpn.demo`` rebuild the model.

It is written to a temporary file in the same folder, fsynced and renamed over the target, so a
run killed at any moment leaves either the previous checkpoint or the new one, never half of one.
``last_checkpoint`` in the folder names the newest complete checkpoint (itself replaced
atomically).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import pickle
import random
import tempfile
import zipfile

import numpy as np
import torch

LAST_CHECKPOINT = "last_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def config_to_dict(config) -> dict:
    """A dataclass config as plain JSON values (tuples become lists, anything else its str)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def capture_rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str, state: dict) -> None:
    """Writes ``state`` to ``path`` atomically and points ``last_checkpoint`` at it."""
    _atomic_write(path, lambda f: torch.save(state, f))
    _atomic_write(
        os.path.join(os.path.dirname(os.path.abspath(path)), LAST_CHECKPOINT),
        lambda f: f.write(os.path.basename(path).encode() + b"\n"),
    )


def prune_checkpoints(folder: str, keep: int, pattern: str = "model_[0-9]*.pth") -> None:
    """Deletes all but the newest ``keep`` periodic checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    for path in sorted(glob.glob(os.path.join(folder, pattern)))[:-keep]:
        os.unlink(path)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a folder whose ``last_checkpoint`` names one."""
    if os.path.isdir(path):
        pointer = os.path.join(path, LAST_CHECKPOINT)
        if not os.path.isfile(pointer):
            raise FileNotFoundError(f"no checkpoint to resume in {path} (no {LAST_CHECKPOINT} file)")
        with open(pointer) as f:
            path = os.path.join(path, f.read().strip())
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Reads a checkpoint safely (``weights_only=True``); a clear error for a broken file."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable sfpn checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise CheckpointError(f"{path}: not an sfpn checkpoint (expected a dict with 'model' and 'meta')")
    state["path"] = path
    return state


def check_model_config(state: dict, model_config: dict) -> None:
    """Raises ``CheckpointError`` when the checkpoint was made for a different model config."""
    saved = state["meta"].get("model_config")
    if saved == model_config:
        return
    saved_flat, model_flat = _flatten(saved or {}), _flatten(model_config)
    differences = [
        f"{key}: checkpoint {saved_flat.get(key, '<absent>')!r} vs model {model_flat.get(key, '<absent>')!r}"
        for key in sorted(set(saved_flat) | set(model_flat))
        if saved_flat.get(key, "<absent>") != model_flat.get(key, "<absent>")
    ]
    raise CheckpointError(
        f"{state['path']} was saved from another model config "
        f"(preset {state['meta'].get('preset')!r}); differences: " + "; ".join(differences[:10])
    )


def _flatten(config: dict, prefix: str = "") -> dict:
    """Nested config dicts as dotted keys, so a difference names the exact field."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def model_from_checkpoint(path: str, device="cpu"):
    """Rebuilds the detector a checkpoint was trained as (from its stored config) and loads its
    weights. Returns (model in eval mode, the checkpoint's ``meta``)."""
    from ..config import DetectorConfig, build_from_config

    state = load_checkpoint(path, map_location=device)
    meta = state["meta"]
    if "model_config" not in meta:
        raise CheckpointError(f"{state['path']}: its meta lacks the model config")
    try:
        config = DetectorConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{state['path']}: its model config does not fit this sfpn version ({error})") from None
    model = build_from_config(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta
