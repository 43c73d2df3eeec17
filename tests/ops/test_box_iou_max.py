"""box_iou_max: the C++ CPU kernel (csrc/cpu/box_iou_max.cpp) against the reference (box_iou and its
reductions), bit for bit: random boxes of every size class, ties (duplicate boxes, a regular
anchor grid), degenerate boxes, partial and several blocks, thread counts, drawn inputs; empty
inputs, opcheck, argument checks, non-finite coordinates."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import _library
from sfpn.ops.box_iou_max import box_iou, box_iou_max_reference

from op_helpers import assert_same_bits_at_thread_counts
from op_strategies import arrange, examples, seeds, uniform

pytestmark = pytest.mark.box_iou_max

needs_cpu_kernel = pytest.mark.skipif(_library.serving("box_iou_max", "cpu") != "C++", reason="sfpn._C not built")


def random_boxes(generator, count, dtype=torch.float32, extent=300.0):
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent
    size = 1 + torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent / 3
    return torch.cat([corner, corner + size], 1).to(dtype)


def anchor_grid(stride=8, sizes=(16.0, 32.0), ratios=(0.5, 1.0, 2.0), cells=(12, 10)):
    """Anchors as an RPN lays them out: equal shapes at every cell, so many IoUs tie."""
    shapes = torch.tensor([[s * r**-0.5, s * r**0.5] for s in sizes for r in ratios])
    ys, xs = torch.meshgrid(torch.arange(cells[0]) * stride + stride / 2, torch.arange(cells[1]) * stride + stride / 2,
                            indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    return torch.cat([centres - shapes / 2, centres + shapes / 2], -1).reshape(-1, 4)


def assert_matches_reference(boxes1, boxes2):
    got, want = ops.box_iou_max(boxes1, boxes2), box_iou_max_reference(boxes1, boxes2)
    for name, a, b in zip(("best_iou", "best_index", "is_best"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
    return got


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_boxes1, num_boxes2", [(1, 1), (5, 255), (5, 256), (7, 2001), (300, 700), (40, 16)])
def test_cpu_kernel_matches_reference_bit_for_bit(generator, dtype, num_boxes1, num_boxes2):
    """Random boxes, with duplicates of boxes1 among boxes2 (IoU 1, each box1's best) and a box2
    equal to two boxes1 at once (a tie for the first index)."""
    boxes1 = random_boxes(generator, num_boxes1, dtype)
    boxes2 = random_boxes(generator, num_boxes2, dtype)
    if num_boxes1 > 1:
        boxes1[-1] = boxes1[0]
    copies = min(num_boxes1, num_boxes2)
    boxes2[:copies] = boxes1[:copies]
    best, index, is_best = assert_matches_reference(boxes1, boxes2)
    assert is_best[:copies].all() and (best[:copies] == 1).all()


@needs_cpu_kernel
def test_ties_on_an_anchor_grid(generator):
    """Ground truth on an anchor grid's cells: equal IoUs with many anchors, each box's best
    reached by several; the first index among equal boxes1 (two identical ground-truth boxes)."""
    anchors = anchor_grid()
    ground_truth = torch.tensor([[8.0, 8.0, 24.0, 24.0], [40.0, 16.0, 72.0, 32.0], [8.0, 8.0, 24.0, 24.0],
                                 [30.0, 30.0, 31.0, 31.0]])
    best, index, is_best = assert_matches_reference(ground_truth, anchors)
    assert is_best.sum() > ground_truth.shape[0] - 1  # ties reach a box's best more than once
    assert not (index == 2).any()  # box 2 equals box 0, which comes first


@needs_cpu_kernel
def test_degenerate_boxes(generator):
    """Points, lines, inverted boxes and boxes far outside each other: IoU 0 (the clamped union),
    index 0, and a box1 whose best is 0 is nobody's best."""
    boxes1 = torch.tensor([[5.0, 5.0, 5.0, 5.0], [10.0, 0.0, 0.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    boxes2 = torch.cat([torch.tensor([[3.0, 3.0, 3.0, 3.0], [0.0, 4.0, 10.0, 4.0], [8.0, 8.0, 2.0, 2.0],
                                      [500.0, 500.0, 510.0, 510.0]]), random_boxes(generator, 20)])
    best, index, is_best = assert_matches_reference(boxes1, boxes2)
    assert (best[:4] == 0).all() and (index[:4] == 0).all() and not is_best[:4].any()


@needs_cpu_kernel
def test_same_bits_at_any_thread_count(generator):
    """Each thread folds its own boxes1's best; the result does not depend on how many."""
    boxes1, boxes2 = random_boxes(generator, 9), random_boxes(generator, 70000)
    boxes2[12345] = boxes1[3]
    assert_same_bits_at_thread_counts(lambda: ops.box_iou_max(boxes1, boxes2))


@st.composite
def box_sets(draw):
    """(boxes1 (G, 4), boxes2 (P, 4), layout): boxes on a coarse grid (equal IoUs, boxes equal to
    others), degenerate ones (zero width or height, inverted), far-apart ones; float32 or 64."""
    seed, dtype = draw(seeds), draw(st.sampled_from((torch.float32, torch.float64)))
    g = torch.Generator().manual_seed(seed)
    counts = draw(st.integers(0, 12)), draw(st.integers(0, 600))
    step = draw(st.sampled_from((1.0, 4.0, 0.37)))  # a grid of few positions: ties, or none
    sets = []
    for count in counts:
        corner = torch.randint(0, 20, (count, 2), generator=g).double() * step
        size = torch.randint(0, 12, (count, 2), generator=g).double() * step
        size[torch.rand(count, generator=g) < 0.05] *= -1  # inverted
        sets.append(torch.cat([corner, corner + size], 1).to(dtype))
    if counts[0] and counts[1]:
        sets[1][: min(counts)] = sets[0][: min(counts)]  # each box1's exact copy: IoU 1
    sets[1] = sets[1] + uniform(g, sets[1].shape, dtype, 0, 1e-3) * draw(st.sampled_from((0, 1)))
    return sets[0], sets[1], draw(st.sampled_from(("contiguous", "strided")))


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@examples(1.0)
@given(inputs=box_sets())
def test_drawn_inputs_match_reference(inputs):
    boxes1, boxes2, layout = inputs
    got = ops.box_iou_max(arrange(boxes1, layout), arrange(boxes2, layout))
    want = box_iou_max_reference(boxes1, boxes2)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_reference_is_box_iou_reduced(generator):
    """The reference's three results read straight off box_iou's matrix."""
    boxes1, boxes2 = random_boxes(generator, 6, torch.float64), random_boxes(generator, 50, torch.float64)
    boxes2[7] = boxes1[2]
    iou = box_iou(boxes1, boxes2)
    best, index, is_best = box_iou_max_reference(boxes1, boxes2)
    assert torch.equal(best, iou.max(0).values) and torch.equal(index, iou.max(0).indices)
    assert torch.equal(iou[index, torch.arange(50)], best)
    column_best = iou.max(1).values
    assert is_best.tolist() == [bool((iou[:, p] == column_best).any()) for p in range(50)]


@pytest.mark.parametrize("num_boxes1, num_boxes2", [(0, 5), (3, 0), (0, 0)])
def test_empty_inputs(num_boxes1, num_boxes2):
    """No boxes1: IoU 0, index 0, nobody's best; no boxes2: empty results."""
    best, index, is_best = ops.box_iou_max(torch.rand(num_boxes1, 4), torch.rand(num_boxes2, 4))
    assert best.shape == index.shape == is_best.shape == (num_boxes2,)
    assert best.dtype == torch.float32 and index.dtype == torch.int64 and is_best.dtype == torch.bool
    assert not best.any() and not index.any() and not is_best.any()


def test_opcheck(generator):
    boxes1, boxes2 = random_boxes(generator, 4), random_boxes(generator, 300)
    torch.library.opcheck(torch.ops.sfpn.box_iou_max, (boxes1, boxes2))


def test_not_differentiable_and_no_graph(generator):
    boxes1 = random_boxes(generator, 3).requires_grad_()
    best, _, _ = ops.box_iou_max(boxes1, random_boxes(generator, 10))
    assert best.grad_fn is None and not best.requires_grad


@pytest.mark.parametrize("arguments, error, message", [
    ((torch.rand(3, 5), torch.rand(4, 4)), ValueError, r"boxes1 must be \(K, 4\) xyxy boxes, got shape \(3, 5\)"),
    ((torch.rand(3, 4), torch.rand(4)), ValueError, "boxes2 must have 2 dimensions, got shape"),
    ((torch.rand(3, 4).half(), torch.rand(4, 4).half()), TypeError, "boxes1 must have dtype in"),
    ((torch.rand(3, 4), torch.rand(4, 4).double()), TypeError, "boxes2 must have the same dtype as boxes1"),
    (([[0, 0, 1, 1]], torch.rand(4, 4)), TypeError, "boxes1 must be a torch.Tensor"),
])
def test_argument_errors(arguments, error, message):
    with pytest.raises(error, match=message):
        ops.box_iou_max(*arguments)


@needs_cpu_kernel
@pytest.mark.parametrize("which", ["boxes1", "boxes2"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_coordinates_raise(generator, which, value):
    boxes = {"boxes1": random_boxes(generator, 3), "boxes2": random_boxes(generator, 600)}
    boxes[which][-1, 2] = value
    with pytest.raises(RuntimeError, match=f"sfpn::box_iou_max: {which} must have finite coordinates"):
        ops.box_iou_max(boxes["boxes1"], boxes["boxes2"])


@needs_cpu_kernel
@pytest.mark.parametrize("arguments, message", [
    ((torch.rand(3, 4), torch.rand(4, 3)), r"boxes2 must be \(K, 4\)"),
    ((torch.rand(3, 4).half(), torch.rand(4, 4).half()), "boxes1 must be float32 or float64"),
    ((torch.rand(3, 4), torch.rand(4, 4).double()), "boxes2 must have the dtype of boxes1"),
])
def test_cpp_checks_of_direct_calls(arguments, message):
    with pytest.raises(RuntimeError, match="sfpn::box_iou_max: " + message):
        torch.ops.sfpn.box_iou_max(*arguments)
