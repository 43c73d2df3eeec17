"""Samplers: an endless, resumable, aspect-ratio-grouped training stream, and eval sharding."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler


class _Sized:
    """What DistributedSampler needs of a dataset: its length."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


class GroupedTrainBatchSampler(Sampler):
    """An endless stream of training batches for one rank.

    Each epoch is a DistributedSampler permutation (seeded by ``seed`` and the epoch, sharded by
    rank); its indices are grouped by aspect ratio (``group_ids``) so a batch holds only
    landscape or only portrait images, which keeps the padding small. A group's leftovers carry
    over into the next epoch. Items are ``(index, sample_seed)``: the seed fixes that sample's
    random augmentation, different in every epoch.

    The stream is a pure function of (seed, rank, world size), so ``start_batch`` resumes it
    exactly where a checkpoint left it.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(group_ids) == 0:
            raise ValueError("the dataset is empty: there is nothing to train on")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch
        self.epoch_sampler = DistributedSampler(
            _Sized(len(group_ids)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )

    def _sample_seed(self, epoch: int, index: int) -> int:
        return (self.seed * 1_000_003 + epoch) * len(self.group_ids) + index

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buffers: dict[int, list[tuple[int, int]]] = {}
        produced = 0
        epoch = 0
        while True:
            self.epoch_sampler.set_epoch(epoch)
            for index in self.epoch_sampler:
                buffer = buffers.setdefault(self.group_ids[index], [])
                buffer.append((index, self._sample_seed(epoch, index)))
                if len(buffer) == self.batch_size:
                    batch = buffer[:]
                    buffer.clear()
                    if produced >= self.start_batch:
                        yield batch
                    produced += 1
            epoch += 1


def shard_indices(length: int, rank: int, world_size: int) -> list[int]:
    """This rank's share of ``range(length)`` for evaluation: every index exactly once overall."""
    return list(range(rank, length, world_size))


class ListBatchSampler(Sampler):
    """Fixed batches over a list of indices, in order (evaluation)."""

    def __init__(self, indices: Sequence[int], batch_size: int):
        self.indices = list(indices)
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start : start + self.batch_size]

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size


def loader_generator() -> torch.Generator:
    """A private generator for DataLoaders: creating an iterator then never draws from (and so
    never shifts) the global torch RNG, which the model's sampling uses."""
    return torch.Generator().manual_seed(0)
