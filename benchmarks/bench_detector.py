"""Training-step cost of the detectors: SFPN against its FPN twin (the semantic branch's price).

    python -m pytest benchmarks/bench_detector.py --benchmark-only

One step = forward + backward of the training losses (no optimizer step). Groups:
``step-coco``: the R50 presets at the COCO training shape (batch 2 at 800x1344, 80 classes; on a
2-core CPU one single-threaded step takes about half a minute, hence two timed rounds after one
warm-up);
``step-small``: the CPU presets at 2 x 320 x 320 (the size the synthetic default trains at).

On a machine shared with other jobs, run with ``OMP_NUM_THREADS=1``: oversubscribed OpenMP workers
spin and make a step up to ~30x slower (measured here: 0.6 s vs 18 s for the small SFPN step).
"""
import pytest
import torch

import sfpn


def _batch(height: int, width: int, num_classes: int, boxes_per_image: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(2):
        xy = torch.rand(boxes_per_image, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
        wh = 16 + torch.rand(boxes_per_image, 2, generator=generator) * torch.tensor([width, height]) * 0.2
        boxes = torch.cat((xy, xy + wh), dim=1)
        masks = torch.zeros(boxes_per_image, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            mask[y1:y2, x1:x2] = 1
        images.append(torch.rand(3, height, width, generator=generator))
        targets.append({
            "boxes": boxes,
            "masks": masks,
            "labels": torch.randint(1, num_classes + 1, (boxes_per_image,), generator=generator),
            "semantic": torch.randint(0, num_classes + 1, (height, width), generator=generator),
        })
    return images, targets


def _train_step(model, images, targets):
    losses = model(images, targets)
    sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)


@pytest.mark.benchmark(group="step-coco")
@pytest.mark.parametrize("name", [
    "faster_rcnn_r50_fpn_1x", "faster_rcnn_r50_sfpn_1x", "mask_rcnn_r50_sfpn_1x", "cascade_rcnn_r50_sfpn_1x",
])
def test_step_coco_shape(benchmark, name):
    torch.manual_seed(0)
    model = sfpn.build_detector(name, 80).train()
    images, targets = _batch(800, 1344, 80, 20)
    benchmark.pedantic(_train_step, args=(model, images, targets), rounds=2, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="step-small")
@pytest.mark.parametrize("name", ["faster_rcnn_r18_fpn_small", "faster_rcnn_r18_sfpn_small"])
def test_step_small(benchmark, name):
    torch.manual_seed(0)
    model = sfpn.build_detector(name, 4).train()
    images, targets = _batch(320, 320, 4, 4)
    benchmark.pedantic(_train_step, args=(model, images, targets), rounds=7, iterations=1, warmup_rounds=2)
