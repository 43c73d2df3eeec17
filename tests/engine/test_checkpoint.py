"""Checkpoint integrity: checksummed writes, refused broken files, stale
temporaries removed."""
import os
import warnings

import pytest
import torch

from sfpn.engine.checkpoint import (
    FOOTER_SIZE,
    CheckpointError,
    UnverifiedCheckpointWarning,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def checkpoint(tmp_path):
    """A saved checkpoint (path) with random weights, and the state it was saved from."""
    generator = torch.Generator().manual_seed(13)
    state = {
        "model": {"weight": torch.randn(64, 256, generator=generator), "bias": torch.randn(64, generator=generator)},
        "iteration": 7,
        "meta": {"preset": "faster_rcnn_r18_sfpn_small", "classes": ["a", "b"]},
    }
    path = tmp_path / "model_0000007.pth"
    save_checkpoint(str(path), state)
    return path, state


def test_round_trip_and_plain_torch_load(checkpoint):
    path, state = checkpoint
    loaded = load_checkpoint(str(path))
    for key in state["model"]:
        assert torch.equal(loaded["model"][key], state["model"][key])
    assert loaded["meta"] == state["meta"] and loaded["iteration"] == 7
    # The checksum footer does not stop plain torch.load from reading the file.
    plain = torch.load(path, weights_only=True)
    assert torch.equal(plain["model"]["weight"], state["model"]["weight"])
    assert open(path.parent / "last_checkpoint").read().strip() == path.name


def _refused(path, content: bytes, reason: str):
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"^{path}: .*{reason}"):
        load_checkpoint(str(path))


def test_empty_and_text_files_are_refused(tmp_path):
    # On main: IndexError and KeyError raised from inside the error handler.
    _refused(tmp_path / "empty.pth", b"", r"empty file \(0 bytes\)")
    _refused(tmp_path / "notes.pth", b"these are not weights\n", "not a PyTorch file")


def test_flipped_bytes_are_refused(checkpoint):
    # On main: 4 KB of flipped bytes loaded silently as corrupted weights.
    path, _ = checkpoint
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + 4096] = bytes(b ^ 0xFF for b in data[start : start + 4096])
    _refused(path, bytes(data), "corrupt .*SHA-256")


@pytest.mark.parametrize("cut", [1, FOOTER_SIZE // 2, FOOTER_SIZE + 1, 1000])
def test_truncated_files_are_refused(checkpoint, cut):
    path, _ = checkpoint
    _refused(path, path.read_bytes()[:-cut], "truncated or corrupt")


def test_extended_file_is_refused(checkpoint):
    path, _ = checkpoint
    _refused(path, path.read_bytes() + b"\0" * 16, "truncated or corrupt")


def test_corrupt_length_field_is_refused(checkpoint):
    path, _ = checkpoint
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01  # the payload length's low byte
    _refused(path, bytes(data), "footer records")


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3)}, path)
    with pytest.raises(CheckpointError, match=f"{path}: not an sfpn checkpoint"):
        load_checkpoint(str(path))


def test_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    """Checkpoints written before the footer existed stay usable, flagged as unverified."""
    path = tmp_path / "old.pth"
    weight = torch.randn(3, 4)
    torch.save({"model": {"weight": weight}, "meta": {"preset": "x"}}, path)
    with pytest.warns(UnverifiedCheckpointWarning, match=f"{path} has no checksum"):
        loaded = load_checkpoint(str(path))
    assert torch.equal(loaded["model"]["weight"], weight)


def test_verified_checkpoint_loads_without_warning(checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(str(checkpoint[0]))


def test_stale_temporaries_are_removed_by_the_next_save(checkpoint):
    # On main: the temporary file of a write killed mid-way stayed forever.
    path, state = checkpoint
    folder = path.parent
    stale = [folder / ".model_0000008.pth.k2j4h1.tmp", folder / ".last_checkpoint.a8sd7f.tmp"]
    for file in stale:
        file.write_bytes(b"half a checkpoint")
    unrelated = folder / "notes.tmp"
    unrelated.write_text("mine")
    save_checkpoint(str(folder / "model_0000009.pth"), state)
    assert not any(file.exists() for file in stale)
    assert unrelated.exists()
    assert sorted(os.listdir(folder)) == ["last_checkpoint", "model_0000007.pth", "model_0000009.pth", "notes.tmp"]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("refuses to be pickled")


def test_failed_write_keeps_the_previous_checkpoint(checkpoint):
    path, state = checkpoint
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="refuses to be pickled"):
        save_checkpoint(str(path), {**state, "meta": {"broken": _Unpicklable()}})
    assert path.read_bytes() == before
    assert [name for name in os.listdir(path.parent) if name.endswith(".tmp")] == []
