"""sfpn/modeling/layers.py: a convolution with its ReLU in one oneDNN call where nothing needs a
gradient, ATen's ops elsewhere (conv_norm's sum and BatchNorm folding: test_backbone.py), with
Winograd's convolutions off (test_winograd_layers.py)."""
import contextlib

import pytest
import torch
from torch import nn

import sfpn.modeling.layers as layers
from fused_calls import FUSED, SEPARATE, needs_onednn, ops_called
from sfpn.modeling.layers import conv_relu

pytestmark = [pytest.mark.usefixtures("single_thread", "without_winograd"), needs_onednn]


@pytest.mark.parametrize("kernel, stride, bias", [(3, 1, True), (1, 1, True), (3, 2, False)])
def test_conv_relu_fused_matches_float64(generator, kernel, stride, bias):
    """No gradient, channels_last: one fused call, float32 at 1e-5 of float64 conv + ReLU, bf16
    under autocast at 1e-2; the output keeps the layout."""
    conv = nn.Conv2d(12, 20, kernel, stride, kernel // 2, bias=bias).to(memory_format=torch.channels_last)
    x = torch.randn(2, 12, 9, 13, generator=generator).contiguous(memory_format=torch.channels_last)
    expected = torch.relu(conv.double()(x.double()))
    conv.float()
    with torch.no_grad():
        out, ops = ops_called(lambda: conv_relu(conv, x))
        with torch.autocast("cpu", torch.bfloat16):
            out_bf16 = conv_relu(conv, x)
    assert FUSED in ops and not ops & SEPARATE
    assert out.is_contiguous(memory_format=torch.channels_last) and out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_bf16.double(), expected, rtol=1e-2, atol=2e-2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv2d_is_nn_conv2d_in_one_call_at_inference(generator, dtype):
    """layers.Conv2d: nn.Conv2d's state dict and bits; one fused call where nothing needs a
    gradient (inside a cache too), ATen's convolution with gradients and when scripted."""
    conv = layers.Conv2d(12, 20, 3, padding=1).to(memory_format=torch.channels_last)
    reference = nn.Conv2d(12, 20, 3, padding=1).to(memory_format=torch.channels_last)
    reference.load_state_dict(conv.state_dict())
    assert conv.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 12, 9, 13, generator=generator).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
        with torch.no_grad():
            expected = reference(x)
            out, ops = ops_called(lambda: conv(x))
            with layers.InferenceWeightCache():
                cached = [conv(x) for _ in range(2)]
        assert FUSED in ops and all(torch.equal(o, expected) for o in (out, *cached))
        trained, ops = ops_called(lambda: conv(x.requires_grad_()))
        assert FUSED not in ops and torch.equal(trained.detach(), expected)
        trained.float().sum().backward()
        assert conv.weight.grad is not None and x.grad is not None
    with torch.no_grad():
        assert torch.equal(torch.jit.script(conv)(x.detach().float()), reference(x.detach().float()))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # from mkldnn.flags
def test_conv_relu_keeps_aten_with_gradients_nchw_float64_or_onednn_disabled(generator):
    """Where the fused call does not apply, conv_relu is ATen's conv and ReLU: gradients flow, and
    NCHW, float64 and oneDNN switched off give the same values."""
    conv = nn.Conv2d(6, 8, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 7, 5, generator=generator).contiguous(memory_format=torch.channels_last)
    expected = torch.relu(conv(x)).detach()
    out, ops = ops_called(lambda: conv_relu(conv, x))
    assert FUSED not in ops and out.requires_grad
    out.sum().backward()
    assert conv.weight.grad is not None
    with torch.no_grad():
        for name, forward in {
            "NCHW": lambda: conv_relu(conv, x.contiguous()),
            "float64": lambda: conv_relu(conv.double(), x.double()).float(),
        }.items():
            out, ops = ops_called(forward)
            assert FUSED not in ops, name
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
            conv.float()
        with torch.backends.mkldnn.flags(enabled=False):
            out, ops = ops_called(lambda: conv_relu(conv, x))
        assert FUSED not in ops
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_detector_maps_fused_match_aten(generator, monkeypatch):
    """The default preset's eval forward as a `solver.amp=bf16` run computes it on the CPU
    (channels_last, bf16 autocast): with the fused convolutions (backbone, semantic embedding,
    RPN head) its pyramid, semantic logits and RPN maps are ATen's separate ops' up to bf16
    rounding, and the whole detector runs."""
    import sfpn
    torch.manual_seed(0)
    model = sfpn.build_detector("faster_rcnn_r18_sfpn_small", 3).eval().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 96, 128, generator=generator).contiguous(memory_format=torch.channels_last)

    def maps():
        pyramid, logits, _ = model.neck(model.backbone(x))
        objectness, deltas = model.rpn.head(list(pyramid.values()))
        return [*pyramid.values(), logits, *objectness, *deltas]

    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        fused, ops = ops_called(maps)
        model([x[0]])
        monkeypatch.setattr(layers, "_onednn_post_ops_built", lambda: False)
        separate, separate_ops = ops_called(maps)
    assert FUSED in ops and FUSED not in separate_ops
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_traced_graphs_keep_the_portable_convolution(generator):
    """torch.export traces ATen's conv2d, never the CPU-only fused call: an exported program must
    run on any device and torch build."""
    from sfpn.modeling import ResNet
    model = ResNet(18, width=8, norm="bn").eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 64, generator=generator).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        expected = model(x)  # eager: the fused call
        traced = program.module()(x)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("mkldnn" in target for target in targets)
    assert any("conv" in target for target in targets)
    for a, b in zip(traced, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _counting(monkeypatch, module, name):
    """Wraps ``module.name`` to count its calls; returns the counter (a one-element list)."""
    calls, original = [0], getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_weight_cache_folds_once_and_sees_in_place_updates(generator, monkeypatch, dtype):
    """Inside an InferenceWeightCache a block's folded, cast weights are computed once and reused
    (the same bits as without the cache); an in-place update of a convolution's weight or of a
    BatchNorm's statistics, or a weight given new storage, is seen at the next call; outside a
    block nothing is kept."""
    import sfpn.modeling.backbone as backbone
    from sfpn.modeling import InferenceWeightCache

    block = backbone.BasicBlock(8, 8, 1, "bn").to(memory_format=torch.channels_last).eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5, generator=generator)
    # The block's input in the dtype a previous layer gives it (the residual must match the output).
    x = torch.randn(2, 8, 6, 7, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    folds = _counting(monkeypatch, backbone, "fixed_scale_and_shift")
    cache = InferenceWeightCache()

    def forward(context):
        with torch.no_grad(), torch.autocast("cpu", dtype, enabled=dtype != torch.float32), context:
            return block(x)

    uncached = forward(contextlib.nullcontext())
    assert folds[0] == 2  # one per convolution, every call
    first, second = forward(cache), forward(cache)
    assert folds[0] == 4  # the second call folded nothing
    assert torch.equal(first, uncached) and torch.equal(second, uncached)
    with torch.no_grad():
        block.conv2.weight.mul_(0.5)
        block.bn1.running_var.add_(1.0)
    updated = forward(cache)
    assert folds[0] == 6
    assert torch.equal(updated, forward(contextlib.nullcontext())) and not torch.equal(updated, uncached)
    assert folds[0] == 8  # outside a block every call folds again
    block.conv1.weight.data = block.conv1.weight.data * 2  # new storage, a fresh version counter
    replaced = forward(cache)
    assert folds[0] == 9 and torch.equal(replaced, forward(contextlib.nullcontext()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_weight_cache_packs_weights_for_onednn_at_any_input_shape(generator, dtype):
    """Inside a cache the fused convolutions keep their weights in oneDNN's blocked layout, packed
    for the first input's shape; a block (a ReLU and a residual sum) gives the uncached bits at
    that shape and at another one (batch and map size), for which oneDNN reorders as it needs."""
    import sfpn.modeling.backbone as backbone
    from sfpn.modeling import InferenceWeightCache

    block = backbone.BasicBlock(16, 16, 1, "bn").to(memory_format=torch.channels_last).eval()
    cache = InferenceWeightCache()

    def forward(x, context):
        with torch.no_grad(), torch.autocast("cpu", dtype, enabled=dtype != torch.float32), context:
            return block(x)

    for shape in [(2, 16, 12, 10), (3, 16, 5, 17), (2, 16, 12, 10)]:
        x = torch.randn(shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
        assert torch.equal(forward(x, cache), forward(x, contextlib.nullcontext()))
    weights = [entry[1][0] for entry in cache._weights.values()]
    assert len(weights) == 2 and all(w.is_mkldnn and w.dtype == dtype for w in weights)


def test_linear_casts_its_weights_once_per_cache(generator):
    """Under autocast in an InferenceWeightCache, layers.linear gives fc(x)'s bits with the weights
    cast once; with a gradient to compute, or outside a block, it is fc(x) itself."""
    from sfpn.modeling import InferenceWeightCache

    fc = nn.Linear(24, 10)
    x = torch.randn(5, 24, generator=generator)
    cache = InferenceWeightCache()

    def casts(call):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            out = call()
        return out, sum(e.count for e in profiler.key_averages() if e.key == "aten::_to_copy")

    with torch.autocast("cpu", torch.bfloat16):
        expected = fc(x)
        with torch.no_grad(), cache:
            first, first_casts = casts(lambda: layers.linear(fc, x))
            second, second_casts = casts(lambda: layers.linear(fc, x))
        assert torch.equal(first, expected) and torch.equal(second, expected)
        assert (first_casts, second_casts) == (3, 1)  # x, the weight and the bias; then x alone
        with cache:
            out = layers.linear(fc, x)  # gradients flow: autocast's own cast
        assert out.requires_grad and torch.equal(out, expected)
