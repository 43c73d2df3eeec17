"""The ResNet backbone (sfpn/modeling/backbone.py): shapes, frozen stages and BatchNorm,
torchvision checkpoints loaded and mismatched ones refused."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fused_calls import FUSED, SEPARATE, needs_onednn, ops_called
from sfpn.config import RESNET_STAGES, resnet_channels
from sfpn.modeling import FrozenBatchNorm2d, ResNet
from sfpn.modeling.backbone import conv_norm, fixed_scale_and_shift

pytestmark = pytest.mark.usefixtures("single_thread")


SMALL_CHANNELS = [16, 32, 64, 128]  # C2..C5 of ResNet(18, width=16)


def test_resnet_shapes_and_freezing():
    model = ResNet(18, width=16, norm="bn", freeze_at=2)
    features = model(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    assert model.out_channels == SMALL_CHANNELS
    assert not any(p.requires_grad for p in [*model.conv1.parameters(), *model.layer1.parameters()])
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert ResNet(50, freeze_at=0).out_channels == [256, 512, 1024, 2048]


@pytest.mark.parametrize("depth, refused", [(18, (5,)), (34, (5,)), (50, (3, 5)), (101, (3, 5))])
def test_resnet_channels_are_those_its_norms_normalise(depth, refused):
    """The config's GroupNorm rule reads resnet_channels: it must list the model's norm widths, so
    that a width the rule accepts builds with norm="gn" and one it refuses is refused by the model
    (width 5: 40 channels; 3: the bottlenecks' 48)."""
    assert set(RESNET_STAGES) == {18, 34, 50, 101}
    for width in (1, 3, 5, 8):
        norms = {m.num_features for m in ResNet(depth, width, "bn").modules() if isinstance(m, nn.BatchNorm2d)}
        assert resnet_channels(depth, width) == tuple(sorted(norms))
        if width in refused:
            with pytest.raises(ValueError, match=f"^width with norm='gn' must make every channel count of the ResNet-{depth}"):
                ResNet(depth, width, "gn")
        else:
            model = ResNet(depth, width, "gn")
            assert all(norm.num_channels % norm.num_groups == 0 for norm in model.modules() if isinstance(norm, nn.GroupNorm))


def test_frozen_batchnorm_matches_batchnorm_in_eval(generator):
    bn = nn.BatchNorm2d(8).eval()
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).data = torch.randn(8, generator=generator)
    bn.running_var.data = torch.rand(8, generator=generator) + 0.5
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 8, 5, 5, generator=generator)
    torch.testing.assert_close(frozen(x), bn(x))
    assert not list(frozen.parameters())


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_in_eval_is_folded_into_its_conv(generator, affine):
    """A trained BatchNorm in eval mode is a fixed affine map, so conv_norm folds it into the
    convolution: in float64 the output and the gradients of the input, the conv weight and the
    BatchNorm's affine parameters match conv then BatchNorm. In training mode it is not folded:
    it normalises by the batch and updates its running statistics."""
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False).double()
    bn = nn.BatchNorm2d(6, affine=affine).double().eval()
    bn.running_mean.copy_(torch.randn(6, generator=generator, dtype=torch.float64))
    bn.running_var.copy_(torch.rand(6, generator=generator, dtype=torch.float64) + 0.5)
    if affine:
        bn.weight.data.copy_(torch.randn(6, generator=generator, dtype=torch.float64))
        bn.bias.data.copy_(torch.randn(6, generator=generator, dtype=torch.float64))
    x = torch.randn(2, 4, 7, 9, generator=generator, dtype=torch.float64)
    grad = torch.randn(2, 6, 7, 9, generator=generator, dtype=torch.float64)
    leaves = [conv.weight] + ([bn.weight, bn.bias] if affine else [])

    def output_and_grads(forward):
        x_leaf = x.clone().requires_grad_()
        out = forward(x_leaf)
        return (out, *torch.autograd.grad(out, [x_leaf, *leaves], grad))

    assert fixed_scale_and_shift(bn) is not None
    torch.testing.assert_close(output_and_grads(lambda t: conv_norm(conv, bn, t)),
                               output_and_grads(lambda t: bn(conv(t))), rtol=1e-12, atol=1e-12)
    bn.train()
    assert fixed_scale_and_shift(bn) is None
    before = bn.running_mean.clone()
    torch.testing.assert_close(conv_norm(conv, bn, x), F.batch_norm(
        conv(x), None, None, bn.weight, bn.bias, training=True, eps=bn.eps))
    assert not torch.equal(bn.running_mean, before)


def _conv_bn(generator, in_channels: int, out_channels: int, stride: int, dtype=torch.float32):
    """A 3x3 conv and an eval-mode BatchNorm with random statistics and affine parameters, both
    channels_last."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False).to(dtype)
    bn = nn.BatchNorm2d(out_channels).to(dtype).eval()
    for tensor in (bn.running_mean, bn.weight.data, bn.bias.data):
        tensor.copy_(torch.randn(out_channels, generator=generator))
    bn.running_var.copy_(torch.rand(out_channels, generator=generator) + 0.5)
    return conv.to(memory_format=torch.channels_last), bn


@needs_onednn
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("residual, relu", [(False, True), (True, True), (True, False), (False, False)])
@pytest.mark.usefixtures("without_winograd")
def test_conv_norm_post_ops_in_one_onednn_call(generator, stride, residual, relu):
    """Where nothing needs a gradient, conv_norm on a channels_last CPU map runs the folded conv,
    the residual's sum and the ReLU as one oneDNN call: float32 against float64 conv, BN, sum and
    ReLU; bf16 under autocast against the float64 reference and against ATen's separate passes (the
    fused call rounds once, ATen twice). (Winograd's algorithm, which would take the float32 3x3
    convolutions of stride 1 first, is off here: test_winograd_layers.py tests it.)"""
    conv, bn = _conv_bn(generator, 24, 40, stride)
    x = torch.randn(2, 24, 11, 14, generator=generator).contiguous(memory_format=torch.channels_last)
    out_size = (2, 40, (11 - 1) // stride + 1, (14 - 1) // stride + 1)
    other = torch.randn(out_size, generator=generator).contiguous(memory_format=torch.channels_last) if residual else None
    expected = bn.double()(conv.double()(x.double())) + (other.double() if residual else 0)
    expected = expected.relu() if relu else expected
    conv.float(), bn.float()
    with torch.no_grad():
        out, ops = ops_called(lambda: conv_norm(conv, bn, x, other, relu))
        assert FUSED in ops and not ops & SEPARATE
        assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)

        residual_bf16 = other.bfloat16() if residual else None
        with torch.autocast("cpu", torch.bfloat16):
            fused = conv_norm(conv, bn, x, residual_bf16, relu)
            scale, shift = fixed_scale_and_shift(bn)
            separate = F.conv2d(x, conv.weight * scale[:, None, None, None], shift, stride, 1)
        separate = separate + residual_bf16 if residual else separate
        separate = separate.relu() if relu else separate
        assert fused.dtype == torch.bfloat16 and fused.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fused.double(), expected, rtol=1e-2, atol=5e-2)
        torch.testing.assert_close(fused, separate, rtol=1e-2, atol=5e-2)


@needs_onednn
def test_conv_norm_keeps_aten_where_the_fused_call_does_not_apply(generator):
    """The fused call has no backward, serves channels_last float32/bf16 only and needs a residual
    of the output's shape and dtype: otherwise conv_norm runs ATen's ops, whose gradients flow and
    whose errors name the mismatch."""
    conv, bn = _conv_bn(generator, 8, 8, 1)
    x = torch.randn(2, 8, 6, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    expected = bn(conv(x)).relu()
    cases = {
        "autograd": lambda: conv_norm(conv, bn, x, relu=True),
        "NCHW": lambda: conv_norm(conv, bn, x.contiguous(), relu=True),
    }
    for name, forward in cases.items():
        out, ops = ops_called(forward)
        assert FUSED not in ops, name
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()  # the autograd case's graph is intact
    assert conv.weight.grad is not None and bn.weight.grad is not None
    with torch.no_grad():
        out, ops = ops_called(lambda: conv_norm(conv, bn, x, x.double(), relu=True))
        assert FUSED not in ops  # a float64 residual: ATen's sum, in the output's dtype
        torch.testing.assert_close(out, (bn(conv(x)) + x).relu(), rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="size of tensor a"):
            conv_norm(conv, bn, x, x[:, :, :3], relu=True)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_conv_norm_trains_batchnorm_with_its_sum_and_relu_in_one_op(generator, residual, channels_last, momentum):
    """A BatchNorm training on the CPU, followed by the ReLU, runs as sfpn::batch_norm_relu with the
    sum: the output, every gradient, the running statistics and their count (momentum None: the
    cumulative average) match nn.BatchNorm2d's forward, the sum and the ReLU, over two steps."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6, momentum=momentum)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    twin_conv, twin_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    for _ in range(2):
        x = torch.randn(2, 4, 5, 7, generator=generator).contiguous(memory_format=layout).requires_grad_()
        other = torch.randn(2, 6, 5, 7, generator=generator).contiguous(memory_format=layout).requires_grad_()
        out, ops = ops_called(lambda: conv_norm(conv, bn, x, other if residual else None, relu=True))
        assert "sfpn::batch_norm_relu" in ops and "aten::native_batch_norm" not in ops
        expected = twin_bn(twin_conv(x))
        expected = (expected + other if residual else expected).relu()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        grad = torch.randn(out.shape, generator=generator)
        inputs = [x, other] if residual else [x]
        got = torch.autograd.grad(out, inputs + [conv.weight, bn.weight, bn.bias], grad)
        want = torch.autograd.grad(expected, inputs + [twin_conv.weight, twin_bn.weight, twin_bn.bias], grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * max(1.0, w.abs().max().item()))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(bn, name), getattr(twin_bn, name), rtol=1e-6, atol=1e-7)


def test_stem_pools_without_indices_where_no_gradient_is_needed(generator):
    """The stem's max pooling runs sfpn::max_pool2d, which writes no indices, where nothing needs a
    gradient (no_grad, or a frozen stem), and ATen's (which saves its indices) where a trained stem
    does; the features are the same."""
    model = ResNet(18, width=8, norm="frozen_bn", freeze_at=0).to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 80, generator=generator).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        pooled, ops = ops_called(lambda: model(x))
    assert "sfpn::max_pool2d" in ops and "aten::max_pool2d_with_indices" not in ops
    trained, ops = ops_called(lambda: model(x))
    assert "sfpn::max_pool2d" not in ops and "aten::max_pool2d_with_indices" in ops
    for a, b in zip(pooled, trained):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5 * b.abs().max().item())
    model.freeze(1)
    _, ops = ops_called(lambda: model(x))
    assert "sfpn::max_pool2d" in ops


def test_training_block_with_the_fused_batchnorm_compiles_fullgraph(generator):
    """A training BasicBlock (its BatchNorms through sfpn::batch_norm_relu) compiles in one graph
    and matches eager: the output, the gradients and the running statistics."""
    from sfpn.modeling.backbone import BasicBlock

    block = BasicBlock(8, 8, 2, "bn").to(memory_format=torch.channels_last).train()
    twin = copy.deepcopy(block)
    x = torch.randn(2, 8, 9, 10, generator=generator).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got, want = compiled(x), twin(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn(got.shape, generator=generator)
    got.backward(grad)
    want.backward(grad)
    for (name, a), b in zip(block.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5 * max(1.0, b.grad.abs().max().item()), msg=name)
    for (name, a), b in zip(block.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@needs_onednn
@pytest.mark.usefixtures("without_winograd")  # oneDNN's calls against ATen's ops
def test_resnet_inference_fused_matches_aten(generator, monkeypatch):
    """The eval-mode ResNet with its convolutions fused (BasicBlock and Bottleneck, the stem, the
    strided shortcuts) gives ATen's separate ops' features, float32 at 1e-5."""
    import sfpn.modeling.layers as layers
    x = torch.rand(2, 3, 64, 96, generator=generator).contiguous(memory_format=torch.channels_last)
    for depth in (18, 50):
        model = ResNet(depth, width=8, norm="bn").to(memory_format=torch.channels_last)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
        model.eval()
        with torch.no_grad():
            fused, ops = ops_called(lambda: model(x))
            assert FUSED in ops and not ops & SEPARATE
            with monkeypatch.context() as patch:
                patch.setattr(layers, "_onednn_post_ops_built", lambda: False)
                separate = model(x)
        for a, b in zip(fused, separate):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def _torchvision_resnet_checkpoint(torchvision, depth: int, path):
    """A random torchvision ResNet-``depth`` in eval mode, its BatchNorms given non-trivial
    statistics and affine parameters (so that the frozen BN is really exercised), saved at ``path``."""
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    torch.save(reference.state_dict(), path)
    return reference


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_loads_torchvision_checkpoint(tmp_path, depth):
    torchvision = pytest.importorskip("torchvision")
    reference = _torchvision_resnet_checkpoint(torchvision, depth, tmp_path / "resnet.pth")
    model = ResNet(depth, norm="frozen_bn", weights=str(tmp_path / "resnet.pth")).eval()
    x = torch.rand(1, 3, 64, 64)
    body = nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        expected = body(x)
        # float32 rounding grows with depth: both nets are ~1e-6 of the features' scale from float64
        torch.testing.assert_close(model(x)[-1], expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("depth", [18, 50])
def test_frozen_batchnorm_folded_into_convs_trains_as_batchnorm_in_eval(tmp_path, depth, generator):
    """The frozen BN is folded into its convolution (conv_norm): in float64 the features and the
    gradients of every conv weight and of the input match torchvision's ResNet with its BatchNorms
    in eval mode, which normalises after each conv."""
    torchvision = pytest.importorskip("torchvision")
    reference = _torchvision_resnet_checkpoint(torchvision, depth, tmp_path / "resnet.pth").double()
    model = ResNet(depth, norm="frozen_bn", freeze_at=0, weights=str(tmp_path / "resnet.pth")).double()
    body = nn.Sequential(*list(reference.children())[:-2])
    x = torch.rand(2, 3, 48, 64, dtype=torch.float64, generator=generator)
    grad = torch.randn(2, reference.fc.in_features, 2, 2, dtype=torch.float64, generator=generator)
    outputs = []
    for net in (model, body):
        x_net = x.clone().requires_grad_()
        out = net(x_net)
        out = out[-1] if isinstance(out, list) else out
        out.backward(grad)
        outputs.append((out, x_net.grad))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    reference_convs = dict(reference.named_modules())
    for name in convs:
        torch.testing.assert_close(dict(model.named_modules())[name].weight.grad, reference_convs[name].weight.grad,
                                   rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_resnet_rejects_mismatched_checkpoint(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(ResNet(18, width=16).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        ResNet(18, weights=str(path))
    with pytest.raises(FileNotFoundError):
        ResNet(18, weights=str(tmp_path / "missing.pth"))
