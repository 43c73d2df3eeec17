"""upsample_add and semantic_fuse, forward + backward, against eager PyTorch and torch.compile.

    pytest benchmarks/bench_upsample.py --benchmark-only [--benchmark-json out.json]

Shapes: the COCO training shape of docs/design.md "Performance targets" (batch 2 at 800x1344, 256 channels):
P2 200x336, P3 100x168, P4 50x84, P5 25x42; the semantic feature at stride 8 (P3's size).
One group per case, so ours sits beside its peers: `sfpn` (our kernel), `eager`
(`lateral + F.interpolate(...)`, a Python loop over levels for semantic_fuse) and `compiled`
(`torch.compile` of the eager function). Each timed call is one forward and one backward
(`torch.autograd.grad` w.r.t. every input, so no gradient accumulation copies are timed).
On CPU the median process CPU time of the calls is recorded too (extra_info["cpu_time_median_ms"]):
on a machine shared with other jobs, wall time mostly measures the others.

On CUDA every call ends with a synchronisation, and the CUDA-event median of
`triton.testing.do_bench` is recorded too (extra_info["cuda_event_median_ms"]), which
benchmarks/table.py prefers. On CPU, torch.compile is only measured at P3->P2 and for
semantic_fuse, to keep a CPU run of this file to a few minutes (each compile takes tens of seconds).
"""
import functools
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from sfpn.ops import semantic_fuse, upsample_add

BATCH, CHANNELS = 2, 256
LEVELS = {"P2": (200, 336), "P3": (100, 168), "P4": (50, 84), "P5": (25, 42)}
SEMANTIC = "P3"  # stride 8
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLEMENTATIONS = ["sfpn", "eager", "compiled"]

UPSAMPLE_CASES = [  # (top, lateral, mode)
    ("P5", "P4", "nearest"),
    ("P4", "P3", "nearest"),
    ("P3", "P2", "nearest"),
    ("P3", "P2", "bilinear"),
]


def eager_upsample_add(top, lateral, mode):
    return lateral + F.interpolate(top, size=lateral.shape[-2:], mode=mode)


def eager_semantic_fuse(levels, semantic):
    return [level + F.interpolate(semantic, size=level.shape[-2:], mode="bilinear") for level in levels]


@functools.cache
def compiled(fn, device, *key):
    # One compiled function per case: static shapes, as a detector at a fixed input size runs.
    del device, key
    return torch.compile(fn, dynamic=False)


def _skip_compiled_on_cpu(impl, device, compiled_on_cpu):
    if impl == "compiled" and device == "cpu" and not compiled_on_cpu:
        pytest.skip("torch.compile peer measured on CPU at P3->P2 and semantic_fuse only (compile time)")


def _run(benchmark, device, step, rounds):
    if device == "cuda":
        import triton.testing

        def timed():
            step()
            torch.cuda.synchronize()

        timed()
        benchmark.extra_info["cuda_event_median_ms"] = triton.testing.do_bench(step, return_mode="median")
        benchmark.pedantic(timed, rounds=rounds * 10, warmup_rounds=3, iterations=1)
        return
    # The process CPU time of each call as well (all threads): unlike wall time, it does not
    # count the time the call spent descheduled, so it stays comparable on a shared machine.
    cpu_times = []

    def timed():
        start = time.process_time()
        step()
        cpu_times.append(time.process_time() - start)

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info["cpu_time_median_ms"] = statistics.median(cpu_times[1:]) * 1e3


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("top_level,lateral_level,mode", UPSAMPLE_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("device", DEVICES)
def test_upsample_add(benchmark, device, top_level, lateral_level, mode, impl):
    _skip_compiled_on_cpu(impl, device, compiled_on_cpu=lateral_level == "P2")
    benchmark.group = f"upsample_add {mode} {top_level}->{lateral_level} fwd+bwd [{device}]"
    generator = torch.Generator(device=device).manual_seed(0)
    make = functools.partial(torch.randn, generator=generator, device=device)
    top = make(BATCH, CHANNELS, *LEVELS[top_level]).requires_grad_()
    lateral = make(BATCH, CHANNELS, *LEVELS[lateral_level]).requires_grad_()
    grad = make(BATCH, CHANNELS, *LEVELS[lateral_level])
    fn = {
        "sfpn": upsample_add,
        "eager": eager_upsample_add,
        "compiled": compiled(eager_upsample_add, device, top_level, lateral_level, mode),
    }[impl]

    def step():
        out = fn(top, lateral, mode)
        return torch.autograd.grad(out, (top, lateral), grad)

    _run(benchmark, device, step, rounds={"P2": 5, "P3": 10, "P4": 20}[lateral_level])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_semantic_fuse(benchmark, device, impl):
    benchmark.group = f"semantic_fuse bilinear {SEMANTIC}->P2..P5 fwd+bwd [{device}]"
    generator = torch.Generator(device=device).manual_seed(0)
    make = functools.partial(torch.randn, generator=generator, device=device)
    semantic = make(BATCH, CHANNELS, *LEVELS[SEMANTIC]).requires_grad_()
    levels = [make(BATCH, CHANNELS, *size).requires_grad_() for size in LEVELS.values()]
    grads = [make(BATCH, CHANNELS, *size) for size in LEVELS.values()]
    fn = {
        "sfpn": semantic_fuse,
        "eager": eager_semantic_fuse,
        "compiled": compiled(eager_semantic_fuse, device, "semantic"),
    }[impl]

    def step():
        outs = fn(levels, semantic)
        return torch.autograd.grad(outs, [semantic, *levels], grads)

    _run(benchmark, device, step, rounds=5)
