"""Box pairs whose IoU sits at an NMS threshold and one float32 step either side of it: where the
decision depends on how the IoU is compared with the threshold (tests/ops/test_torchvision_parity.py,
the emulated kernels' test in tests/ops/test_nms.py).

Pair k is box A = [20k, 0, 20k + 10, s] and box B = [20k, 0, 20k + 10, h] inside it, A first by
score, for sides s = 10..17 and the float32 values h nearest to ``s * threshold``. The IoU is
``10 h / (10 s)`` up to the roundings of float arithmetic; with s = 10 and h = 10 * threshold (a
float32 number for :data:`THRESHOLDS`) it is exactly ``float32(threshold)``, and the other pairs
land on the float32 values either side too (a test checks that they do). The pairs lie apart, so
one NMS call decides all of them.
"""
import torch

#: float32(t) lies above t for 0.1, 0.3 and 0.6, below it for 0.45, 0.7 and 0.9; 0.5 is exact.
THRESHOLDS = (0.1, 0.3, 0.45, 0.5, 0.6, 0.7, 0.9)
SIDES = range(10, 18)


def threshold_pairs(threshold: float, steps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(boxes (2K, 4), scores (2K,))`` float32, ``2 * steps + 1`` pairs per side: A_k =
    boxes[2k] scores higher than B_k = boxes[2k + 1] (scores fall with the index)."""
    sides, heights = [], []
    for side in SIDES:
        center = torch.tensor(side * threshold, dtype=torch.float32)
        # Consecutive float32 values: the bit patterns of positive floats count up with the value.
        offsets = torch.arange(-steps, steps + 1, dtype=torch.int32)
        heights.append((center.view(torch.int32) + offsets).view(torch.float32))
        sides.append(torch.full((offsets.shape[0],), float(side)))
    side, height = torch.cat(sides), torch.cat(heights)
    left = 20.0 * torch.arange(side.shape[0], dtype=torch.float32)
    zeros = torch.zeros_like(left)
    a = torch.stack([left, zeros, left + 10, side], 1)
    b = torch.stack([left, zeros, left + 10, height], 1)
    boxes = torch.stack([a, b], 1).reshape(-1, 4)
    scores = torch.linspace(1.0, 0.5, boxes.shape[0], dtype=torch.float32)
    return boxes, scores


def pair_iou(boxes: torch.Tensor) -> torch.Tensor:
    """The IoU of each pair ``(boxes[2k], boxes[2k + 1])``, ``(K,)``, computed as torchvision's CPU
    NMS does in the boxes' dtype (float32 for float16 and bfloat16 boxes)."""
    compute = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    a, b = boxes[0::2].to(compute), boxes[1::2].to(compute)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = width * height
    return inter / (area_a + area_b - inter)


def expected_keep(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """What NMS keeps of :func:`threshold_pairs` boxes by torchvision's rule, in score order: every
    A, and each B unless its IoU with its A, as a float64, is above the (float64) threshold."""
    suppressed = pair_iou(boxes).double() > threshold
    keep = torch.ones(boxes.shape[0], dtype=torch.bool)
    keep[1::2] = ~suppressed
    return torch.nonzero(keep).flatten()


def float32_neighbours(threshold: float) -> tuple[float, float, float]:
    """float32(threshold) and the float32 values either side of it."""
    value = torch.tensor(threshold, dtype=torch.float32)
    below = torch.nextafter(value, torch.tensor(-1.0))
    above = torch.nextafter(value, torch.tensor(2.0))
    return below.item(), value.item(), above.item()
