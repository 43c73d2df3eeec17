"""Property-based tests: every op against its pure-PyTorch reference (``sfpn.ops.reference``) on
inputs drawn by hypothesis: random shapes, dtypes, memory layouts (contiguous, channels_last,
transposed and strided views), scales, degenerate and extreme boxes, huge and negative class ids,
tied scores, empty inputs.

Example counts come from the hypothesis profile (tests/conftest.py): ``ci`` by default, bounded
so that this module fits in CI's time; ``--hypothesis-profile=long`` for a thorough local run.
Each test scales the profile's count by its cost (``examples(...)``).
"""
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import reference

pytestmark = pytest.mark.usefixtures("single_thread")

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (rtol, atol) against the reference: fp32/fp64 tight, half types at their precision.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}
LAYOUTS = ("contiguous", "channels_last", "transposed", "strided")


def examples(fraction: float):
    """This test's share of the profile's max_examples (at least 2)."""
    return settings(max_examples=max(2, round(settings.default.max_examples * fraction)))


def arrange(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A fresh leaf with ``t``'s values in the given memory layout (channels_last: 4-D tensors)."""
    t = t.detach()
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # column-major planes
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":  # every other element of a wider buffer
        wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def uniform(generator, shape, dtype, low=-1.0, high=1.0):
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low).to(dtype)


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def assert_matches(outputs, expected, inputs, expected_inputs, dtype):
    """Each output (of ``dtype``) and each input's gradient agrees with the reference's."""
    for out, want in zip(outputs, expected, strict=True):
        assert out.dtype == dtype and out.shape == want.shape
        assert_close(out, want, dtype)
    for got, want in zip(inputs, expected_inputs, strict=True):
        assert_close(got.grad, want.grad, dtype)


seeds = st.integers(0, 2**32 - 1)
float_dtypes = st.sampled_from(FLOAT_DTYPES)
layouts = st.sampled_from(LAYOUTS)
sizes = st.tuples(st.integers(1, 9), st.integers(1, 9))


@st.composite
def resize_modes(draw):
    """(mode, align_corners) as the public ops take them."""
    mode = draw(st.sampled_from(("nearest", "bilinear")))
    return mode, (draw(st.booleans()) if mode == "bilinear" else None)


# ---------------------------------------------------------------------------------------------
# upsample_add, semantic_fuse


@examples(1.0)
@given(
    seed=seeds,
    batch=st.integers(1, 2),
    channels=st.integers(1, 4),
    top_size=sizes,
    lateral_size=st.tuples(st.integers(1, 17), st.integers(1, 17)),
    resize=resize_modes(),
    dtype=float_dtypes,
    layout=layouts,
)
def test_upsample_add_matches_reference(seed, batch, channels, top_size, lateral_size, resize, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    mode, align_corners = resize
    top = uniform(g, (batch, channels, *top_size), dtype)
    lateral = uniform(g, (batch, channels, *lateral_size), dtype)
    grad = uniform(g, lateral.shape, dtype)
    # The reference computes in the inputs' dtype; half types are compared to it in float32.
    exact = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    expected_inputs = [t.to(exact, copy=True).requires_grad_() for t in (top, lateral)]
    expected = reference.upsample_add(*expected_inputs, mode, align_corners)
    expected.backward(grad.to(exact))
    inputs = [arrange(t, layout).requires_grad_() for t in (top, lateral)]
    out = ops.upsample_add(*inputs, mode, align_corners)
    out.backward(arrange(grad, layout))
    assert_matches([out], [expected], inputs, expected_inputs, dtype)


@examples(0.75)
@given(
    seed=seeds,
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    level_sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=5),
    semantic_size=sizes,
    resize=resize_modes(),
    dtype=float_dtypes,
    layout=layouts,
)
def test_semantic_fuse_matches_reference(seed, batch, channels, level_sizes, semantic_size, resize, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    mode, align_corners = resize
    levels = [uniform(g, (batch, channels, *s), dtype) for s in level_sizes]
    semantic = uniform(g, (batch, channels, *semantic_size), dtype)
    grads = [uniform(g, level.shape, dtype) for level in levels]
    exact = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    expected_levels = [level.to(exact, copy=True).requires_grad_() for level in levels]
    expected_semantic = semantic.to(exact, copy=True).requires_grad_()
    expected = reference.semantic_fuse(expected_levels, expected_semantic, mode, align_corners)
    torch.autograd.backward(expected, [grad.to(exact) for grad in grads])
    got_levels = [arrange(level, layout).requires_grad_() for level in levels]
    got_semantic = arrange(semantic, layout).requires_grad_()
    outs = ops.semantic_fuse(got_levels, got_semantic, mode, align_corners)
    torch.autograd.backward(outs, [arrange(grad, layout) for grad in grads])
    assert_matches(outs, expected, [got_semantic, *got_levels], [expected_semantic, *expected_levels], dtype)


# ---------------------------------------------------------------------------------------------
# roi_align, multilevel_roi_align


@st.composite
def boxes_on(draw, image_height: float, image_width: float, max_count: int = 6):
    """(K, 4) boxes [x1, y1, x2, y2] in image coordinates: ordinary ones, degenerate ones (a point,
    a line, inverted corners), sub-pixel ones and ones far outside the image."""
    boxes = []
    for _ in range(draw(st.integers(0, max_count))):
        kind = draw(st.sampled_from(("inside", "inside", "degenerate", "inverted", "subpixel", "extreme")))
        x = draw(st.floats(0, image_width, allow_nan=False))
        y = draw(st.floats(0, image_height, allow_nan=False))
        if kind == "inside":
            w = draw(st.floats(0.5, image_width, allow_nan=False))
            h = draw(st.floats(0.5, image_height, allow_nan=False))
        elif kind == "degenerate":
            w, h = draw(st.sampled_from(((0.0, 0.0), (0.0, 3.0), (3.0, 0.0))))
        elif kind == "inverted":
            w, h = -draw(st.floats(0.1, image_width)), draw(st.floats(-image_height, image_height))
        elif kind == "subpixel":
            w, h = draw(st.floats(0.01, 0.99)), draw(st.floats(0.01, 0.99))
        else:  # far outside, or covering much more than the image
            span = 8 * max(image_height, image_width)
            x, y = draw(st.floats(-span, span)), draw(st.floats(-span, span))
            w, h = draw(st.floats(0, 2 * span)), draw(st.floats(0, 2 * span))
        boxes.append([x, y, x + w, y + h])
    return torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def rois_of(generator, boxes: torch.Tensor, batch: int) -> torch.Tensor:
    """(K, 5) rois [batch_index, x1, y1, x2, y2] with random batch indices."""
    index = torch.randint(0, batch, (boxes.shape[0], 1), generator=generator, dtype=torch.int64)
    return torch.cat([index.double(), boxes], 1)


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
def test_roi_align_matches_reference(
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


@examples(0.75)
@given(
    data=st.data(),
    seed=seeds,
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    finest_level=st.integers(2, 3),
    num_levels=st.integers(1, 4),
    base_size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    output_size=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    sampling_ratio=st.integers(-1, 2),
    aligned=st.booleans(),
    canonical=st.sampled_from(((224, 4), (56, 3), (16, 2), (1000, 5))),
    dtype=float_dtypes,
    layout=layouts,
)
def test_multilevel_roi_align_matches_reference(
    data, seed, batch, channels, finest_level, num_levels, base_size, output_size, sampling_ratio, aligned,
    canonical, dtype, layout,
):
    g = torch.Generator().manual_seed(seed)
    scales = [2.0 ** -(finest_level + i) for i in range(num_levels)]
    level_sizes = [(max(1, math.ceil(base_size[0] / 2**i)), max(1, math.ceil(base_size[1] / 2**i))) for i in range(num_levels)]
    levels = [uniform(g, (batch, channels, *s), dtype) for s in level_sizes]
    boxes = data.draw(boxes_on(base_size[0] / scales[0], base_size[1] / scales[0], max_count=10))
    rois = rois_of(g, boxes, batch).to(dtype if dtype != torch.bfloat16 else torch.float32)
    grad = uniform(g, (rois.shape[0], channels, *output_size), dtype)
    args = (output_size, scales, sampling_ratio, aligned, *canonical)
    expected_levels = [level.clone().requires_grad_() for level in levels]
    expected = reference.multilevel_roi_align(expected_levels, rois, *args)
    expected.backward(grad)
    got_levels = [arrange(level, layout).requires_grad_() for level in levels]
    out = ops.multilevel_roi_align(got_levels, rois, *args)
    out.backward(grad)
    assert_matches([out], [expected], got_levels, expected_levels, dtype)


# ---------------------------------------------------------------------------------------------
# nms, batched_nms, batched_nms_padded

class_ids = st.one_of(
    st.lists(st.integers(0, 3), min_size=1, max_size=4),  # a few dense labels
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6),  # anywhere in int64
    st.lists(st.sampled_from((-(2**63), -(2**63) + 1, -1, 0, 2**62, 2**63 - 1)), min_size=1, max_size=6),
)


@st.composite
def nms_inputs(draw):
    """(boxes (N, 4), scores (N,), idxs (N,), iou_threshold, dtype, layout) with overlapping
    clusters, exact duplicates, degenerate boxes and tied scores."""
    seed = draw(seeds)
    n = draw(st.integers(0, 60))
    dtype = draw(float_dtypes)
    g = torch.Generator().manual_seed(seed)
    centres = uniform(g, (draw(st.integers(1, 4)), 2), torch.float64, 0, 40)
    xy = centres[torch.randint(0, centres.shape[0], (n,), generator=g)] + uniform(g, (n, 2), torch.float64, -3, 3)
    wh = uniform(g, (n, 2), torch.float64, 0, 12)
    wh[torch.rand(n, generator=g) < 0.1] = 0  # degenerate boxes
    boxes = torch.cat([xy, xy + wh], 1)
    duplicates = torch.rand(n, generator=g) < 0.1
    if n > 1:
        boxes[duplicates] = boxes[0].clone()
    tie_levels = draw(st.sampled_from((2, 5, 1000)))  # few distinct scores: many ties
    scores = torch.randint(0, tie_levels, (n,), generator=g).double() / tie_levels
    palette = draw(class_ids)
    idxs = torch.tensor(palette, dtype=torch.int64)[torch.randint(0, len(palette), (n,), generator=g)]
    threshold = draw(st.one_of(st.sampled_from((0.0, 0.5, 1.0)), st.floats(0, 1)))
    layout = draw(st.sampled_from(("contiguous", "strided")))
    return boxes.to(dtype), scores.to(dtype), idxs, threshold, dtype, layout


@examples(1.0)
@given(inputs=nms_inputs())
def test_nms_matches_reference(inputs):
    boxes, scores, idxs, threshold, _, layout = inputs
    expected = reference.nms(boxes, scores, threshold)
    assert torch.equal(ops.nms(arrange(boxes, layout), arrange(scores, layout), threshold), expected)


@examples(1.0)
@given(inputs=nms_inputs(), max_out=st.integers(0, 70))
def test_batched_nms_matches_reference(inputs, max_out):
    boxes, scores, idxs, threshold, _, layout = inputs
    boxes, scores, idxs = arrange(boxes, layout), arrange(scores, layout), arrange(idxs, layout)
    expected = reference.batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold), expected)
    indices, count = ops.batched_nms_padded(boxes, scores, idxs, threshold, max_out)
    expected_indices, expected_count = reference.batched_nms_padded(boxes, scores, idxs, threshold, max_out)
    assert torch.equal(indices, expected_indices) and int(count) == int(expected_count)


# ---------------------------------------------------------------------------------------------
# The semantic head's Triton ops, on the `device` fixture (the Triton interpreter on a CPU), so
# few small examples.

TRITON_DTYPES = (torch.float32, torch.bfloat16)


@examples(0.1)
@given(
    seed=seeds,
    channels=st.integers(1, 4),
    level_sizes=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 10)), min_size=1, max_size=4),
    size=st.tuples(st.integers(1, 10), st.integers(1, 10)),
    dtype=st.sampled_from(TRITON_DTYPES),
    layout=layouts,
)
def test_resize_sum_matches_reference(device, seed, channels, level_sizes, size, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    levels = [uniform(g, (2, channels, *s), dtype) for s in level_sizes]
    grad = uniform(g, (2, channels, *size), dtype)
    expected_levels = [level.float().requires_grad_() for level in levels]
    expected = reference.resize_sum(expected_levels, size)
    expected.backward(grad.float())
    got_levels = [arrange(level, layout).to(device).requires_grad_() for level in levels]
    out = ops.resize_sum(got_levels, size)
    out.backward(grad.to(device))
    assert_matches([out], [expected], got_levels, expected_levels, dtype)


@examples(0.1)
@given(
    seed=seeds,
    batch=st.integers(1, 2),
    groups_and_width=st.tuples(st.integers(1, 4), st.integers(1, 3)),
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    eps=st.sampled_from((1e-5, 1e-3)),
    dtype=st.sampled_from(TRITON_DTYPES),
    layout=layouts,
)
def test_group_norm_relu_matches_reference(device, seed, batch, groups_and_width, size, eps, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    groups, width = groups_and_width
    assume(width * size[0] * size[1] > 1)  # F.group_norm, the reference, needs two values per group
    channels = groups * width
    x = uniform(g, (batch, channels, *size), dtype, -3, 3)
    weight, bias = uniform(g, (channels,), torch.float32), uniform(g, (channels,), torch.float32)
    grad = uniform(g, x.shape, dtype)
    expected_args = [t.clone().requires_grad_() for t in (x, weight, bias)]
    expected = reference.group_norm_relu(expected_args[0], groups, *expected_args[1:], eps)
    expected.backward(grad)
    got_args = [arrange(x, layout).to(device).requires_grad_()] + [t.to(device).requires_grad_() for t in (weight, bias)]
    out = ops.group_norm_relu(got_args[0], groups, *got_args[1:], eps)
    out.backward(grad.to(device))
    assert_matches([out], [expected], [], [], dtype)
    # Gradients of a normalisation amplify rounding: half types get a looser bound there.
    for got, want in zip(got_args, expected_args):
        if dtype == torch.float32:
            assert_close(got.grad, want.grad, dtype)
        else:
            torch.testing.assert_close(got.grad.double().cpu(), want.grad.double(), rtol=5e-2, atol=5e-2)


@examples(0.1)
@given(
    seed=seeds,
    batch=st.integers(1, 2),
    classes=st.integers(1, 40),
    size=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    upsample=st.booleans(),
    reduction=st.sampled_from(("mean", "sum")),
    label_smoothing=st.sampled_from((0.0, 0.1)),
    ignored=st.sampled_from((0.0, 0.3, 1.0)),
    dtype=st.sampled_from(TRITON_DTYPES),
    layout=layouts,
)
def test_cross_entropy_matches_reference(
    device, seed, batch, classes, size, upsample, reduction, label_smoothing, ignored, dtype, layout
):
    g = torch.Generator().manual_seed(seed)
    logits = uniform(g, (batch, classes, *size), dtype, -4, 4)
    label_size = (2 * size[0] + 1, 2 * size[1]) if upsample else size
    labels = torch.randint(0, classes, (batch, *label_size), generator=g)
    labels[torch.rand(labels.shape, generator=g) < ignored] = 255
    op, ref = (
        (ops.upsample_cross_entropy, reference.upsample_cross_entropy)
        if upsample
        else (ops.semantic_cross_entropy, reference.semantic_cross_entropy)
    )
    expected_logits = logits.clone().requires_grad_()
    expected = ref(expected_logits, labels, 255, reduction, label_smoothing)
    got_logits = arrange(logits, layout).to(device).requires_grad_()
    out = op(got_logits, labels.to(device), 255, reduction, label_smoothing)
    if expected.isnan():  # every label ignored with the mean: 0 / 0, as F.cross_entropy
        assert out.isnan()
        return
    expected.backward()
    out.backward()
    assert_close(out, expected, torch.float32)
    assert_close(got_logits.grad, expected_logits.grad, dtype)
