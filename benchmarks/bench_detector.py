"""Training-step and inference cost of the detectors, in fp32 and in bf16: SFPN against its FPN
twin (the semantic branch's price) and against torchvision's Faster R-CNN.

    python -m pytest benchmarks/bench_detector.py --benchmark-only [-k cuda|cpu]

A training step = forward + backward of the training losses (no optimizer step); inference =
the eval-mode forward of the batch under ``torch.no_grad``. On CUDA each ends with a synchronize,
so the time is the wall time. Implementations (the ``impl`` id, ``<detector>[-bf16]``): ``sfpn``,
``fpn`` and ``torchvision`` in fp32 (``solver.amp=off``); with ``-bf16`` the same under bf16
autocast (``solver.amp=bf16``). Every row, torchvision's too, is laid out as
``sfpn.engine.precision`` lays it out: channels_last weights and images on the CPU. Each group
reads every row against ``sfpn`` in fp32 (table.py: peer time / ours), so a ``-bf16`` row's ratio
is its time over fp32 SFPN's: 0.5x is twice as fast. Groups:
``step-coco [device]`` and ``infer-coco [device]``: R50 detectors at the COCO shape (batch 2 at
800x1344, 80 classes, 20 boxes per image): ``sfpn`` (faster_rcnn_r50_sfpn_1x), ``sfpn-head128``
(the same with a semantic head 128 channels wide, DESIGN.md's option for cost), ``fpn``
(faster_rcnn_r50_fpn_1x, the same detector without the semantic branch), ``torchvision``
(fasterrcnn_resnet50_fpn's detector as torchvision fine-tunes it from ImageNet weights: frozen
BatchNorm, stem and layer1 frozen; random weights here; its resize set to leave 800x1344 as it
is), and for the training step the Mask and Cascade R-CNN SFPN presets. On a 2-core CPU one
single-threaded step takes about half a minute, hence two timed rounds after one warm-up there
(and --full only, see conftest.py).
``step-small [device]`` and ``infer-small [device]``: the CPU presets (faster_rcnn_r18_sfpn_small
as ``sfpn``, its FPN twin as ``fpn``) at 2 x 320 x 320, the size the synthetic default trains at.

On a machine shared with other jobs, run with ``OMP_NUM_THREADS=1``: oversubscribed OpenMP workers
spin and make a step up to ~30x slower (measured here: 0.6 s vs 18 s for the small SFPN step).
"""
import math

import pytest
import torch

import sfpn
from sfpn.engine.precision import choose_precision, prepare_model
from sfpn.modeling import InferenceWeightCache

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# impl -> preset (None: torchvision's), or (preset, overrides). The ratios are read against "sfpn".
COCO_DETECTORS = {
    "sfpn": "faster_rcnn_r50_sfpn_1x",
    "sfpn-head128": ("faster_rcnn_r50_sfpn_1x", {"neck.semantic_channels": 128}),
    "fpn": "faster_rcnn_r50_fpn_1x",
    "torchvision": None,
    "mask-sfpn": "mask_rcnn_r50_sfpn_1x",
    "cascade-sfpn": "cascade_rcnn_r50_sfpn_1x",
}
#: The COCO-shape rows that are also timed at inference (the Mask and Cascade presets train only).
INFERENCE_DETECTORS = ["sfpn", "sfpn-head128", "fpn", "torchvision"]
SMALL_DETECTORS = {"sfpn": "faster_rcnn_r18_sfpn_small", "fpn": "faster_rcnn_r18_fpn_small"}
#: The COCO-shape rows' batch: height, width (of both images) and classes.
COCO_SHAPE = (800, 1344, 80)
#: The implementations with a bf16 twin (``<impl>-bf16``).
BF16 = "-bf16"


def with_bf16(impls) -> list[str]:
    return [*impls, *(impl + BF16 for impl in impls)]


def _batch(height: int, width: int, num_classes: int, boxes_per_image: int, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(2):
        xy = torch.rand(boxes_per_image, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
        wh = 16 + torch.rand(boxes_per_image, 2, generator=generator) * torch.tensor([width, height]) * 0.2
        boxes = torch.cat((xy, xy + wh), dim=1)
        masks = torch.zeros(boxes_per_image, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            mask[y1:y2, x1:x2] = 1
        images.append(torch.rand(3, height, width, generator=generator).to(device))
        targets.append({
            "boxes": boxes.to(device),
            "masks": masks.to(device),
            "labels": torch.randint(1, num_classes + 1, (boxes_per_image,), generator=generator).to(device),
            "semantic": torch.randint(0, num_classes + 1, (height, width), generator=generator).to(device),
        })
    return images, targets


def _torchvision_faster_rcnn(num_classes: int, height: int, width: int):
    detection = pytest.importorskip("torchvision.models.detection")
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    # As fasterrcnn_resnet50_fpn builds it from ImageNet weights, and as our R50 presets are (frozen
    # BatchNorm, stem and layer1 frozen), with random weights; without weights torchvision would
    # train BatchNorm and every stage, a costlier step than ours.
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    # min_size/max_size equal to the batch's size: torchvision's transform then keeps 800x1344.
    return detection.FasterRCNN(backbone, num_classes=num_classes + 1, min_size=height, max_size=width)


def _prepared(model, impl: str, device: str):
    """``model`` on ``device`` and the precision ``impl`` asks for (``-bf16``: solver.amp=bf16)."""
    precision = choose_precision("bf16" if impl.endswith(BF16) else "off", device)
    return prepare_model(model.to(device), precision), precision


def training_step(model, precision, images, targets, device: str) -> float:
    """One timed training step (``model`` in train mode): forward, backward; returns the loss."""
    with precision.autocast(device):
        losses = model(images, targets)
    total = sum(losses.values())
    total.backward()
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return total.item()


def inference(model, precision, images, device: str, cache: InferenceWeightCache) -> list[dict]:
    """One timed inference (``model`` in eval mode); returns the detections. The calls of a row
    share ``cache``, as sfpn's evaluation loop shares one (torchvision's detectors never use it)."""
    with torch.no_grad(), precision.autocast(device), cache:
        detections = model(images)
    if device == "cuda":
        torch.cuda.synchronize()
    return detections


def check_loss(loss: float) -> None:
    assert math.isfinite(loss), f"the training loss is {loss}"


def check_detections(detections: list[dict], images) -> None:
    assert len(detections) == len(images)
    assert all(torch.isfinite(d["boxes"]).all() and torch.isfinite(d["scores"]).all() for d in detections)


def _time_steps(benchmark, model, precision, images, targets, device: str, rounds: int, warmup: int):
    loss = benchmark.pedantic(training_step, args=(model, precision, images, targets, device), rounds=rounds,
                              iterations=1, warmup_rounds=warmup)
    check_loss(loss)


def _time_inference(benchmark, model, precision, images, device: str, rounds: int, warmup: int):
    detections = benchmark.pedantic(inference, args=(model, precision, images, device, InferenceWeightCache()),
                                    rounds=rounds, iterations=1, warmup_rounds=warmup)
    check_detections(detections, images)


def coco_step_batch(impl: str, device: str):
    """The COCO-shape training batch ``(images, targets)``, targets cut to what ``impl`` trains on."""
    images, targets = _batch(*COCO_SHAPE, 20, device)
    if impl.startswith("torchvision"):
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]  # all it trains on
    return images, targets


def coco_inference_batch(device: str):
    """The COCO-shape images for inference."""
    return _batch(*COCO_SHAPE, 1, device)[0]


def coco_detector(impl: str, device: str):
    """``(model, precision)`` of a COCO-shape row."""
    height, width, num_classes = COCO_SHAPE
    preset = COCO_DETECTORS[impl.removesuffix(BF16)]
    if preset is None:
        return _prepared(_torchvision_faster_rcnn(num_classes, height, width), impl, device)
    preset, overrides = preset if isinstance(preset, tuple) else (preset, {})
    return _prepared(sfpn.build_detector(preset, num_classes, **overrides), impl, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", with_bf16(COCO_DETECTORS))
def test_step_coco_shape(benchmark, device, impl):
    benchmark.group = f"step-coco [{device}]"
    torch.manual_seed(0)
    images, targets = coco_step_batch(impl, device)
    model, precision = coco_detector(impl, device)
    rounds = {"rounds": 10, "warmup": 3} if device == "cuda" else {"rounds": 2, "warmup": 1}
    _time_steps(benchmark, model.train(), precision, images, targets, device, **rounds)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", with_bf16(INFERENCE_DETECTORS))
def test_inference_coco_shape(benchmark, device, impl):
    benchmark.group = f"infer-coco [{device}]"
    torch.manual_seed(0)
    images = coco_inference_batch(device)
    model, precision = coco_detector(impl, device)
    rounds = {"rounds": 10, "warmup": 3} if device == "cuda" else {"rounds": 2, "warmup": 1}
    _time_inference(benchmark, model.eval(), precision, images, device, **rounds)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", with_bf16(SMALL_DETECTORS))
@pytest.mark.parametrize("run", ["step", "infer"])
def test_small_presets(benchmark, device, impl, run):
    benchmark.group = f"{run}-small [{device}]"
    torch.manual_seed(0)
    model, precision = _prepared(sfpn.build_detector(SMALL_DETECTORS[impl.removesuffix(BF16)], 4), impl, device)
    images, targets = _batch(320, 320, 4, 4, device)
    if run == "step":
        _time_steps(benchmark, model.train(), precision, images, targets, device, rounds=7, warmup=2)
    else:
        _time_inference(benchmark, model.eval(), precision, images, device, rounds=7, warmup=2)
