"""roi_align: hand-computed bins, the C++ kernel against the pure-PyTorch reference and
torchvision, drawn inputs, empty and degenerate boxes, gradcheck, opcheck and determinism,
argument checks, the module, the reference without the extension, the CUDA kernels on the
CPU (emulation) and on a GPU. Tests that also run multilevel_roi_align carry its marker."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import MultiLevelRoIAlign, RoIAlign, multilevel_roi_align, reference, roi_align

from cuda_emulation import SEEDS, assert_close, run
from op_helpers import at_thread_count
from op_strategies import arrange, assert_matches, boxes_on, examples, float_dtypes, layouts, rois_of, seeds, uniform
from op_strategies import assert_close as assert_close_in_dtype
from roi_helpers import (
    HAS_KERNEL,
    ROI_CASES,
    SCALES,
    close,
    close_with_grads,
    needs_kernel,
    random_boxes,
    random_pyramid,
    random_rois,
)

pytestmark = pytest.mark.roi_align


# ------------------------------------------------------------------------------------------------
# Against the reference


# Hand-computed cases on f(y, x) = 4y + x + 1 over a 4x4 map: bilinear interpolation of a linear
# function is exact, so each bin is f at the mean sample position (after edge clamping).
PLANE = (torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4) + 1)


@pytest.mark.parametrize(
    "box, output_size, sampling_ratio, aligned, expected",
    [
        # samples at 0.5 and 1.5 on both axes: mean (1, 1) -> 6
        ([0, 0, 2, 2], 1, 2, False, [[6.0]]),
        # aligned shifts by -0.5: samples at 0 and 1 -> mean (0.5, 0.5) -> 3.5
        ([0, 0, 2, 2], 1, 2, True, [[3.5]]),
        # legacy mode forces a 1x1 box: one sample at 0.5
        ([1, 1, 1, 1], 1, 1, False, [[1 + 4 * 1.5 + 1.5]]),
        # aligned zero-size box: an adaptive grid of 0 samples gives 0
        ([1, 1, 1, 1], 1, -1, True, [[0.0]]),
        # adaptive 2x2 grid per bin; the last sample (3.5) clamps to row/column 3
        ([0, 0, 4, 4], 2, -1, False, [[6.0, 7.75], [13.0, 14.75]]),
        # a sample at -0.5 clamps to 0 (f = 1); one at -2.5 lies outside and counts 0
        ([-1, -1, 0, 0], 1, 1, False, [[1.0]]),
        ([-3, -3, -2, -2], 1, 1, False, [[0.0]]),
        # columns at -2.5 (outside: 0) and 0.5, one sample per bin
        ([-4, 0, 2, 2], (1, 2), 1, False, [[0.0, 4 * 1.0 + 0.5 + 1]]),
        # 2x2 samples, columns at -3.5 (outside) and -0.5 (clamped to 0): (3 + 7) / 4
        ([-5, 0, 1, 2], 1, 2, False, [[2.5]]),
    ],
)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_hand_computed(box, output_size, sampling_ratio, aligned, expected, impl):
    if impl == "kernel" and not HAS_KERNEL:
        pytest.skip("sfpn._C is not built")
    rois = torch.tensor([[0.0] + box], dtype=torch.float64)
    fn = roi_align if impl == "kernel" else reference.roi_align
    out = fn(PLANE, rois, output_size, 1.0, sampling_ratio, aligned)
    close(out[0, 0], torch.tensor(expected, dtype=torch.float64))


@needs_kernel
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1, 3])
@pytest.mark.parametrize("output_size", [7, (3, 5)])
def test_kernel_matches_reference(generator, aligned, sampling_ratio, output_size):
    x = torch.randn(2, 4, 19, 23, generator=generator, requires_grad=True)
    rois = random_boxes(generator, 40, 19 / 0.5, 23 / 0.5, 2)
    out = roi_align(x, rois, output_size, 0.5, sampling_ratio, aligned)
    expected = reference.roi_align(x, rois, output_size, 0.5, sampling_ratio, aligned)
    close_with_grads(out, expected, [x], generator)


@needs_kernel
@pytest.mark.parametrize("aligned", [False, True])
def test_kernel_large_boxes_sampled_sparsely(generator, aligned):
    """Boxes much wider than their taps (few samples over many pixels) take the kernel's
    sparse path; small ones its dense path. Both must agree with the reference."""
    x = torch.randn(2, 3, 40, 90, generator=generator, requires_grad=True)
    rois = random_boxes(generator, 30, 40, 90, 2, spill=0.1)
    rois[:15, 3] = rois[:15, 1] + 60 + 20 * torch.rand(15, generator=generator)  # wide
    rois[15:20, 3] = rois[15:20, 1] - 30  # inverted
    out = roi_align(x, rois, 2, 1.0, 1, aligned)
    expected = reference.roi_align(x, rois, 2, 1.0, 1, aligned)
    close_with_grads(out, expected, [x], generator)


@pytest.mark.multilevel_roi_align
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(generator, dtype):
    x = torch.randn(2, 3, 16, 20, generator=generator)
    rois = random_boxes(generator, 30, 16, 20, 2)
    out = roi_align(x.to(dtype).requires_grad_(), rois, 4, 1.0, -1, True)
    assert out.dtype == dtype
    expected = reference.roi_align(x.to(dtype).float(), rois, 4, 1.0, -1, True)
    close(out.float(), expected, rtol=1e-2, atol=1e-2)
    levels = [lv.to(dtype).requires_grad_() for lv in random_pyramid(generator)]
    rois = rois.clone()
    rois[:, 1:] *= 4  # image coordinates of the stride-4 level
    ml = multilevel_roi_align(levels, rois, 3, SCALES, 2, False, 32, 3)
    ml_expected = reference.multilevel_roi_align([lv.float() for lv in levels], rois, 3, SCALES, 2, False, 32, 3)
    close(ml.float(), ml_expected, rtol=1e-2, atol=1e-2)
    grads = torch.autograd.grad(ml, levels, torch.ones_like(ml))
    float_levels = [lv.detach().float().requires_grad_() for lv in levels]
    expected_grads = torch.autograd.grad(
        reference.multilevel_roi_align(float_levels, rois, 3, SCALES, 2, False, 32, 3), float_levels,
        torch.ones_like(ml_expected),
    )
    for got, want in zip(grads, expected_grads):
        assert got.dtype == dtype
        close(got.float(), want, rtol=1e-2, atol=2e-2)


@needs_kernel
def test_non_contiguous_input(generator):
    base = torch.randn(2, 12, 20, 4, generator=generator)
    x = base.permute(0, 3, 2, 1)  # (2, 4, 20, 12), non-contiguous
    rois = random_boxes(generator, 20, 20, 12, 2)
    close(roi_align(x, rois, 3, 1.0, 2), reference.roi_align(x.contiguous(), rois, 3, 1.0, 2))
    cl = x.contiguous(memory_format=torch.channels_last)
    close(roi_align(cl, rois, 3, 1.0, 2), reference.roi_align(x.contiguous(), rois, 3, 1.0, 2))
    grad = torch.randn(20, 4, 3, 3, generator=generator).transpose(2, 3)  # non-contiguous grad
    xg = x.detach().requires_grad_()
    xr = x.detach().contiguous().requires_grad_()
    roi_align(xg, rois, 3, 1.0, 2).backward(grad)
    reference.roi_align(xr, rois, 3, 1.0, 2).backward(grad)
    close(xg.grad, xr.grad)


@needs_kernel
@pytest.mark.multilevel_roi_align
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels", [5, 53, 101])
def test_channels_last_forward_in_every_channel_block(generator, dtype, channels):
    """The NHWC forward sums blocks of channels in registers: two register pairs at a time, then one
    pair, then the channels left over one by one (a pair is 32 channels for float sums, 16 for
    double; bf16 pairs hold the even and the odd channels). 5, 53 and 101 channels reach every
    path in every dtype; both ops agree with the reference computed in float64."""
    levels = random_pyramid(generator, channels=channels)
    rois = random_boxes(generator, 30, 32, 48, 2)
    arranged = [level.to(dtype).contiguous(memory_format=torch.channels_last) for level in levels]
    exact = [level.to(dtype).double() for level in levels]
    assert_close_in_dtype(roi_align(arranged[0], rois, 3, 1.0, 2, True),
                          reference.roi_align(exact[0], rois.double(), 3, 1.0, 2, True), dtype)
    assert_close_in_dtype(multilevel_roi_align(arranged, rois, 3, SCALES, 2, False, 32, 3),
                          reference.multilevel_roi_align(exact, rois.double(), 3, SCALES, 2, False, 32, 3), dtype)


@needs_kernel
@pytest.mark.multilevel_roi_align
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("channels", [4, 70])
def test_gradients_have_the_inputs_layout(generator, layout, channels):
    """A map's gradient comes in the map's layout (autograd adds it to the other consumers'
    gradients, which the convolutions give channels_last on the CPU), with the reference's values.
    torch.autograd.grad hands over the op's own gradients: a leaf's .grad would be re-laid out.
    70 channels: two of the CPU's 32-channel NHWC blocks and a part one."""
    levels = random_pyramid(generator, channels=channels)
    rois = random_boxes(generator, 40, 32, 48, 2)
    arranged = [level.contiguous(memory_format=layout).requires_grad_() for level in levels]
    expected_levels = [level.clone().requires_grad_() for level in levels]
    grad = torch.randn(40, channels, 3, 3, generator=generator)
    cases = [
        (lambda ls: [roi_align(ls[0], rois, 3, 1.0, 2)], lambda ls: [reference.roi_align(ls[0], rois, 3, 1.0, 2)], 1),
        (lambda ls: [multilevel_roi_align(ls, rois, 3, SCALES, 2, False, 32, 3)],
         lambda ls: [reference.multilevel_roi_align(ls, rois, 3, SCALES, 2, False, 32, 3)], len(levels)),
    ]
    for ours, theirs, used in cases:
        got = torch.autograd.grad(ours(arranged), arranged[:used], grad)
        want = torch.autograd.grad(theirs(expected_levels), expected_levels[:used], grad)
        for g, w in zip(got, want):
            assert g.is_contiguous(memory_format=layout)
            close(g, w)


@needs_kernel
def test_box_list_format(generator):
    x = torch.randn(3, 2, 10, 10, generator=generator)
    boxes = [random_boxes(generator, n, 10, 10, 1)[:, 1:] for n in (4, 0, 5)]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    close(roi_align(x, boxes, 2, 1.0, 2), roi_align(x, rois, 2, 1.0, 2), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


@pytest.mark.usefixtures("single_thread")
@examples(1.0)
@given(
    data=st.data(),
    seed=seeds,
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    output_size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    spatial_scale=st.sampled_from((1.0, 0.5, 0.25, 0.125, 0.3)),
    sampling_ratio=st.integers(-1, 3),
    aligned=st.booleans(),
    dtype=float_dtypes,
    layout=layouts,
)
def test_drawn_inputs_match_reference(
    data, seed, batch, channels, size, output_size, spatial_scale, sampling_ratio, aligned, dtype, layout
):
    g = torch.Generator().manual_seed(seed)
    boxes = data.draw(boxes_on(size[0] / spatial_scale, size[1] / spatial_scale))
    rois = rois_of(g, boxes, batch).to(dtype if dtype != torch.bfloat16 else torch.float32)
    x = uniform(g, (batch, channels, *size), dtype)
    grad = uniform(g, (rois.shape[0], channels, *output_size), dtype)
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    expected_x = x.clone().requires_grad_()
    expected = reference.roi_align(expected_x, rois, *args)
    expected.backward(grad)
    got_x = arrange(x, layout).requires_grad_()
    out = ops.roi_align(got_x, rois, *args)
    out.backward(grad)
    assert_matches([out], [expected], [got_x], [expected_x], dtype)


# ------------------------------------------------------------------------------------------------
# Against torchvision


@needs_kernel
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_matches_torchvision(generator, aligned, sampling_ratio):
    tv = pytest.importorskip("torchvision")
    x = torch.randn(2, 5, 25, 30, generator=generator, requires_grad=True)
    rois = random_boxes(generator, 64, 100, 120, 2)
    out = roi_align(x, rois, (7, 6), 0.25, sampling_ratio, aligned)
    expected = tv.ops.roi_align(x, rois, (7, 6), 0.25, sampling_ratio, aligned)
    close_with_grads(out, expected, [x], generator)


# ------------------------------------------------------------------------------------------------
# Empty, degenerate and outside boxes


@pytest.mark.multilevel_roi_align
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_empty_boxes(impl):
    if impl == "kernel" and not HAS_KERNEL:
        pytest.skip("sfpn._C is not built")
    single = roi_align if impl == "kernel" else reference.roi_align
    multi = multilevel_roi_align if impl == "kernel" else reference.multilevel_roi_align
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = single(x, torch.zeros(0, 5), (2, 3), 1.0, 2)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    levels = [torch.randn(2, 3, 16 >> i, 16 >> i, requires_grad=True) for i in range(3)]
    out = multi(levels, [torch.zeros(0, 4), torch.zeros(0, 4)], 4, SCALES)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert all(torch.equal(level.grad, torch.zeros_like(level)) for level in levels)


@needs_kernel
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_boxes_outside_and_degenerate(generator, layout):
    """Values and gradients against the reference: the backward kernels turn each RoI's taps
    around per pixel, and an inverted box samples right to left."""
    x = torch.randn(1, 2, 6, 7, generator=generator).contiguous(memory_format=layout).requires_grad_()
    rois = torch.tensor(
        [
            [0, 100, 100, 120, 130],  # wholly outside: zeros
            [0, -50, -50, -20, -10],  # wholly outside on the other side
            [0, -3, -2, 4, 3],  # partly outside
            [0, 3, 3, 3, 3],  # a point
            [0, 5, 4, 2, 1],  # inverted
            [0, 6.5, 5.5, 8, 9],  # straddling the far edge
        ],
        dtype=torch.float32,
    )
    for aligned in (False, True):
        for sampling_ratio in (2, -1):
            out = roi_align(x, rois, 3, 1.0, sampling_ratio, aligned)
            close_with_grads(out, reference.roi_align(x, rois, 3, 1.0, sampling_ratio, aligned), [x], generator)
            assert torch.isfinite(out).all()
            assert torch.equal(out[:2], torch.zeros_like(out[:2]))


# ------------------------------------------------------------------------------------------------
# Autograd, opcheck, determinism


@pytest.mark.multilevel_roi_align
@needs_kernel
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gradcheck(generator, aligned, layout):
    x = torch.randn(2, 2, 5, 6, generator=generator, dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_()
    rois = random_boxes(generator, 5, 5, 6, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 1.0, -1, aligned), (x,))
    levels = [lv.contiguous(memory_format=layout).requires_grad_()
              for lv in random_pyramid(generator, 1, 2, (8, 8), 2, torch.float64)]
    big = random_boxes(generator, 6, 32, 32, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: multilevel_roi_align([a, b], big, 2, [1 / 4, 1 / 8], 2, aligned, 8, 3), tuple(levels)
    )


@pytest.mark.multilevel_roi_align
@needs_kernel
def test_opcheck(generator):
    x = torch.randn(2, 3, 9, 10, generator=generator, requires_grad=True)
    rois = random_boxes(generator, 12, 9, 10, 2)
    torch.library.opcheck(torch.ops.sfpn.roi_align.default, (x, rois, 1.0, 3, 2, -1, True, False))
    grad = torch.randn(12, 3, 3, 2, generator=generator)
    for channels_last in (False, True):
        torch.library.opcheck(
            torch.ops.sfpn.roi_align_backward.default,
            (grad, rois, 1.0, 3, 2, 2, 3, 9, 10, -1, True, False, channels_last),
        )
    levels = [lv.requires_grad_() for lv in random_pyramid(generator, 2, 3, (16, 20), 3)]
    rois = random_boxes(generator, 12, 64, 80, 2)
    args = (levels, rois, SCALES, 2, 2, 2, False, 16.0, 3, False)
    torch.library.opcheck(torch.ops.sfpn.multilevel_roi_align.default, args)
    grad = torch.randn(12, 3, 2, 2, generator=generator)
    for channels_last in (False, True):
        torch.library.opcheck(
            torch.ops.sfpn.multilevel_roi_align_backward.default,
            (grad, rois, SCALES, 2, 3, [16, 8, 4], [20, 10, 5], 2, False, 16.0, 3, False, channels_last),
        )


@needs_kernel
@pytest.mark.multilevel_roi_align
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cpu_backward_bits_do_not_depend_on_threads(generator, layout):
    """Each CPU thread owns whole planes (NCHW) or blocks of 32 channels (NHWC) and visits the
    RoIs in index order: one, two or three threads give the same bits. 70 channels: three NHWC
    blocks, the last a part one."""
    levels = [lv.contiguous(memory_format=layout).requires_grad_() for lv in random_pyramid(generator, channels=70)]
    rois = random_boxes(generator, 200, 32, 48, 2)
    grad = torch.randn(200, 70, 3, 3, generator=generator)

    def gradients():
        return torch.autograd.grad(multilevel_roi_align(levels, rois, 3, SCALES, 2, False, 32, 3), levels, grad)

    first = at_thread_count(1, gradients)
    for threads in (2, 3):
        for got, want in zip(at_thread_count(threads, gradients), first):
            assert torch.equal(got, want)


@needs_kernel
def test_deterministic_backward_matches_default(generator):
    x = torch.randn(2, 3, 12, 12, generator=generator, requires_grad=True)
    rois = random_boxes(generator, 50, 12, 12, 2)
    grad = torch.randn(50, 3, 4, 4, generator=generator)
    default = torch.autograd.grad(roi_align(x, rois, 4, 1.0, 2), x, grad)[0]
    forced = torch.autograd.grad(roi_align(x, rois, 4, 1.0, 2, deterministic=True), x, grad)[0]
    torch.use_deterministic_algorithms(True)
    try:
        global_flag = torch.autograd.grad(roi_align(x, rois, 4, 1.0, 2), x, grad)[0]
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(default, forced) and torch.equal(default, global_flag)


# ------------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda x: (x, torch.tensor([[2.0, 0, 0, 1, 1]]), 2), ValueError, "batch indices"),
        (lambda x: (x, torch.tensor([[-1.0, 0, 0, 1, 1]]), 2), ValueError, "batch indices"),
        (lambda x: (x, torch.tensor([[0.0, 0, float("nan"), 1, 1]]), 2), ValueError, "finite"),
        (lambda x: (x, torch.tensor([[0.0, 0, 0, float("inf"), 1]]), 2), ValueError, "finite"),
        (lambda x: (x, torch.zeros(3, 4), 2), ValueError, r"\(K, 5\)"),
        (lambda x: (x, [torch.zeros(3, 5)], 2), ValueError, r"boxes\[0\]"),
        (lambda x: (x, [torch.zeros(1, 4)] * 3, 2), ValueError, "3 entries"),
        (lambda x: (x, torch.zeros(3, 5, dtype=torch.long), 2), TypeError, "boxes"),
        (lambda x: (x, "boxes", 2), TypeError, "boxes"),
        (lambda x: (x, torch.zeros(1, 5), 0), ValueError, "output_size"),
        (lambda x: (x, torch.zeros(1, 5), (2, 2, 2)), ValueError, "output_size"),
        (lambda x: (x[0], torch.zeros(1, 5), 2), ValueError, "input"),
        (lambda x: (x.long(), torch.zeros(1, 5), 2), TypeError, "input"),
        (lambda x: (x, torch.zeros(1, 5), 2, -1.0), ValueError, "spatial_scale"),
    ],
)
def test_bad_inputs(make_args, error, match):
    x = torch.randn(2, 3, 8, 8)
    for fn in (roi_align, reference.roi_align) if HAS_KERNEL else (roi_align,):
        if fn is reference.roi_align and match in ("batch indices", "finite", "spatial_scale"):
            continue  # the reference trusts its caller for data-dependent checks
        with pytest.raises(error, match=match):
            fn(*make_args(x))


@pytest.mark.usefixtures("single_thread")
def test_roi_checks_trace_into_the_graph():
    """The box checks run on the device (no .item()): traced, they still reject bad boxes."""
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(lambda x, rois: ops.roi_align(x, rois, 2), fullgraph=True, backend="aot_eager")
    torch._dynamo.reset()
    compiled(x, torch.tensor([[1.0, 0, 0, 4, 4]]))
    for bad in ([[2.0, 0, 0, 4, 4]], [[0.0, 0, float("nan"), 4, 4]]):
        with pytest.raises(RuntimeError, match="batch indices|finite"):
            compiled(x, torch.tensor(bad))


# ------------------------------------------------------------------------------------------------
# Modules


@pytest.mark.multilevel_roi_align
def test_modules(generator):
    x = torch.randn(2, 3, 8, 8, generator=generator)
    rois = random_boxes(generator, 5, 16, 16, 2)
    module = RoIAlign(3, 0.5, 2, aligned=True)
    close(module(x, rois), roi_align(x, rois, 3, 0.5, 2, True), rtol=0, atol=0)
    assert "aligned=True" in repr(module)
    pooler = MultiLevelRoIAlign(["a"], 2, 2)
    with pytest.raises(ValueError, match="none of the feature maps"):
        pooler({"b": x}, [rois[:, 1:]], [(16, 16)])
    with pytest.raises(ValueError, match="image_shapes"):
        pooler({"a": x}, [rois[:, 1:]], [])


# ------------------------------------------------------------------------------------------------
# Without the compiled extension


@pytest.mark.multilevel_roi_align
def test_reference_fallback_in_subprocess():
    """With SFPN_DISABLE_EXTENSION=1 the public ops run the reference and agree with the kernel."""
    code = (
        "import torch, sfpn.ops as ops, sfpn._extension as e;"
        "assert not e.STATUS.loaded;"
        "g = torch.Generator().manual_seed(0);"
        "x = torch.randn(2, 3, 10, 12, generator=g);"
        "r = torch.tensor([[0, 1., 1, 8, 9], [1, -2, 3, 5, 20]]);"
        "print(ops.roi_align(x, r, 3, 1.0, -1, True).sum().item());"
        "print(ops.multilevel_roi_align([x, x[..., ::2, ::2]], r, 2, [1, 0.5], 2).sum().item())"
    )
    env = dict(os.environ, SFPN_DISABLE_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    single, multi = map(float, result.stdout.split())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 12, generator=g)
    r = torch.tensor([[0, 1.0, 1, 8, 9], [1, -2, 3, 5, 20]])
    assert single == pytest.approx(roi_align(x, r, 3, 1.0, -1, True).sum().item(), rel=1e-5, abs=1e-5)
    ml = multilevel_roi_align([x, x[..., ::2, ::2]], r, 2, [1, 0.5], 2)
    assert multi == pytest.approx(ml.sum().item(), rel=1e-5, abs=1e-5)


# ------------------------------------------------------------------------------------------------
# CUDA kernels on the CPU (emulation)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES)
def test_emulated_forward(emulated, generator, sampling_ratio, aligned):
    input = torch.randn(2, 3, 13, 17, generator=generator)
    rois = random_rois(generator, 24, 2, 26, 34)
    out = run(emulated, "roi_align", input, rois, 0.5, 5, 4, sampling_ratio, aligned, False)
    assert_close(out, reference.roi_align(input, rois, (5, 4), 0.5, sampling_ratio, aligned))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("channels_last", [False, True], ids=["planar", "channels_last"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES)
def test_emulated_backward(emulated, generator, sampling_ratio, aligned, deterministic, channels_last):
    input = torch.randn(2, 3, 13, 17, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(generator, 24, 2, 26, 34).double()
    grad = torch.randn(24, 3, 5, 4, generator=generator, dtype=torch.float64)
    reference.roi_align(input, rois, (5, 4), 0.5, sampling_ratio, aligned).backward(grad)
    grad_input = run(emulated, "roi_align_backward", grad, rois, 0.5, 5, 4, 2, 3, 13, 17, sampling_ratio, aligned,
                     deterministic, channels_last)
    assert grad_input.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(grad_input, input.grad, torch.float64)


@pytest.mark.usefixtures("single_thread")
def test_emulated_deterministic_backward_is_bit_identical(emulated, generator):
    """The same bits under every seed (block and thread order) and on every run."""
    rois = random_rois(generator, 40, 2, 26, 34, max_size=12.0)  # small RoIs: many shared pixels
    grad = torch.randn(40, 3, 5, 4, generator=generator)
    results = [
        run(emulated, "roi_align_backward", grad, rois, 0.5, 5, 4, 2, 3, 13, 17, -1, True, True, False, seed=seed)
        for seed in SEEDS + SEEDS[:1]
    ]
    for result in results[1:]:
        assert torch.equal(result, results[0])


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("op", ["forward", "atomic", "deterministic"])
@pytest.mark.parametrize("bad,message", [
    ((0, 2.0), "batch index lies outside"),
    ((0, -1.0), "batch index lies outside"),
    ((3, float("nan")), "non-finite coordinate"),
    ((4, float("inf")), "non-finite coordinate"),
])
def test_emulated_kernels_assert_valid_rois(emulated, generator, op, bad, message):
    """Bad RoIs fail a device-side assertion (no host sync), which names the kernel."""
    input = torch.randn(2, 3, 13, 17, generator=generator)
    rois = random_rois(generator, 8, 2, 26, 34)
    rois[5, bad[0]] = bad[1]
    if op == "forward":
        call, kernel = ("roi_align", input, rois, 0.5, 5, 4, 2, True, False), "forward_kernel"
    else:
        grad = torch.randn(8, 3, 5, 4, generator=generator)
        kernel = "count_taps_kernel" if op == "deterministic" else "backward_atomic_kernel"
        call = ("roi_align_backward", grad, rois, 0.5, 5, 4, 2, 3, 13, 17, 2, True, op == "deterministic", False)
    with pytest.raises(RuntimeError, match=f"{kernel}.*{message}"):
        run(emulated, *call)


# ------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_cuda_matches_cpu(generator, aligned, sampling_ratio):
    x = torch.randn(2, 8, 30, 40, generator=generator)
    rois = random_boxes(generator, 200, 60, 80, 2)
    grad = torch.randn(200, 8, 7, 7, generator=generator)
    xc = x.clone().requires_grad_()
    xg = x.cuda().requires_grad_()
    out_c = roi_align(xc, rois, 7, 0.5, sampling_ratio, aligned)
    out_g = roi_align(xg, rois.cuda(), 7, 0.5, sampling_ratio, aligned)
    close(out_g.cpu(), out_c)
    out_c.backward(grad)
    out_g.backward(grad.cuda())
    close(xg.grad.cpu(), xc.grad)


@pytest.mark.multilevel_roi_align
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_deterministic_backward(generator, dtype):
    x = torch.randn(2, 16, 40, 50, generator=generator).cuda().to(dtype).requires_grad_()
    rois = random_boxes(generator, 500, 40, 50, 2).cuda()  # heavily overlapping boxes
    grad = torch.randn(500, 16, 7, 7, generator=generator).cuda().to(dtype)
    out = roi_align(x, rois, 7, 1.0, 2)
    atomic = torch.autograd.grad(out, x, grad, retain_graph=True)[0]
    det1 = torch.autograd.grad(roi_align(x, rois, 7, 1.0, 2, deterministic=True), x, grad)[0]
    det2 = torch.autograd.grad(roi_align(x, rois, 7, 1.0, 2, deterministic=True), x, grad)[0]
    assert torch.equal(det1, det2)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    close(det1.float(), atomic.float(), rtol=tol, atol=tol)
    levels = [lv.cuda().requires_grad_() for lv in random_pyramid(generator, 2, 8, (64, 96), 4)]
    big = random_boxes(generator, 300, 256, 384, 2).cuda()
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    out = multilevel_roi_align(levels, big, 7, scales, 2, False, 64, 3)
    g = torch.randn_like(out)
    atomic = torch.autograd.grad(out, levels, g)
    det = torch.autograd.grad(multilevel_roi_align(levels, big, 7, scales, 2, False, 64, 3, deterministic=True),
                              levels, g)
    for a, d in zip(atomic, det):
        close(d, a)


@pytest.mark.cuda
def test_cuda_empty_and_opcheck(generator):
    x = torch.randn(2, 3, 9, 10, generator=generator).cuda().requires_grad_()
    out = roi_align(x, torch.zeros(0, 5, device="cuda"), 3)
    assert out.shape == (0, 3, 3, 3)
    rois = random_boxes(generator, 12, 9, 10, 2).cuda()
    torch.library.opcheck(torch.ops.sfpn.roi_align.default, (x, rois, 1.0, 3, 2, -1, True, False))
    torch.library.opcheck(torch.ops.sfpn.roi_align.default, (x, rois, 1.0, 3, 2, -1, True, True))
