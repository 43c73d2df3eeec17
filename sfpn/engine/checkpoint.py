"""Checkpoints: written atomically, loaded with ``weights_only=True``, resumable exactly.

A checkpoint is a plain dict of tensors and JSON-like values (so ``torch.load(weights_only=True)``
can read it without running pickled code): ``model``, ``optimizer``, ``scheduler`` state dicts,
``iteration``, ``rng`` (every rank's torch/CUDA/numpy/Python RNG states) and ``meta`` (the preset,
the model overrides and config, the training config, the classes), from which ``sfpn.eval`` and
``sfpn.demo`` rebuild the model.

It is written to a temporary file in the same folder, fsynced and renamed over the target, so a
run killed at any moment leaves either the previous checkpoint or the new one, never half of one;
the temporary file such a kill leaves behind is deleted by the next save into that folder.
``last_checkpoint`` in the folder names the newest complete checkpoint (itself replaced
atomically).

Integrity: the file is the ``torch.save`` payload followed by a footer, ``FOOTER_MAGIC``, the
payload's length (8 bytes, little-endian) and its SHA-256. Loading verifies both before
unpickling anything, so an empty, truncated, extended or bit-flipped file, or a file that is not
a checkpoint at all, is refused with a :class:`CheckpointError` naming the file and the reason.
The footer is invisible to ``torch.load``, which still reads the file directly.
Checkpoints written before the footer existed (a bare PyTorch zip) are still accepted, with a
``UnverifiedCheckpointWarning``: refusing them would strand every run started on an older sfpn,
and their structure is still checked; corruption inside them cannot be detected.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pickle
import random
import tempfile
import warnings
import zipfile

import numpy as np
import torch

LAST_CHECKPOINT = "last_checkpoint"
#: Starts the footer that follows the payload: magic, payload length, SHA-256 of the payload.
FOOTER_MAGIC = b"sfpn-sha256-v1\n\0"
FOOTER_SIZE = len(FOOTER_MAGIC) + 8 + 32
#: Every ``torch.save`` file (a zip archive) starts with these bytes...
ZIP_SIGNATURE = b"PK\x03\x04"
#: ...and ends with its end-of-central-directory record: this signature and 18 more bytes.
ZIP_END_SIGNATURE = b"PK\x05\x06"
ZIP_END_SIZE = 22
_READ_CHUNK = 1 << 24


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without a checksum (written by an older sfpn) was loaded unverified."""


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


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through it."""

    def __init__(self, file):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.length = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.length += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _write_with_footer(state: dict, file) -> None:
    writer = _HashingWriter(file)
    torch.save(state, writer)
    file.write(FOOTER_MAGIC + writer.length.to_bytes(8, "little") + writer.sha256.digest())


def remove_stale_temporaries(folder: str) -> list[str]:
    """Deletes the temporary files that a write killed mid-way (``_atomic_write``) left in
    ``folder``; returns their paths. Only one process writes checkpoints into a folder."""
    stale = glob.glob(os.path.join(folder, ".*.pth.*.tmp")) + glob.glob(os.path.join(folder, f".{LAST_CHECKPOINT}.*.tmp"))
    for path in stale:
        os.unlink(path)
    return stale


def save_checkpoint(path: str, state: dict) -> None:
    """Writes ``state`` with its checksum to ``path`` atomically and points ``last_checkpoint``
    at it; first deletes temporary files left in the folder by an interrupted earlier write."""
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
    _atomic_write(path, lambda f: _write_with_footer(state, f))
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


def verify_checkpoint(path: str) -> bool:
    """Checks ``path``'s footer and checksum without unpickling anything.

    Returns True for a verified checkpoint, False for a complete PyTorch zip without a footer
    (an older sfpn's checkpoint). Raises ``CheckpointError`` for an empty or non-PyTorch file, a
    file cut or extended past its footer, or a checksum mismatch.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not an sfpn checkpoint")
    with open(path, "rb") as f:
        signature = f.read(len(ZIP_SIGNATURE))
        if signature != ZIP_SIGNATURE:
            raise CheckpointError(f"{path}: not an sfpn checkpoint (not a PyTorch file: it starts with {signature!r})")
        f.seek(max(size - FOOTER_SIZE, 0))
        footer = f.read(FOOTER_SIZE)
        if not footer.startswith(FOOTER_MAGIC):
            if footer[-ZIP_END_SIZE:].startswith(ZIP_END_SIGNATURE):
                return False
            raise CheckpointError(
                f"{path}: not a readable sfpn checkpoint: truncated or corrupt (it ends in neither a "
                "checksum footer nor the end of a PyTorch zip)"
            )
        length = int.from_bytes(footer[len(FOOTER_MAGIC) : len(FOOTER_MAGIC) + 8], "little")
        if length != size - FOOTER_SIZE:
            raise CheckpointError(
                f"{path}: not a readable sfpn checkpoint: corrupt (its footer records {length} bytes "
                f"of payload, the file holds {size - FOOTER_SIZE})"
            )
        sha256 = hashlib.sha256()
        f.seek(0)
        for remaining in range(length, 0, -_READ_CHUNK):
            sha256.update(f.read(min(remaining, _READ_CHUNK)))
    if sha256.digest() != footer[-32:]:
        raise CheckpointError(
            f"{path}: not a readable sfpn checkpoint: corrupt (the SHA-256 of its payload, "
            f"{sha256.hexdigest()[:16]}..., differs from the {footer[-32:].hex()[:16]}... it was written with)"
        )
    return True


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Reads a checkpoint safely: verified (:func:`verify_checkpoint`), then loaded with
    ``weights_only=True``; ``CheckpointError`` naming the file and the reason for a broken one."""
    path = resolve_checkpoint(path)
    verified = verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable sfpn checkpoint: truncated or corrupt ({reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not isinstance(state.get("meta"), dict):
        raise CheckpointError(f"{path}: not an sfpn checkpoint (expected a dict with 'model' and 'meta')")
    if not verified:
        warnings.warn(
            f"{path} has no checksum (written by an sfpn before checkpoints carried one): loaded unverified",
            UnverifiedCheckpointWarning,
            stacklevel=2,
        )
    state["path"] = path
    return state


def check_model_config(state: dict, model_config: dict) -> None:
    """Raises ``CheckpointError`` when the checkpoint was made for a different model config.

    A field added to the config since the checkpoint was written takes its default, which by
    rule reproduces the behaviour from before the field existed, so such a checkpoint resumes."""
    from ..config import DetectorConfig

    saved = state["meta"].get("model_config")
    try:
        saved = config_to_dict(DetectorConfig.from_dict(saved))
    except (TypeError, ValueError):
        pass  # not a config this version can read: the comparison below names the differences
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
    from ..config import DetectorConfig
    from ..modeling.build import build

    state = load_checkpoint(path, map_location=device)
    meta = state["meta"]
    if "model_config" not in meta:
        raise CheckpointError(f"{state['path']}: its meta lacks the model config")
    try:
        config = DetectorConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{state['path']}: its model config does not fit this sfpn version ({error})") from None
    model = build(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta
