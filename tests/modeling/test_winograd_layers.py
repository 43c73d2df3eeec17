"""sfpn/modeling/layers.py's Winograd convolutions: which convolutions take them (float32 3x3,
stride 1, on the CPU, eager; with gradients only at the sizes where the backward pays), their
values and gradients against float64 convolutions, the BatchNorm folding, sum and ReLU around them,
the inference cache of transformed weights, and SFPN_WINOGRAD=0."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sfpn.modeling.backbone as backbone
import sfpn.modeling.layers as layers
from fused_calls import FUSED, ops_called
from sfpn.modeling import InferenceWeightCache
from sfpn.ops import _library

WINOGRAD = "sfpn::winograd_conv2d"
pytestmark = pytest.mark.skipif(_library.serving("winograd_conv2d", "cpu") != "C++", reason="sfpn._C not built")


def _conv(generator, in_channels, out_channels, kernel=3, stride=1, bias=True):
    conv = layers.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / (3 * in_channels**0.5))
        if bias:
            conv.bias.copy_(torch.randn(out_channels, generator=generator))
    return conv.to(memory_format=torch.channels_last)


def _map(generator, *shape):
    return torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)


def _close_to_float64(out, expected):
    """Winograd's float32 bound (tests/ops/test_winograd.py): 1e-4 of the outputs' magnitude."""
    assert out.dtype == torch.float32
    assert (out.double() - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_inference_takes_winograd_at_any_size(generator):
    """No gradient: a float32 3x3 convolution of stride 1 on a channels_last map runs by Winograd,
    also where training would not (few channels, a small map), instead of oneDNN's fused call."""
    for channels, shape in [(64, (2, 20, 24)), (8, (1, 5, 3)), (16, (2, 9, 7))]:
        conv = _conv(generator, channels, channels)
        x = _map(generator, shape[0], channels, *shape[1:])
        with torch.no_grad():
            out, ops = ops_called(lambda: conv(x))
        assert WINOGRAD in ops and FUSED not in ops
        assert out.is_contiguous(memory_format=torch.channels_last)
        _close_to_float64(out, F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1))


@pytest.mark.parametrize("channels, size, expected", [
    (64, (16, 16), True),   # 4 x 4 x 4 = 64 tiles: the fewest it takes at 64 channels
    (64, (12, 16), False),  # 48 tiles
    (32, (64, 40), True),   # 640 tiles: the fewest it takes at 32 channels
    (32, (60, 40), False),  # 600 tiles
    (16, (64, 80), False),  # too few channels
    (128, (20, 24), True),
])
def test_training_takes_winograd_where_its_backward_pays(generator, channels, size, expected):
    """With gradients, only at the sizes of WINOGRAD_TRAINING_SIZES; the output and the gradients
    of x, weight and bias against float64's either way."""
    conv = _conv(generator, channels, channels)
    x = _map(generator, 4, channels, *size).requires_grad_()
    grad = _map(generator, 4, channels, *size)
    out, ops = ops_called(lambda: conv(x))
    assert (WINOGRAD in ops) == expected
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], grad)
    leaves = [t.detach().double().requires_grad_() for t in (x, conv.weight, conv.bias)]
    want_out = F.conv2d(*leaves, padding=1)
    want = torch.autograd.grad(want_out, leaves, grad.double())
    _close_to_float64(out.detach(), want_out.detach())
    for g, w in zip(got, want):
        _close_to_float64(g, w)


@pytest.mark.parametrize("case", ["stride 2", "1x1", "bf16 autocast", "float64", "dilation 2", "groups 2",
                                  "padding 0", "NCHW", "exported"])
def test_other_convolutions_keep_their_path(generator, case):
    """Only float32 3x3 convolutions of stride 1, padding 1, no dilation or groups, of
    channels_last maps, outside autocast and torch.export (whose programs must run anywhere) take
    Winograd's."""
    conv = _conv(generator, 16, 16, kernel=1 if case == "1x1" else 3, stride=2 if case == "stride 2" else 1)
    if case in ("dilation 2", "groups 2", "padding 0"):
        conv = nn.Conv2d(16, 16, 3, padding=2 if case == "dilation 2" else 0 if case == "padding 0" else 1,
                         dilation=2 if case == "dilation 2" else 1, groups=2 if case == "groups 2" else 1)
    x = _map(generator, 2, 16, 12, 12)
    if case == "NCHW":
        x = x.contiguous()
    if case == "float64":
        conv, x = conv.double(), x.double()
    forward = lambda: layers.conv_relu(conv, x)  # noqa: E731
    if case == "exported":
        forward = lambda: torch.export.export(conv, (x,)).module()(x)  # noqa: E731
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=case == "bf16 autocast"):
        _, ops = ops_called(forward)
    assert WINOGRAD not in ops


def test_switched_off_by_the_environment(generator, monkeypatch):
    """SFPN_WINOGRAD=0 leaves every convolution to oneDNN (read once per process: the cache is
    cleared here to read it again), and `python -m sfpn.info` says which serves."""
    from sfpn import info

    conv = _conv(generator, 16, 16)
    x = _map(generator, 2, 16, 12, 12)
    assert "fp32 3x3 conv cpu: Winograd's F(4x4, 3x3) where it pays" in info.report()
    monkeypatch.setenv("SFPN_WINOGRAD", "0")
    layers._winograd_available.cache_clear()
    try:
        with torch.no_grad():
            _, ops = ops_called(lambda: conv(x))
        assert "fp32 3x3 conv cpu: oneDNN's (SFPN_WINOGRAD=0)" in info.report()
    finally:
        layers._winograd_available.cache_clear()
    assert WINOGRAD not in ops and FUSED in ops


@pytest.mark.parametrize("residual, relu", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("grad", [False, True])
def test_conv_norm_folds_the_batch_norm_into_winograd(generator, residual, relu, grad):
    """conv_norm with a fixed BatchNorm: the folded weights transformed, the sum and the ReLU in
    place on Winograd's output; against float64 conv, BN, sum and ReLU, gradients included."""
    conv = _conv(generator, 64, 64, bias=False)
    bn = nn.BatchNorm2d(64).eval()
    with torch.no_grad():
        for tensor in (bn.running_mean, bn.weight, bn.bias):
            tensor.copy_(torch.randn(64, generator=generator))
        bn.running_var.copy_(torch.rand(64, generator=generator) + 0.5)
    x = _map(generator, 4, 64, 16, 18).requires_grad_(grad)
    other = _map(generator, 4, 64, 16, 18) if residual else None
    with torch.set_grad_enabled(grad):
        out, ops = ops_called(lambda: backbone.conv_norm(conv, bn, x, other, relu))
    assert WINOGRAD in ops and FUSED not in ops
    leaves = [t.detach().double().requires_grad_() for t in (x, conv.weight)]
    expected = bn.double()(F.conv2d(*leaves, padding=1)) + (other.double() if residual else 0)
    expected = expected.relu() if relu else expected
    _close_to_float64(out.detach(), expected.detach())
    if grad:
        cotangent = _map(generator, 4, 64, 16, 18)
        got = torch.autograd.grad(out, [x, conv.weight], cotangent)
        want = torch.autograd.grad(expected, leaves, cotangent.double())
        for g, w in zip(got, want):
            _close_to_float64(g, w)


def test_inference_cache_transforms_once_and_sees_in_place_updates(generator, monkeypatch):
    """Inside an InferenceWeightCache each convolution's weights are transformed once (the same
    bits as without the cache); an in-place update of a weight is seen at the next call."""
    block = backbone.BasicBlock(16, 16, 1, "bn").to(memory_format=torch.channels_last).eval()
    x = _map(generator, 2, 16, 10, 9)
    calls, original = [0], layers.winograd_weight

    def counted(weight):
        calls[0] += 1
        return original(weight)

    monkeypatch.setattr(layers, "winograd_weight", counted)
    cache = InferenceWeightCache()

    def forward(context):
        with torch.no_grad(), context:
            return block(x)

    uncached = forward(contextlib.nullcontext())
    assert calls[0] == 2
    assert torch.equal(forward(cache), uncached) and torch.equal(forward(cache), uncached)
    assert calls[0] == 4  # the second cached call transformed nothing
    with torch.no_grad():
        block.conv2.weight.mul_(0.5)
    updated = forward(cache)
    assert calls[0] == 5 and torch.equal(updated, forward(contextlib.nullcontext()))
