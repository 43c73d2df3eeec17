"""multilevel_roi_align: the C++ kernel against the pure-PyTorch reference and per-level
roi_align, drawn inputs, torchvision's MultiScaleRoIAlign and level mapping, argument checks,
the CUDA kernels on the CPU (emulation) and on a GPU. tests/ops/test_roi_align.py has the
tests that run both ops (marked multilevel_roi_align too)."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import MultiLevelRoIAlign, multilevel_roi_align, reference, roi_align
from sfpn.ops.multilevel_roi_align import map_levels_reference

from cuda_emulation import assert_close, run
from op_strategies import arrange, assert_matches, boxes_on, examples, float_dtypes, layouts, rois_of, seeds, uniform
from roi_helpers import (
    ROI_CASES,
    SCALES,
    close,
    close_with_grads,
    needs_kernel,
    random_boxes,
    random_pyramid,
    random_rois,
)

pytestmark = pytest.mark.multilevel_roi_align


# ------------------------------------------------------------------------------------------------
# Against the reference


@needs_kernel
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_kernel_matches_reference(generator, aligned, sampling_ratio):
    levels = [level.requires_grad_() for level in random_pyramid(generator)]
    rois = random_boxes(generator, 60, 128, 192, 2)
    out = multilevel_roi_align(levels, rois, 5, SCALES, sampling_ratio, aligned, canonical_scale=32, canonical_level=3)
    expected = reference.multilevel_roi_align(levels, rois, 5, SCALES, sampling_ratio, aligned, 32, 3)
    close_with_grads(out, expected, levels, generator)


@needs_kernel
def test_equals_single_level_per_level(generator):
    levels = random_pyramid(generator)
    rois = random_boxes(generator, 80, 128, 192, 2)
    out = multilevel_roi_align(levels, rois, (4, 6), SCALES, 2, True, canonical_scale=32, canonical_level=3)
    level_of = map_levels_reference(rois[:, 1:], SCALES, 32, 3)
    assert set(level_of.tolist()) == {0, 1, 2}, "the boxes should exercise every level"
    for i, (level, scale) in enumerate(zip(levels, SCALES)):
        index = torch.nonzero(level_of == i).flatten()
        close(out[index], roi_align(level, rois[index], (4, 6), scale, 2, True), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


@pytest.mark.usefixtures("single_thread")
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
def test_drawn_inputs_match_reference(
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


# ------------------------------------------------------------------------------------------------
# Against torchvision


@needs_kernel
def test_module_matches_torchvision_multiscale(generator):
    tv = pytest.importorskip("torchvision")
    features = {
        "p2": torch.randn(2, 4, 64, 80, generator=generator, requires_grad=True),
        "skipped": torch.randn(2, 4, 9, 9, generator=generator),
        "p3": torch.randn(2, 4, 32, 40, generator=generator, requires_grad=True),
        "p4": torch.randn(2, 4, 16, 20, generator=generator, requires_grad=True),
        "p5": torch.randn(2, 4, 8, 10, generator=generator, requires_grad=True),
    }
    names = ["p2", "p3", "p4", "p5"]
    image_shapes = [(250, 320), (256, 300)]
    boxes = [random_boxes(generator, n, 256, 320, 1, spill=0.0)[:, 1:] for n in (50, 37)]
    # sizes spanning every level: from a few pixels to the whole image
    boxes[0][:10, 2:] = boxes[0][:10, :2] + torch.logspace(0.3, 2.4, 10).unsqueeze(1)
    ours = MultiLevelRoIAlign(names, 7, 2)(features, boxes, image_shapes)
    theirs = tv.ops.MultiScaleRoIAlign(names, 7, 2)(features, boxes, image_shapes)
    close_with_grads(ours, theirs, [features[n] for n in names], generator)


def test_module_is_a_drop_in_for_torchvision(generator):
    """Same attributes and scale rule as MultiScaleRoIAlign: scales inferred at the first call and
    kept, also when converted from a torchvision pooler that has already run."""
    tv = pytest.importorskip("torchvision")
    features = {f"p{k}": torch.randn(1, 3, 64 >> (k - 2), 48 >> (k - 2), generator=generator) for k in (2, 3, 4)}
    names = list(features)
    boxes = [random_boxes(generator, 30, 256, 192, 1, spill=0.0)[:, 1:]]
    theirs = tv.ops.MultiScaleRoIAlign(names, (3, 2), 2, canonical_scale=112, canonical_level=3)
    ours = MultiLevelRoIAlign(names, (3, 2), 2, canonical_scale=112, canonical_level=3)
    for attribute in ("featmap_names", "output_size", "sampling_ratio", "canonical_scale", "canonical_level", "scales"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    expected = theirs(features, boxes, [(256, 192)])
    close(ours(features, boxes, [(256, 192)]), expected)
    assert ours.scales == theirs.scales == [1 / 4, 1 / 8, 1 / 16]
    # Later calls keep the first call's scales (torchvision's rule), even for other image sizes.
    close(ours(features, boxes, [(512, 384)]), theirs(features, boxes, [(512, 384)]))
    converted = MultiLevelRoIAlign.from_torchvision(theirs)
    assert converted.scales == theirs.scales and converted.output_size == theirs.output_size
    close(converted(features, boxes, [(512, 384)]), expected)


def test_level_mapping_matches_torchvision(generator):
    poolers = pytest.importorskip("torchvision.ops.poolers")
    sizes = torch.cat([torch.rand(200, generator=generator) * 900, torch.tensor([0.0, 56, 112, 224, 448, 896])])
    aspect = torch.rand(sizes.shape, generator=generator) + 0.5
    boxes = torch.stack([torch.zeros_like(sizes), torch.zeros_like(sizes), sizes * aspect, sizes / aspect], 1)
    mapper = poolers.LevelMapper(2, 5, 224, 4)
    assert torch.equal(map_levels_reference(boxes, [1 / 4, 1 / 8, 1 / 16, 1 / 32]), mapper([boxes]))


# ------------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize(
    "levels, scales, match",
    [
        ([torch.randn(1, 3, 8, 8), torch.randn(1, 4, 4, 4)], [0.5, 0.25], "levels\\[1\\]"),
        ([torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4)], [0.5], "one scale per level"),
        ([torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4)], [0.5, 0.125], "consecutive"),
        ([torch.randn(1, 3, 8, 8)] * 9, [0.5] * 9, "1 to 8"),
        ([], [], "1 to 8"),
        ([torch.randn(1, 3, 8, 8)], [0.0], "scales\\[0\\]"),
    ],
)
def test_bad_levels(levels, scales, match):
    with pytest.raises(ValueError, match=match):
        multilevel_roi_align(levels, torch.zeros(0, 5), 2, scales)


# ------------------------------------------------------------------------------------------------
# CUDA kernels on the CPU (emulation)


# A 512 x 512 image: FPN levels P2..P5 and boxes of 20 to 500 pixels, so every level gets RoIs.
ML_SIZES = [(128, 128), (64, 64), (32, 32), (16, 16)]
ML_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def multilevel_inputs(generator, dtype):
    levels = [torch.randn(2, 2, *size, generator=generator, dtype=dtype) for size in ML_SIZES]
    rois = random_rois(generator, 20, 2, 512, 512, min_size=20.0, max_size=500.0).to(dtype)
    return levels, rois


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES)
def test_emulated_forward(emulated, generator, sampling_ratio, aligned):
    levels, rois = multilevel_inputs(generator, torch.float32)
    out = run(emulated, "multilevel_roi_align", levels, rois, ML_SCALES, 7, 7, sampling_ratio, aligned, 224.0, 4,
              False)
    expected = reference.multilevel_roi_align(levels, rois, (7, 7), ML_SCALES, sampling_ratio, aligned)
    assert_close(out, expected)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("channels_last", [False, True], ids=["planar", "channels_last"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES[:2])
def test_emulated_backward(emulated, generator, sampling_ratio, aligned, deterministic, channels_last):
    levels, rois = multilevel_inputs(generator, torch.float64)
    for level in levels:
        level.requires_grad_(True)
    grad = torch.randn(20, 2, 7, 7, generator=generator, dtype=torch.float64)
    reference.multilevel_roi_align(levels, rois, (7, 7), ML_SCALES, sampling_ratio, aligned).backward(grad)
    heights, widths = [h for h, _ in ML_SIZES], [w for _, w in ML_SIZES]
    grads = run(emulated, "multilevel_roi_align_backward", grad, rois, ML_SCALES, 2, 2, heights, widths,
                sampling_ratio, aligned, 224.0, 4, deterministic, channels_last)
    for out, level in zip(grads, levels):
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert_close(out, level.grad, torch.float64)


# ------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
def test_cuda_matches_cpu(generator):
    levels = random_pyramid(generator, 2, 8, (64, 96), 4)
    rois = random_boxes(generator, 300, 256, 384, 2)
    out_c = multilevel_roi_align(levels, rois, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, False, 64, 3)
    out_g = multilevel_roi_align([lv.cuda() for lv in levels], rois.cuda(), 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2,
                                 False, 64, 3)
    # Sample coordinates reach 96 on P2 (a float32 step of 7.6e-6 there), and nvcc contracts the
    # coordinate arithmetic into FMAs where the CPU build rounds each step: a bilinear weight may
    # move by that step, times a neighbour difference of the random features (up to ~4). Seen on
    # an H200: 1 element of 117600 off by 1.1e-5.
    close(out_g.cpu(), out_c, atol=5e-5)
