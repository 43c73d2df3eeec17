"""The default run's work as closures for the CPU benchmarks: ``python -m sfpn.train``'s default
detector (faster_rcnn_r18_sfpn_small, here with 4 classes, where the default run's set has 6 thing
and 4 stuff classes) on a batch of 4 random images at 256x320 (the synthetic default's size; ``size``
changes it) with 5 boxes each, laid out and computed as ``solver.amp`` gives.

Both closures seed torch before building, so the model and the batch are the same for every
``amp``: two closures with different precisions time the same work. ``channels_last=False`` keeps
the model and images NCHW (the layout fp32 had before sfpn chose channels_last on every CPU).
"""
import dataclasses

import torch

import sfpn
from sfpn._threads import SharedCoreThreads
from sfpn.engine.optimizer import FusedSGD
from sfpn.engine.precision import choose_precision, prepare_model
from sfpn.modeling import InferenceWeightCache

IMAGES, HEIGHT, WIDTH, CLASSES, BOXES = 4, 256, 320, 4, 5
#: The batch's boxes are 16 to this many pixels on a side, so an image is at least this large.
MAX_BOX = 64


def _model_and_batch(amp: str, channels_last: bool | None = None, size: tuple[int, int] = (HEIGHT, WIDTH)):
    """``(model, precision, images, targets)``: the default preset prepared for ``amp`` on the CPU,
    in the layout ``channels_last`` asks for (None: the one ``amp`` gives), with images of
    ``size`` ``(H, W)``, each at least :data:`MAX_BOX`."""
    height, width = size
    torch.manual_seed(0)
    precision = choose_precision(amp, "cpu")
    if channels_last is not None:
        precision = dataclasses.replace(precision, channels_last=channels_last)
    model = prepare_model(sfpn.build_detector("faster_rcnn_r18_sfpn_small", CLASSES), precision)
    images, targets = [], []
    for _ in range(IMAGES):
        corner = torch.rand(BOXES, 2) * torch.tensor([width - MAX_BOX, height - MAX_BOX], dtype=torch.float)
        images.append(torch.rand(3, height, width))
        targets.append({
            "boxes": torch.cat([corner, corner + 16 + (MAX_BOX - 16) * torch.rand(BOXES, 2)], 1),
            "labels": torch.randint(1, CLASSES + 1, (BOXES,)),
            "semantic": torch.randint(0, CLASSES + 1, (height, width)),
        })
    return model, precision, images, targets


def training_step(shared_cores: SharedCoreThreads | None = None, amp: str = "auto", channels_last: bool | None = None,
                  size: tuple[int, int] = (HEIGHT, WIDTH)):
    """A training step (forward, backward, SGD) as a closure over a fresh model, optimizer and
    batch; it ticks ``shared_cores`` (from :func:`~sfpn._threads.fitted_cpu_threads`), when given,
    after every step, as the trainer does by default. The closure returns the loss."""
    model, precision, images, targets = _model_and_batch(amp, channels_last, size)
    model.train()
    optimizer = FusedSGD(model.parameters(), lr=0.001, momentum=0.9)  # as the trainer's

    def step() -> float:
        with precision.autocast("cpu"):
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        if shared_cores is not None:
            shared_cores.tick()
        return loss.item()

    return step


def inference(amp: str = "auto", channels_last: bool | None = None, size: tuple[int, int] = (HEIGHT, WIDTH)):
    """Inference on the batch (eval mode, no gradients) as a closure; it returns the detections."""
    model, precision, images, _ = _model_and_batch(amp, channels_last, size)
    model.eval()
    cache = InferenceWeightCache()  # shared by the calls, as the evaluation loop shares one

    def infer() -> list[dict]:
        with torch.no_grad(), precision.autocast("cpu"), cache:
            return model(images)

    return infer
