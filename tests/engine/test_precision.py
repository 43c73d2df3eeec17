"""CPU mixed precision: solver.amp's choice and why, every op in bf16 and channels_last on the CPU
(against the fp32 reference, in the layout it was given), and the detector under CPU autocast."""
import pytest
import torch

import sfpn
from sfpn import _extension, info, ops
from sfpn.engine import precision
from sfpn.engine.precision import Precision, choose_precision, cpu_native_bf16, prepare_model
from sfpn.ops import reference

pytestmark = pytest.mark.usefixtures("single_thread")

requires_kernels = pytest.mark.skipif(not _extension.STATUS.loaded, reason="sfpn._C is not loaded")
CL = torch.channels_last
NCHW = torch.contiguous_format
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
# NHWC against NCHW: fp32 to rounding, bf16 to one unit in the last place (2**-7).
SAME = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.bfloat16: dict(rtol=2**-7, atol=1e-5)}
# Flags of three CPUs: Sapphire Rapids (AMX), Zen 4/5 (AVX512-BF16, no AMX), Skylake-X (AVX-512
# without bf16: oneDNN would emulate it).
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
ZEN5 = {"avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SKYLAKE_X = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}


def randn(generator, *shape):
    return torch.randn(*shape, generator=generator)


def is_channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=CL)


def prepared(tensors, dtype, layout):
    """Leaves in ``dtype``, the 4-d ones laid out as ``layout``."""
    return [
        t.detach().to(dtype).contiguous(memory_format=layout if t.dim() == 4 else NCHW).requires_grad_()
        for t in tensors
    ]


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def check_bf16_and_channels_last(op, definition, inputs, grad_outputs, output_follows_layout=True, output_dtype=None):
    """``op(*inputs)`` and its input gradients in fp32 and bf16, NCHW and NHWC: each against the
    ``definition`` in fp32 of the same (rounded) inputs, of the input dtype (the outputs of
    ``output_dtype`` if given), channels_last exactly where the input was (the outputs only when
    the op's ``output_follows_layout``, else contiguous; the input gradients always), and NHWC
    equal to NCHW."""
    for dtype in (torch.float32, torch.bfloat16):
        out_dtype = output_dtype or dtype
        reference_inputs = prepared([t.to(dtype) for t in inputs], torch.float32, NCHW)
        expected = as_list(definition(*reference_inputs))
        expected_grads = torch.autograd.grad(expected, reference_inputs, [g.to(out_dtype).float() for g in grad_outputs])
        results = {}
        for layout in (NCHW, CL):
            leaves = prepared(inputs, dtype, layout)
            outs = as_list(op(*leaves))
            grads = torch.autograd.grad(outs, leaves, [g.detach() for g in prepared(grad_outputs, out_dtype, layout)])
            assert all(out.dtype == out_dtype for out in outs) and all(grad.dtype == dtype for grad in grads)
            for got, want in zip([*outs, *grads], [*expected, *expected_grads]):
                torch.testing.assert_close(got.float(), want, **TOLERANCE[dtype])
            for t in outs:
                if t.dim() == 4:
                    assert is_channels_last(t) == (output_follows_layout and layout == CL)
            for t in grads:
                if t.dim() == 4:
                    assert is_channels_last(t) == (layout == CL)
            results[layout] = [*outs, *grads]
        for nchw, nhwc in zip(results[NCHW], results[CL]):
            torch.testing.assert_close(nhwc, nchw, **SAME[dtype])


# ------------------------------------------------------------------------------------------------
# The choice: solver.amp, the CPU's flags, the reason


@pytest.mark.parametrize("flags,native,words", [
    (SAPPHIRE_RAPIDS, True, "AMX-BF16"),
    (ZEN5, True, "AVX512-BF16"),
    (SKYLAKE_X, False, "emulated"),
    (set(), False, "unknown"),
])
def test_native_bf16_rule_reads_the_cpu_flags(flags, native, words):
    found, reason = cpu_native_bf16(flags)
    assert found is native and words in reason


@pytest.mark.parametrize("flags,dtype", [(SAPPHIRE_RAPIDS, torch.bfloat16), (ZEN5, torch.bfloat16), (SKYLAKE_X, torch.float32)])
def test_auto_on_the_cpu_takes_bf16_only_where_native(flags, dtype):
    chosen = choose_precision("auto", "cpu", flags)
    assert (chosen.dtype, chosen.channels_last) == (dtype, True)
    assert chosen.reason == f"solver.amp=auto: {cpu_native_bf16(flags)[1]}"
    assert chosen.describe().startswith("bf16 autocast, channels_last (" if dtype == torch.bfloat16 else "fp32, channels_last (")


@pytest.mark.parametrize("amp", ["auto", "bf16", "off"])
def test_every_cpu_mode_is_channels_last_where_onednn_convolves(monkeypatch, amp):
    assert choose_precision(amp, "cpu", ZEN5).channels_last
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not choose_precision(amp, "cpu", ZEN5).channels_last


def test_off_and_bf16_force_their_precision_and_fp16_needs_cuda():
    assert choose_precision("off", "cpu", SAPPHIRE_RAPIDS) == Precision(torch.float32, True, "solver.amp=off")
    assert choose_precision("off", "cuda") == Precision(torch.float32, False, "solver.amp=off")
    forced = choose_precision("bf16", "cpu", SKYLAKE_X)
    assert (forced.dtype, forced.channels_last) == (torch.bfloat16, True) and "emulated" in forced.reason
    assert choose_precision("bf16", "cpu", ZEN5).reason == "solver.amp=bf16"
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        choose_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="solver.amp must be one of"):
        choose_precision("half", "cpu")
    # Another device type: fp32, unless a mode is forced.
    assert choose_precision("auto", "meta").dtype == torch.float32
    with pytest.raises(ValueError, match="no mixed precision rule for device type 'meta'"):
        choose_precision("bf16", "meta")


@pytest.mark.parametrize("supported,dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_keeps_bf16_where_supported_else_fp16(monkeypatch, supported, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    chosen = choose_precision("auto", "cuda")
    assert (chosen.dtype, chosen.channels_last) == (dtype, False)
    assert choose_precision("fp16", "cuda").dtype == torch.float16


def test_autocast_context_and_model_layout():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(5, 2))
    prepare_model(model, Precision(torch.float32, False, "as on CUDA"))
    assert model[0].weight.is_contiguous()
    prepare_model(model, choose_precision("auto", "cpu", SKYLAKE_X))
    assert is_channels_last(model[0].weight) and model[1].weight.is_contiguous()
    with choose_precision("auto", "cpu", ZEN5).autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with choose_precision("auto", "cpu", SKYLAKE_X).autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_info_says_what_auto_chooses_on_this_cpu_and_why():
    lines = info.report().splitlines()
    assert f"precision     cpu: {choose_precision('auto', 'cpu').describe()}" in lines
    assert any(line.startswith(f"CPU           {precision.cpu_model()}") for line in lines)


# ------------------------------------------------------------------------------------------------
# Every op: bf16 against the fp32 reference; channels_last in, channels_last out on the CPU


@requires_kernels
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("top_size,lateral_size", [((5, 7), (10, 14)), ((6, 9), (13, 17)), ((9, 12), (4, 5))], ids=str)
def test_upsample_add(generator, mode, top_size, lateral_size):
    top, lateral = randn(generator, 2, 6, *top_size), randn(generator, 2, 6, *lateral_size)
    check_bf16_and_channels_last(
        lambda t, l: ops.upsample_add(t, l, mode), lambda t, l: reference.upsample_add(t, l, mode),
        [top, lateral], [randn(generator, 2, 6, *lateral_size)],
    )


@requires_kernels
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_semantic_fuse(generator, mode):
    sizes = [(20, 26), (10, 13), (5, 7), (3, 4)]
    semantic = randn(generator, 2, 6, 10, 13)
    levels = [randn(generator, 2, 6, *size) for size in sizes]
    check_bf16_and_channels_last(
        lambda s, *ls: ops.semantic_fuse(list(ls), s, mode), lambda s, *ls: reference.semantic_fuse(list(ls), s, mode),
        [semantic, *levels], [randn(generator, 2, 6, *size) for size in sizes],
    )


def boxes_for(generator, count, height, width):
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.7
    size = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.5 + 1
    return torch.cat([corner, corner + size], 1)


@requires_kernels
@pytest.mark.parametrize("sampling_ratio,aligned", [(2, True), (-1, False)])
def test_roi_align_reads_channels_last(generator, sampling_ratio, aligned):
    boxes = [boxes_for(generator, 7, 96, 120), boxes_for(generator, 5, 96, 120)]
    check_bf16_and_channels_last(
        lambda x: ops.roi_align(x, boxes, (5, 4), 0.25, sampling_ratio, aligned),
        lambda x: reference.roi_align(x, boxes, (5, 4), 0.25, sampling_ratio, aligned),
        [randn(generator, 2, 8, 24, 30)], [randn(generator, 12, 8, 5, 4)], output_follows_layout=False,
    )


@requires_kernels
def test_multilevel_roi_align_reads_channels_last(generator):
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    levels = [randn(generator, 2, 8, 64 // 2**i, 80 // 2**i) for i in range(4)]
    boxes = [boxes_for(generator, 9, 256, 320), boxes_for(generator, 6, 256, 320)]
    check_bf16_and_channels_last(
        lambda *ls: ops.multilevel_roi_align(list(ls), boxes, 7, scales, 2, True),
        lambda *ls: reference.multilevel_roi_align(list(ls), boxes, 7, scales, 2, True),
        levels, [randn(generator, 15, 8, 7, 7)], output_follows_layout=False,
    )


def test_group_norm_relu(generator):
    x = randn(generator, 2, 8, 9, 11) * 2 + 0.5
    weight, bias = randn(generator, 8), randn(generator, 8)
    # fp32 affine parameters with bf16 x, as under autocast: prepared() casts them too, so give
    # the op float32 ones whatever x's dtype is.
    check_bf16_and_channels_last(
        lambda x, w, b: ops.group_norm_relu(x, 4, w.float(), b.float()),
        lambda x, w, b: reference.group_norm_relu(x, 4, w, b), [x, weight, bias], [randn(generator, 2, 8, 9, 11)],
    )


def test_resize_sum(generator):
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3)]
    check_bf16_and_channels_last(
        lambda *ls: ops.resize_sum(list(ls), (8, 10)), lambda *ls: reference.resize_sum(list(ls), (8, 10)),
        [randn(generator, 2, 6, *size) for size in sizes], [randn(generator, 2, 6, 8, 10)],
    )


@pytest.mark.parametrize("op_name,label_size", [("semantic_cross_entropy", (6, 7)), ("upsample_cross_entropy", (48, 56))])
def test_cross_entropy(generator, op_name, label_size):
    labels = torch.randint(0, 5, (2, *label_size), generator=generator)
    labels[:, :2] = 255
    op, definition = getattr(ops, op_name), getattr(reference, op_name)
    check_bf16_and_channels_last(
        lambda logits: op(logits, labels), lambda logits: definition(logits, labels),
        [randn(generator, 2, 5, 6, 7) * 3], [torch.tensor(1.5)], output_dtype=torch.float32,
    )


@requires_kernels
@pytest.mark.parametrize("op_name", ["nms", "batched_nms", "batched_nms_padded"])
def test_nms_under_autocast_takes_bf16_scores_with_float32_boxes(generator, op_name):
    boxes = boxes_for(generator, 200, 100, 100) * 2
    scores = torch.rand(200, generator=generator).bfloat16()  # many ties among 200 bf16 values
    idxs = torch.randint(0, 3, (200,), generator=generator)
    args = {"nms": (0.5,), "batched_nms": (idxs, 0.5), "batched_nms_padded": (idxs, 0.5, 150)}[op_name]
    with pytest.raises(TypeError, match="scores must have the same dtype as boxes"):
        getattr(ops, op_name)(boxes, scores, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = getattr(ops, op_name)(boxes, scores, *args)
    # The IoUs and the order in float32: the result of the float32 scores the bf16 ones hold.
    expected = getattr(ops, op_name)(boxes, scores.float(), *args)
    for got, want in zip(as_list(kept), as_list(expected)):
        assert torch.equal(got, want)


@requires_kernels
def test_channels_last_opcheck(generator):
    """The fakes give the kernels' layouts: channels_last outputs for channels_last inputs."""
    top, lateral = randn(generator, 2, 3, 4, 5).to(memory_format=CL), randn(generator, 2, 3, 9, 11).to(memory_format=CL)
    torch.library.opcheck(torch.ops.sfpn.upsample_add, (top.requires_grad_(), lateral.requires_grad_(), "bilinear", False))
    torch.library.opcheck(torch.ops.sfpn.upsample_add_backward, (lateral.detach(), 4, 5, "nearest", False))
    levels = [randn(generator, 2, 3, *size).to(memory_format=CL).requires_grad_() for size in [(10, 12), (5, 6)]]
    semantic = randn(generator, 2, 3, 5, 6).to(memory_format=CL).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse, (levels, semantic, "bilinear", False))
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse_backward, ([l.detach() for l in levels], 5, 6, "bilinear", False))
    x = randn(generator, 2, 4, 3, 5).to(memory_format=CL).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.group_norm_relu, (x, 2, randn(generator, 4), randn(generator, 4), 1e-5))
    torch.library.opcheck(torch.ops.sfpn.resize_sum, ([l.detach() for l in levels], 5, 6))
    logits = randn(generator, 2, 5, 6, 7).to(memory_format=CL).requires_grad_()
    labels = torch.randint(0, 5, (2, 6, 7), generator=generator)
    torch.library.opcheck(torch.ops.sfpn.semantic_cross_entropy, (logits, labels, None, 255, "mean", 0.0, True))


# ------------------------------------------------------------------------------------------------
# The detector under CPU bf16 autocast, channels_last


def detector_batch(generator):
    images = [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 80, 112, generator=generator)]
    targets = []
    for image in images:
        boxes = boxes_for(generator, 3, *image.shape[-2:])
        semantic = torch.zeros(image.shape[-2:], dtype=torch.int64)
        for label, (x1, y1, x2, y2) in enumerate(boxes.long().tolist(), start=1):
            semantic[y1:y2, x1:x2] = label
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "semantic": semantic})
    return images, targets


@requires_kernels
@pytest.mark.parametrize("name", ["faster_rcnn_r18_sfpn_small", "faster_rcnn_r18_fpn_small"])
def test_detector_trains_and_predicts_under_cpu_bf16_autocast(generator, name):
    torch.manual_seed(0)
    model = prepare_model(sfpn.build_detector(name, 3), choose_precision("bf16", "cpu"))
    images, targets = detector_batch(generator)
    assert model.input_memory_format() == CL and is_channels_last(model.preprocess(images)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, targets)
    assert losses and all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
    for output, image in zip(outputs, images):
        assert output["boxes"].dtype == output["scores"].dtype == torch.float32
        assert torch.isfinite(output["boxes"]).all() and torch.isfinite(output["scores"]).all()
        if "semantic" in output:
            assert output["semantic"].shape == image.shape[-2:]
