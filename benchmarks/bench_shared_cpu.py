"""A training step of the default run, alone and beside one other such training process on the
same CPU cores (goal: at most 2.5x the time alone when two processes share two cores).

    pytest benchmarks/bench_shared_cpu.py --benchmark-only

The step: ``python -m sfpn.train``'s default detector (faster_rcnn_r18_sfpn_small, 4 classes),
a batch of 4 images at 256x320, forward, backward and an SGD step, in the precision and layout
that ``solver.amp=auto`` gives on this CPU, as the default run trains. The competitor is this file
run as a script (``python benchmarks/bench_shared_cpu.py``): the same step in a loop, in a fresh
process with this one's environment and as many threads. Two processes that each use every core
is the case OpenMP's default spin-waiting made 10-35x slower (sfpn/_threads.py); run with
``GOMP_SPINCOUNT=300000`` (libgomp's default, which sfpn then leaves alone) to see it.
"""
import os
import subprocess
import sys

import pytest
import torch

import sfpn
from sfpn.engine.precision import choose_precision, prepare_model

IMAGES, HEIGHT, WIDTH, CLASSES, BOXES = 4, 256, 320, 4, 5


def training_step():
    """The step as a closure over a fresh model, optimizer and random batch."""
    torch.manual_seed(0)
    precision = choose_precision("auto", "cpu")
    model = prepare_model(sfpn.build_detector("faster_rcnn_r18_sfpn_small", CLASSES), precision).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images, targets = [], []
    for _ in range(IMAGES):
        corner = torch.rand(BOXES, 2) * torch.tensor([WIDTH - 64.0, HEIGHT - 64.0])
        images.append(torch.rand(3, HEIGHT, WIDTH))
        targets.append({
            "boxes": torch.cat([corner, corner + 16 + 48 * torch.rand(BOXES, 2)], 1),
            "labels": torch.randint(1, CLASSES + 1, (BOXES,)),
            "semantic": torch.randint(0, CLASSES + 1, (HEIGHT, WIDTH)),
        })

    def step():
        with precision.autocast("cpu"):
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


@pytest.fixture
def competitor():
    """Another process running the step in a loop, started and warmed up; stopped afterwards."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    process = subprocess.Popen([sys.executable, __file__], env=env, stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "stepping":
            pytest.fail(f"the competing process did not start (exit status {process.poll()})")
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.benchmark(group="training step, default preset [cpu]")
@pytest.mark.parametrize("impl", ["alone", "beside a training process"])
def test_training_step(benchmark, request, impl):
    step = training_step()
    if impl == "alone":
        benchmark.extra_info["reference"] = True
    else:
        request.getfixturevalue("competitor")
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=2)


if __name__ == "__main__":
    compete = training_step()
    compete()
    print("stepping", flush=True)
    while True:
        compete()
