"""batched_nms: sfpn vs torchvision (and the pure-PyTorch reference where it is quick enough).

    python -m pytest benchmarks/bench_nms.py --benchmark-only [-k cpu|cuda]

Shapes: detection post-processing over 80 classes (5k, 20k, 100k boxes on an 800 x 1333 image,
IoU 0.5) and the RPN (2000 proposals on each of 5 pyramid levels, idxs = level, IoU 0.7).
Each group holds one shape and device, so the ratio is read off one table. CUDA timings
synchronise inside the timed call (the end-to-end latency a caller sees).
"""
import pytest
import torch

from sfpn.ops import batched_nms, batched_nms_padded
from sfpn.ops.nms import batched_nms_reference

tv = pytest.importorskip("torchvision")

SHAPES = {
    "5k-80cls": (5_000, 80),
    "20k-80cls": (20_000, 80),
    "100k-80cls": (100_000, 80),
    "rpn-5x2000": (10_000, 5),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def detections(shape: str, device: str):
    n, num_classes = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    if shape.startswith("rpn"):
        # Anchor-like proposals: level l boxes about 32 * 2**l wide, heavily overlapping.
        idxs = torch.arange(num_classes).repeat_interleave(n // num_classes)
        size = 32 * 2.0 ** idxs[:, None] * (0.5 + torch.rand(n, 2, generator=g))
        threshold = 0.7
    else:
        idxs = torch.randint(0, num_classes, (n,), generator=g)
        size = 8 + 300 * torch.rand(n, 2, generator=g) ** 2
        threshold = 0.5
    centre = torch.rand(n, 2, generator=g) * torch.tensor([1333.0, 800.0])
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    scores = torch.rand(n, generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device), threshold


def padded(boxes, scores, idxs, threshold):
    """The sync-free variant, room for every box (CUDA: no host sync in the op)."""
    return batched_nms_padded(boxes, scores, idxs, threshold, boxes.shape[0])[0]


IMPLEMENTATIONS = {
    "sfpn": batched_nms,
    "sfpn-padded": padded,
    "torchvision": tv.ops.batched_nms,
    "reference": batched_nms_reference,
}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms(benchmark, device, shape, impl):
    if impl == "reference" and (device == "cpu" and SHAPES[shape][0] > 20_000):
        pytest.skip("the reference takes seconds here")
    if impl == "sfpn-padded" and device == "cpu":
        pytest.skip("the same CPU kernel as sfpn")
    boxes, scores, idxs, threshold = detections(shape, device)
    op = IMPLEMENTATIONS[impl]

    def run():
        kept = op(boxes, scores, idxs, threshold)
        if device == "cuda":
            torch.cuda.synchronize()
        return kept

    benchmark.group = f"batched_nms {device} {shape}"
    rounds = 3 if (device == "cpu" and SHAPES[shape][0] >= 100_000) else 10
    kept = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    assert kept.numel() > 0
