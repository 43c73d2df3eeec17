"""The semantic head's Triton kernels vs their eager compositions and torch.compile of them.

    python -m pytest benchmarks/bench_semantic.py --benchmark-only [-k cuda|cpu]

Shape: COCO training, batch 2 at 800 x 1344 with 256 channels: pyramid P2..P5 at 200x336,
100x168, 50x84 and 25x42, the head on the stride-8 grid (100 x 168), 81 or 134 classes, labels at
full size for the fused upsample + CE. Every timed call is forward + backward (gradients from
``torch.autograd.grad``, so nothing accumulates between rounds) and, on CUDA, synchronises inside
the call. CUDA rounds also record the peak memory above the inputs (``extra_info``).

On CUDA each group holds the kernel (``sfpn``), the eager composition (``eager``) and
``torch.compile`` of it (``compiled``). On the CPU the Triton kernels do not run (the interpreter
is a test device, not a benchmark): ``sfpn`` is then the op as the CPU dispatches it (the C++
kernels of ``resize_sum``, ``group_norm_relu`` and ``upsample_cross_entropy``, on maps laid out
channels_last as the detector lays out CPU maps; ``semantic_cross_entropy``'s CPU implementation
in ``sfpn/ops``), against ``eager``; batch 1 keeps the run to a few minutes on a small CPU, and
``compiled`` skips there.

``upsample_argmax`` (the class map at image size, inference only) is timed forward, on logits of
a trained model's kind (regions of one class) and on noise, its kernel's worst case.
"""
import pytest
import torch
import torch.nn.functional as F

from sfpn import kernels, ops
from sfpn.ops import _library, reference

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
IMPLS = ["sfpn", "eager", "compiled"]
LEVEL_SIZES = [(200, 336), (100, 168), (50, 84), (25, 42)]
GRID = LEVEL_SIZES[1]
IMAGE = (800, 1344)
CHANNELS = 256
GROUPS = 32


def batch_for(device: str) -> int:
    return 2 if device == "cuda" else 1


def _skip_unless_runnable(device: str, impl: str) -> None:
    if device == "cpu" and impl == "compiled":
        pytest.skip("CPU: the op's CPU implementation against eager only (compiling takes minutes on a small CPU)")
    triton_ops = [op.name for op in _library.OPS.values() if op.backend == _library.TRITON]
    if device == "cuda" and impl == "sfpn" and any(_library.serving(op, "cuda") != "Triton" for op in triton_ops):
        pytest.skip(f"Triton does not serve CUDA here: {kernels.UNAVAILABLE_REASON or 'no kernel registered'}")


_COMPILED = {}


def _implementation(name: str, impl: str, fused, eager):
    if impl == "sfpn":
        return fused
    if impl == "eager":
        return eager
    if name not in _COMPILED:  # compile once per op, reused across parametrisations
        _COMPILED[name] = torch.compile(eager, fullgraph=True)
    return _COMPILED[name]


def _time(benchmark, device, group, step, rounds):
    benchmark.group = group

    def run():
        result = step()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    if device == "cuda":
        run()  # compile / autotune outside the measurement
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        benchmark.extra_info["peak_mib_above_inputs"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)


def _rounds(device: str) -> int:
    return 20 if device == "cuda" else 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES)
def test_resize_sum(benchmark, device, impl, dtype):
    _skip_unless_runnable(device, impl)
    g = torch.Generator().manual_seed(0)
    n = batch_for(device)
    layout = torch.channels_last if device == "cpu" else torch.contiguous_format  # the detector's CPU layout
    levels = [torch.randn(n, CHANNELS, *s, generator=g).to(device, dtype).contiguous(memory_format=layout).requires_grad_()
              for s in LEVEL_SIZES]
    grad = torch.randn(n, CHANNELS, *GRID, generator=g).to(device, dtype).contiguous(memory_format=layout)
    fn = _implementation("resize_sum", impl, ops.resize_sum, reference.resize_sum)

    def step():
        return torch.autograd.grad(fn(levels, GRID), levels, grad)

    _time(benchmark, device, f"resize_sum fwd+bwd {device} {dtype}", step, _rounds(device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES)
def test_group_norm_relu(benchmark, device, impl, dtype):
    _skip_unless_runnable(device, impl)
    g = torch.Generator().manual_seed(0)
    n = batch_for(device)
    x = torch.randn(n, CHANNELS, *GRID, generator=g).to(device, dtype)
    if device == "cpu":  # the detector's CPU layout
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(CHANNELS, generator=g).to(device).requires_grad_()
    bias = torch.randn(CHANNELS, generator=g).to(device).requires_grad_()
    grad = torch.randn(n, CHANNELS, *GRID, generator=g).to(device, dtype)
    fn = _implementation("group_norm_relu", impl, ops.group_norm_relu, reference.group_norm_relu)

    def step():
        return torch.autograd.grad(fn(x, GROUPS, weight, bias), (x, weight, bias), grad)

    _time(benchmark, device, f"group_norm_relu fwd+bwd {device} {dtype}", step, _rounds(device))


def _eager_cross_entropy(logits, labels):
    """What a head without the fused kernel runs: F.cross_entropy on the logits as they are."""
    return F.cross_entropy(logits, labels, ignore_index=255)


def _eager_upsample_cross_entropy(logits, labels):
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=255)


def _labels(generator, n, size, num_classes, device):
    labels = torch.randint(0, num_classes, (n, *size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
    return labels.to(device)


@pytest.mark.parametrize("num_classes", [81, 134])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES)
def test_semantic_cross_entropy(benchmark, device, impl, num_classes):
    _skip_unless_runnable(device, impl)
    g = torch.Generator().manual_seed(0)
    n = batch_for(device)
    logits = torch.randn(n, num_classes, *GRID, generator=g).to(device).requires_grad_()
    labels = _labels(g, n, GRID, num_classes, device)
    fn = _implementation("semantic_cross_entropy", impl, ops.semantic_cross_entropy, _eager_cross_entropy)

    def step():
        return torch.autograd.grad(fn(logits, labels), logits)

    _time(benchmark, device, f"semantic_cross_entropy fwd+bwd {device} K={num_classes}", step, _rounds(device))


# 5: few classes (the default run's set has 11 with background), where a pixel's class loop is short.
@pytest.mark.parametrize("num_classes", [5, 81, 134])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES)
def test_upsample_cross_entropy(benchmark, device, impl, num_classes):
    _skip_unless_runnable(device, impl)
    g = torch.Generator().manual_seed(0)
    n = batch_for(device)
    logits = torch.randn(n, num_classes, *GRID, generator=g).to(device).requires_grad_()
    labels = _labels(g, n, IMAGE, num_classes, device)
    fn = _implementation("upsample_cross_entropy", impl, ops.upsample_cross_entropy, _eager_upsample_cross_entropy)

    def step():
        return torch.autograd.grad(fn(logits, labels), logits)

    _time(benchmark, device, f"upsample_cross_entropy fwd+bwd {device} K={num_classes}", step, _rounds(device))


def _eager_upsample_argmax(logits, size):
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)


def _class_map_logits(generator, kind: str, num_classes: int) -> torch.Tensor:
    """``(K, *GRID)`` logits. "regions": a trained model's kind, square regions of one class 6
    source pixels on a side, that class ahead by 4 (+- noise): most of the kernel's cells have one
    candidate. "noise": random logits, every cell a boundary between several classes: its worst
    case."""
    noise = torch.randn(num_classes, *GRID, generator=generator)
    if kind == "noise":
        return 3 * noise
    region_class = torch.randint(0, num_classes, (-(-GRID[0] // 6), -(-GRID[1] // 6)), generator=generator)
    region_class = region_class.repeat_interleave(6, 0).repeat_interleave(6, 1)[: GRID[0], : GRID[1]]
    return 0.5 * noise + 4 * F.one_hot(region_class, num_classes).permute(2, 0, 1)


# The class map at image size (inference only: no backward). 11 classes: the default run's set.
@pytest.mark.parametrize("kind", ["regions", "noise"])
@pytest.mark.parametrize("num_classes", [11, 81])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES)
def test_upsample_argmax(benchmark, device, impl, num_classes, kind):
    _skip_unless_runnable(device, impl)
    logits = _class_map_logits(torch.Generator().manual_seed(0), kind, num_classes).to(device)
    fn = _implementation("upsample_argmax", impl, ops.upsample_argmax, _eager_upsample_argmax)
    _time(benchmark, device, f"upsample_argmax {device} K={num_classes} {kind}", lambda: fn(logits, IMAGE),
          _rounds(device))
