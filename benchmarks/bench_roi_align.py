"""RoIAlign forward+backward against torchvision, at the COCO shapes of docs/design.md "Performance targets".

    python -m pytest benchmarks/bench_roi_align.py --benchmark-only [--benchmark-json out.json]

Shapes: batch 2 at 800x1344, P2-P5 = 200x336 ... 25x42, 256 channels, sampling ratio 2 (as
torchvision's Faster/Mask R-CNN). Training: 512 boxes per image, 7x7 (box head) and 14x14 (mask
head), forward+backward. Inference: 1000 boxes per image, 7x7, forward only. Single-level cases
pool every box from P2 (scale 1/4); multi-level cases compare MultiLevelRoIAlign with
torchvision's MultiScaleRoIAlign; on the CPU, the multi-level training and inference cases run
again in the detector's CPU layout (channels_last, fp32 and bf16). CPU rounds are few because
torchvision takes seconds.
"""
import pytest
import torch

from sfpn.ops import MultiLevelRoIAlign, roi_align

tv_ops = pytest.importorskip("torchvision.ops")

IMAGE = (800, 1344)
LEVELS = {"p2": (200, 336), "p3": (100, 168), "p4": (50, 84), "p5": (25, 42)}
CHANNELS = 256
SAMPLING_RATIO = 2
CASES = {  # name: (boxes per image, output size, with backward)
    "train-7x7": (512, 7, True),
    "train-14x14": (512, 14, True),
    "infer-7x7": (1000, 7, False),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def proposals(count, generator):
    """Boxes of log-uniform size (16 to 800 px) and aspect ratio, clipped to the image."""
    height, width = IMAGE
    centre = torch.rand(count, 2, generator=generator) * torch.tensor([width, height])
    size = torch.exp(torch.empty(count, 1).uniform_(2.77, 6.68, generator=generator))
    aspect = torch.exp(torch.empty(count, 1).uniform_(-1.0, 1.0, generator=generator))
    half = torch.cat([size * aspect, size / aspect], 1) / 2
    boxes = torch.cat([centre - half, centre + half], 1)
    return torch.stack(
        [boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height), boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)],
        1,
    )


def make_inputs(device, boxes_per_image, with_backward):
    generator = torch.Generator().manual_seed(0)
    features = {
        name: torch.randn(2, CHANNELS, h, w, generator=generator).to(device).requires_grad_(with_backward)
        for name, (h, w) in LEVELS.items()
    }
    boxes = [proposals(boxes_per_image, generator).to(device) for _ in range(2)]
    return features, boxes


def case_inputs(benchmark, group, device, case):
    """Names the benchmark group of ``case`` on ``device`` and makes its inputs: the feature maps
    by level name, the boxes per image, the output size and whether the case runs backward."""
    boxes_per_image, size, with_backward = CASES[case]
    benchmark.group = f"{group} {case} {device}"
    features, boxes = make_inputs(device, boxes_per_image, with_backward)
    return features, boxes, size, with_backward


def run_case(benchmark, device, forward, with_backward, inputs):
    """Times ``forward()``, with the gradient w.r.t. ``inputs`` of a random output gradient if
    ``with_backward``."""
    out = forward()  # the output's shape; also a first call, untimed
    grad = torch.randn(out.shape, device=device) if with_backward else None

    def step():
        if with_backward:
            out = forward()
            torch.autograd.grad(out, inputs, grad)
        else:
            with torch.no_grad():
                forward()
        if device == "cuda":
            torch.cuda.synchronize()

    rounds = 3 if device == "cpu" else 50
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["sfpn", "torchvision"])
def test_roi_align_p2(benchmark, device, case, impl):
    features, boxes, size, with_backward = case_inputs(benchmark, "roi_align P2", device, case)
    x = features["p2"]
    fn = roi_align if impl == "sfpn" else tv_ops.roi_align

    def forward():
        return fn(x, boxes, size, 0.25, SAMPLING_RATIO)

    run_case(benchmark, device, forward, with_backward, [x])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["sfpn", "torchvision"])
def test_multilevel(benchmark, device, case, impl):
    features, boxes, size, with_backward = case_inputs(benchmark, "multilevel", device, case)
    names = list(LEVELS)
    pooler = (MultiLevelRoIAlign if impl == "sfpn" else tv_ops.MultiScaleRoIAlign)(names, size, SAMPLING_RATIO)

    def forward():
        return pooler(features, boxes, [IMAGE, IMAGE])

    run_case(benchmark, device, forward, with_backward, list(features.values()))


@pytest.mark.parametrize("case", ["train-7x7", "infer-7x7"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["sfpn", "torchvision"])
def test_multilevel_cpu_channels_last(benchmark, impl, dtype, case):
    """The box head's cases as the detector runs them on a CPU: channels_last maps, and under
    ``solver.amp=bf16`` bf16 ones in autocast (which pools torchvision's in fp32)."""
    features, boxes, size, with_backward = case_inputs(benchmark, f"multilevel channels_last {dtype}", "cpu", case)
    features = {
        name: f.detach().to(getattr(torch, dtype)).contiguous(memory_format=torch.channels_last)
        .requires_grad_(with_backward)
        for name, f in features.items()
    }
    names = list(LEVELS)
    pooler = (MultiLevelRoIAlign if impl == "sfpn" else tv_ops.MultiScaleRoIAlign)(names, size, SAMPLING_RATIO)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            return pooler(features, boxes, [IMAGE, IMAGE])

    run_case(benchmark, "cpu", forward, with_backward, list(features.values()))


@pytest.mark.parametrize("deterministic", [False, True])
def test_multilevel_backward_cuda(benchmark, deterministic):
    """The deterministic (sort-by-pixel) backward against the atomic one (goal: within 1.3x)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    benchmark.group = "multilevel backward train-7x7 cuda"
    features, boxes = make_inputs("cuda", 512, True)
    levels = list(features.values())
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device="cuda"), b], 1) for i, b in enumerate(boxes)])
    scales = [0.25, 0.125, 0.0625, 0.03125]
    grad = torch.randn(len(rois), CHANNELS, 7, 7, device="cuda")
    heights = [h for h, _ in LEVELS.values()]
    widths = [w for _, w in LEVELS.values()]

    def step():
        torch.ops.sfpn.multilevel_roi_align_backward(
            grad, rois, scales, 2, CHANNELS, heights, widths, SAMPLING_RATIO, False, 224.0, 4, deterministic
        )
        torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=50, iterations=1, warmup_rounds=2)
