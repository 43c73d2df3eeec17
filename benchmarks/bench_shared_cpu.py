"""A training step of the default run, alone and beside one other such training process on the
same CPU cores (goal: at most 2.5x the time alone when two processes share two cores).

    pytest benchmarks/bench_shared_cpu.py --benchmark-only

The step: ``default_run.training_step``, ``python -m sfpn.train``'s default detector on a batch
of 4 images at 256x320, forward, backward and an SGD step, in the precision and layout that
``solver.amp=auto`` gives on this CPU, as the default run trains. The competitor is this file
run as a script (``python benchmarks/bench_shared_cpu.py``): the same step in a loop, in a fresh
process with this one's environment and as many threads. Two processes that each use every core
is the case OpenMP's default spin-waiting made 10-35x slower (sfpn/_threads.py); run with
``GOMP_SPINCOUNT=300000`` (libgomp's default, which sfpn then leaves alone) to see it.

Both processes fit their thread count to the free cores after every step, as the trainer does by
default (``cpu_threads=adaptive``, ``sfpn._threads.SharedCoreThreads``); the shared case warms up
for :data:`SETTLE_S` first, so that both have settled before the timing.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from default_run import training_step
from sfpn._threads import fitted_cpu_threads

#: Seconds of warm-up beside the competitor: both processes' thread counts settle in 4-12 s.
SETTLE_S = 15.0


@pytest.fixture
def competitor():
    """Another process running the step in a loop, started and warmed up; stopped afterwards.

    A shell starts it in the background and exits, so that it is not this process's child: the
    adaptive thread count counts its own children's time as its own (they are its DataLoader
    workers), while a second training is someone else's process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    shell = subprocess.Popen(["sh", "-c", '"$0" "$1" & echo $!', sys.executable, __file__], env=env, stdout=subprocess.PIPE, text=True)
    pid = int(shell.stdout.readline())
    shell.wait()
    try:
        if shell.stdout.readline().strip() != "stepping":  # the competitor writes to the shell's pipe
            pytest.fail("the competing process did not start")
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.benchmark(group="training step, default preset [cpu]")
@pytest.mark.parametrize("impl", ["alone", "beside a training process"])
def test_training_step(benchmark, request, impl):
    with fitted_cpu_threads("cpu", "adaptive") as shared_cores:
        step = training_step(shared_cores)
        if impl == "alone":
            benchmark.extra_info["reference"] = True
        else:
            request.getfixturevalue("competitor")
            began = time.perf_counter()
            while time.perf_counter() - began < SETTLE_S:
                step()
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=2)
        benchmark.extra_info["threads"] = torch.get_num_threads()


if __name__ == "__main__":
    with fitted_cpu_threads("cpu", "adaptive") as cores:
        compete = training_step(cores)
        compete()
        print("stepping", flush=True)
        while True:
            compete()
