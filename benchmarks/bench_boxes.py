"""The detector's box matching and input batch: sfpn's ops against torchvision and the references.

    python -m pytest benchmarks/bench_boxes.py --benchmark-only [-k cpu|cuda]

``box_iou_max``: the IoU reductions an anchor matcher reads (each anchor's best IoU and ground-truth
box, and the anchors tied for a box's best), against the reference (``box_iou`` and its
reductions, what sfpn ran before) and torchvision's ``box_iou`` with the same reductions, as its
``Matcher`` makes them. Shapes: the default run's RPN (5 boxes against the 20,460 anchors of a
256x320 image), the COCO shape's (7 boxes against ~270,000 anchors) and a RoI head's (20 boxes
against 2,000 proposals).

``normalize_images``: a batch of normalised, zero-padded images, against the reference and
torchvision's ``GeneralizedRCNNTransform`` (its ``normalize`` per image, then ``batch_images``),
float32 NCHW (like for like with torchvision); and the bf16 channels_last batch that sfpn's
detectors read under bf16 autocast on the CPU (ours against the reference). Shapes: the default
run's four 256x320 images and two COCO-size images (800x1333 and 800x1201 in a 800x1344 batch).
CUDA runs the reference's code for sfpn's ops; its timings synchronise inside the timed call.
"""
import pytest
import torch

from sfpn.ops import box_iou_max, normalize_images
from sfpn.ops.box_iou_max import box_iou_max_reference
from sfpn.ops.normalize_images import normalize_images_reference

tv = pytest.importorskip("torchvision")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MATCHING = {"default-rpn": (5, 20_460, 320.0), "coco-rpn": (7, 270_000, 1344.0), "roi-2000": (20, 2_000, 1344.0)}
BATCHES = {"default-4x256x320": [(256, 320)] * 4, "coco-2x800x1344": [(800, 1333), (800, 1201)]}
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def boxes(count: int, extent: float, generator: torch.Generator, device: str) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * extent
    return torch.cat([corner, corner + 8 + torch.rand(count, 2, generator=generator) * extent / 4], 1).to(device)


def torchvision_matching(ground_truth: torch.Tensor, anchors: torch.Tensor):
    """torchvision's IoU and the reductions its Matcher takes of it."""
    iou = tv.ops.box_iou(ground_truth, anchors)
    best, index = iou.max(dim=0)
    box_best = iou.max(dim=1).values
    return best, index, (iou == box_best[:, None]).any(dim=0)


MATCHERS = {"sfpn": box_iou_max, "reference": box_iou_max_reference, "torchvision": torchvision_matching}


def synchronised(run, device: str):
    def timed():
        result = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    return timed


@pytest.mark.parametrize("impl", list(MATCHERS))
@pytest.mark.parametrize("shape", list(MATCHING))
@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_max(benchmark, device, shape, impl):
    count, anchors, extent = MATCHING[shape]
    generator = torch.Generator().manual_seed(0)
    ground_truth, predictions = boxes(count, extent, generator, device), boxes(anchors, extent, generator, device)
    benchmark.group = f"box_iou_max {device} {shape}"
    best, _, _ = benchmark.pedantic(synchronised(lambda: MATCHERS[impl](ground_truth, predictions), device),
                                    rounds=20, iterations=1, warmup_rounds=2)
    assert best.shape == (anchors,)


def torchvision_batch(images, mean, std, size, dtype, channels_last):
    transform = tv.models.detection.transform.GeneralizedRCNNTransform(800, 1333, mean.tolist(), std.tolist())
    return transform.batch_images([transform.normalize(image) for image in images], size_divisible=32)


BATCHERS = {"sfpn": normalize_images, "reference": normalize_images_reference, "torchvision": torchvision_batch}


@pytest.mark.parametrize("impl", list(BATCHERS))
@pytest.mark.parametrize("layout", ["fp32-nchw", "bf16-channels_last"])
@pytest.mark.parametrize("shape", list(BATCHES))
@pytest.mark.parametrize("device", DEVICES)
def test_normalize_images(benchmark, device, shape, layout, impl):
    if impl == "torchvision" and layout != "fp32-nchw":
        pytest.skip("torchvision batches float32 NCHW images only")
    sizes = BATCHES[shape]
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=generator).to(device) for h, w in sizes]
    size = [-(-max(s[i] for s in sizes) // 32) * 32 for i in (0, 1)]
    dtype, channels_last = (torch.float32, False) if layout == "fp32-nchw" else (torch.bfloat16, True)
    mean, std = MEAN.to(device), STD.to(device)
    benchmark.group = f"normalize_images {device} {shape} {layout}"
    batch = benchmark.pedantic(
        synchronised(lambda: BATCHERS[impl](images, mean, std, size, dtype, channels_last), device),
        rounds=20, iterations=1, warmup_rounds=2)
    assert tuple(batch.shape) == (len(sizes), 3, *size)
