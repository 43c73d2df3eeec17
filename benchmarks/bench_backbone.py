"""The ResNet backbone's CPU ops against ATen's: a training BatchNorm with its residual sum and
ReLU (``batch_norm_relu`` against the eager composition a ResNet block runs, ``F.batch_norm``, an
in-place sum, an in-place ReLU, and torch.compile of it), and the stem's max pooling at inference
(``max_pool2d`` against ``F.max_pool2d``, which writes indices too).

    python -m pytest benchmarks/bench_backbone.py --benchmark-only

On the CPU only: the op's C++ kernels (csrc/cpu/batch_norm_relu.cpp) on channels_last maps, as
the detector lays out CPU maps; on CUDA the op runs its reference (ATen's BatchNorm), so there is
nothing of ours to time. Shapes: the default run's stem (4 x 32 channels at 128 x 160, no
residual) and one of its stride-8 blocks (4 x 64 at 32 x 40, with the residual), batch 4 at
256 x 320. Every timed BatchNorm call is forward + backward (gradients from
``torch.autograd.grad``) and updates the running statistics, as a training step does; the max
pooling is the default run's stem's (4 x 32 channels at 128 x 160, 3 x 3, stride 2) under
``torch.no_grad``.
"""
import pytest
import torch
import torch.nn.functional as F

from bench_semantic import IMPLS, _implementation
from sfpn import ops

#: name -> (shape, whether a residual is summed before the ReLU)
SHAPES = {"stem": ((4, 32, 128, 160), False), "block": ((4, 64, 32, 40), True)}


def _eager(x, weight, bias, running_mean, running_var, residual):
    out = F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
    if residual is not None:
        out = out.add_(residual)
    return F.relu(out, inplace=True)


def _ours(x, weight, bias, running_mean, running_var, residual):
    return ops.batch_norm_relu(x, weight, bias, running_mean, running_var, residual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_batch_norm_relu(benchmark, impl, shape, dtype):
    size, with_residual = SHAPES[shape]
    g = torch.Generator().manual_seed(0)

    def channels_last_map():
        return torch.randn(*size, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)

    # The convolution's output in a network: a non-leaf map whose gradient is asked for.
    source = channels_last_map().requires_grad_()
    residual = channels_last_map().requires_grad_() if with_residual else None
    weight = torch.rand(size[1], generator=g).add_(0.5).requires_grad_()
    bias = torch.randn(size[1], generator=g).requires_grad_()
    running_mean, running_var = torch.zeros(size[1]), torch.ones(size[1])
    grad = channels_last_map()
    inputs = [t for t in (source, weight, bias, residual) if t is not None]
    fn = _implementation("batch_norm_relu", impl, _ours, _eager)

    def step():
        x = source * 1  # a fresh non-leaf, as the eager composition overwrites its BatchNorm's output
        return torch.autograd.grad(fn(x, weight, bias, running_mean, running_var, residual), inputs, grad)

    benchmark.group = f"batch_norm_relu fwd+bwd {shape} {dtype}"
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["sfpn", "eager"])
def test_max_pool2d(benchmark, impl, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, 128, 160, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    pool = ops.max_pool2d if impl == "sfpn" else F.max_pool2d

    def step():
        with torch.no_grad():
            return pool(x, 3, 2, 1)

    benchmark.group = f"max_pool2d stem inference {dtype}"
    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=3)
