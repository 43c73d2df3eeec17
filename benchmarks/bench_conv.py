"""The float32 3x3 convolutions (stride 1, padding 1) on the CPU: Winograd's F(4x4, 3x3)
(``winograd_conv2d``, csrc/cpu/winograd.cpp) against ATen's ``F.conv2d`` (oneDNN's direct
convolution, which runs these at the CPU's FMA peak).

    python -m pytest benchmarks/bench_conv.py --benchmark-only

On the CPU only, channels_last as the detector lays out CPU maps, with a bias. Shapes: the default
run's FPN output conv at stride 4 (4 x 64 channels at 64 x 80), its semantic head (4 x 64 at 32 x
40) and its stride-16 backbone blocks (4 x 128 at 16 x 20), and the COCO-shape R50 detector's semantic head on the stride-8 grid (2 x 256 at 100 x 168)
and its stride-16 output conv (2 x 256 at 50 x 84). Inference under ``torch.no_grad`` (Winograd's
weights transformed once, as in an ``InferenceWeightCache``); training forward + backward, the
weights transformed in the step, with the gradients of the map, the weight and the bias.
"""
import pytest
import torch
import torch.nn.functional as F

from sfpn import ops
from sfpn.ops import _library
from sfpn.ops.winograd import winograd_weight

#: name -> (N, C, H, W); K = C
SHAPES = {"default-stride4": (4, 64, 64, 80), "default-semantic": (4, 64, 32, 40),
          "default-stride16": (4, 128, 16, 20), "coco-semantic": (2, 256, 100, 168), "coco-stride16": (2, 256, 50, 84)}
IMPLS = ["sfpn", "eager"]
needs_cpu_kernel = pytest.mark.skipif(_library.serving("winograd_conv2d", "cpu") != "C++", reason="sfpn._C not built")


def _inputs(shape):
    g = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5)).contiguous(memory_format=torch.channels_last)
    return x, weight, torch.randn(c, generator=g), torch.randn(n, c, h, w, generator=g).contiguous(
        memory_format=torch.channels_last)


def _rounds(shape) -> int:
    return 5 if shape.startswith("coco") else 20


@needs_cpu_kernel
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_conv3x3_inference(benchmark, impl, shape):
    x, weight, bias, _ = _inputs(SHAPES[shape])
    tiles = winograd_weight(weight)

    def step():
        with torch.no_grad():
            if impl == "sfpn":
                return torch.ops.sfpn.winograd_conv2d(x, tiles, bias)
            return F.conv2d(x, weight, bias, padding=1)

    benchmark.group = f"conv3x3 inference {shape} fp32"
    benchmark.pedantic(step, rounds=_rounds(shape), iterations=1, warmup_rounds=1)


@needs_cpu_kernel
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_conv3x3_training(benchmark, impl, shape):
    x, weight, bias, grad = _inputs(SHAPES[shape])
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    conv = ops.winograd_conv2d if impl == "sfpn" else lambda *args: F.conv2d(*args, padding=1)

    def step():
        return torch.autograd.grad(conv(*leaves), leaves, grad)

    benchmark.group = f"conv3x3 fwd+bwd {shape} fp32"
    benchmark.pedantic(step, rounds=_rounds(shape), iterations=1, warmup_rounds=1)
