"""The aspect-ratio grouped batch sampler (sfpn/data/samplers.py): groups, resumes, shards."""
from sfpn.data import GroupedTrainBatchSampler


def test_grouped_sampler_groups_resumes_and_shards():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]

    def take(count, **kwargs):
        stream = iter(GroupedTrainBatchSampler(groups, 3, seed=5, **kwargs))
        return [next(stream) for _ in range(count)]

    batches = take(12)
    for batch in batches:
        assert len(batch) == 3 and len({groups[i] for i, _ in batch}) == 1
    assert take(7, start_batch=5) == batches[5:12]
    # Each sample's augmentation seed differs between epochs.
    assert len({seed for batch in batches for _, seed in batch}) > len(groups)
    # Two ranks split an epoch: together they see every index once.
    seen = []
    for rank in (0, 1):
        stream = iter(GroupedTrainBatchSampler([0] * 12, 2, seed=1, rank=rank, world_size=2))
        seen += [i for _ in range(3) for i, _ in next(stream)]
    assert sorted(seen) == list(range(12))
