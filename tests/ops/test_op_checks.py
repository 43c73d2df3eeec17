"""The compiled ops check their own arguments: a call that reaches ``torch.ops.sfpn.*``
directly, bypassing the Python wrappers' checks, gets a ``RuntimeError`` naming the bad
argument, never a crash; every C++/CUDA op of csrc/ checks its arguments (csrc/op_checks.h).
Each case carries its op's marker.

A crash would take pytest down with it, so every case first runs in a child process; each
test then asserts on what its case did there.
"""
import re

import pytest

from sfpn import _extension

from isolated_calls import run_isolated
from op_helpers import op_marker

pytestmark = pytest.mark.skipif(
    not _extension.STATUS.loaded,
    reason="the compiled extension is not loaded: no C++ op to check",
)


# (case id, call, the argument the error must name). `None`: the call is valid and must succeed,
# so that every failure below comes from the one argument a case spoils.
CASES = [
    # upsample_add(top, lateral, mode, align_corners)
    ("upsample_add-valid", "sfpn.upsample_add(top, x, 'nearest', False)", None),
    ("upsample_add-top-rank", "sfpn.upsample_add(top[0], x, 'nearest', False)", "top"),
    ("upsample_add-lateral-int", "sfpn.upsample_add(top.long(), x.long(), 'nearest', False)", "lateral"),
    ("upsample_add-top-dtype", "sfpn.upsample_add(top.double(), x, 'nearest', False)", "top"),
    ("upsample_add-top-channels", "sfpn.upsample_add(top[:, :2], x, 'nearest', False)", "top"),
    ("upsample_add-top-batch", "sfpn.upsample_add(top[:1], x, 'nearest', False)", "top"),
    ("upsample_add-top-empty", "sfpn.upsample_add(top[:, :, :0], x, 'nearest', False)", "top"),
    ("upsample_add-mode", "sfpn.upsample_add(top, x, 'bicubic', False)", "mode"),
    # upsample_add_backward(grad, top_height, top_width, mode, align_corners)
    ("upsample_add_backward-valid", "sfpn.upsample_add_backward(x, 4, 4, 'bilinear', True)", None),
    ("upsample_add_backward-grad-rank", "sfpn.upsample_add_backward(x[0], 4, 4, 'bilinear', True)", "grad"),
    ("upsample_add_backward-grad-int", "sfpn.upsample_add_backward(x.int(), 4, 4, 'bilinear', True)", "grad"),
    ("upsample_add_backward-top_height", "sfpn.upsample_add_backward(x, -1, 4, 'bilinear', True)", "top_height"),
    ("upsample_add_backward-mode", "sfpn.upsample_add_backward(x, 4, 4, 'area', True)", "mode"),
    # semantic_fuse(levels, semantic, mode, align_corners)
    ("semantic_fuse-valid", "sfpn.semantic_fuse(levels, x, 'bilinear', False)", None),
    ("semantic_fuse-semantic-rank", "sfpn.semantic_fuse(levels, x[0], 'bilinear', False)", "semantic"),
    ("semantic_fuse-semantic-int", "sfpn.semantic_fuse([l.long() for l in levels], x.long(), 'bilinear', False)",
     "semantic"),
    ("semantic_fuse-semantic-empty", "sfpn.semantic_fuse(levels, x[:, :, :0], 'bilinear', False)", "semantic"),
    ("semantic_fuse-level-channels", "sfpn.semantic_fuse([levels[0], levels[1][:, :2]], x, 'bilinear', False)",
     "levels[1]"),
    ("semantic_fuse-level-dtype", "sfpn.semantic_fuse([levels[0].double(), levels[1]], x, 'bilinear', False)",
     "levels[0]"),
    ("semantic_fuse-level-rank", "sfpn.semantic_fuse([levels[0], levels[1][0]], x, 'bilinear', False)", "levels[1]"),
    ("semantic_fuse-mode", "sfpn.semantic_fuse(levels, x, 'linear', False)", "mode"),
    # semantic_fuse_backward(grads, semantic_height, semantic_width, mode, align_corners)
    ("semantic_fuse_backward-valid", "sfpn.semantic_fuse_backward(levels, 8, 8, 'nearest', False)", None),
    # (an empty `grads` never reaches a kernel: with no tensor argument the dispatcher has no key)
    ("semantic_fuse_backward-grad-rank", "sfpn.semantic_fuse_backward([levels[0], levels[1][0]], 8, 8, 'nearest', False)",
     "grads[1]"),
    ("semantic_fuse_backward-grad-dtype",
     "sfpn.semantic_fuse_backward([levels[0], levels[1].half()], 8, 8, 'nearest', False)", "grads[1]"),
    ("semantic_fuse_backward-grad-int", "sfpn.semantic_fuse_backward([l.int() for l in levels], 8, 8, 'nearest', False)",
     "grads[0]"),
    ("semantic_fuse_backward-semantic_height", "sfpn.semantic_fuse_backward(levels, -8, 8, 'nearest', False)",
     "semantic_height"),
    # roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ("roi_align-valid", "sfpn.roi_align(x, rois, 1.0, 2, 2, 2, True)", None),
    ("roi_align-valid-adaptive", "sfpn.roi_align(x, rois, 0.5, 3, 2, -1, False)", None),
    ("roi_align-input-rank", "sfpn.roi_align(x[0], rois, 1.0, 2, 2, 2, True)", "input"),
    ("roi_align-input-int", "sfpn.roi_align(x.long(), rois, 1.0, 2, 2, 2, True)", "input"),
    ("roi_align-input-empty-plane", "sfpn.roi_align(x[:, :, :0], rois, 1.0, 2, 2, 2, True)", "input"),
    ("roi_align-rois-columns", "sfpn.roi_align(x, rois[:, :4], 1.0, 2, 2, 2, True)", "rois"),
    ("roi_align-rois-rank", "sfpn.roi_align(x, rois[0], 1.0, 2, 2, 2, True)", "rois"),
    ("roi_align-rois-int", "sfpn.roi_align(x, rois.long(), 1.0, 2, 2, 2, True)", "rois"),
    ("roi_align-spatial_scale-zero", "sfpn.roi_align(x, rois, 0.0, 2, 2, 2, True)", "spatial_scale"),
    ("roi_align-spatial_scale-negative", "sfpn.roi_align(x, rois, -1.0, 2, 2, 2, True)", "spatial_scale"),
    ("roi_align-spatial_scale-nan", "sfpn.roi_align(x, rois, nan, 2, 2, 2, True)", "spatial_scale"),
    ("roi_align-spatial_scale-inf", "sfpn.roi_align(x, rois, inf, 2, 2, 2, True)", "spatial_scale"),
    ("roi_align-spatial_scale-float32-overflow", "sfpn.roi_align(x, rois, 1e300, 2, 2, 2, True)", "spatial_scale"),
    ("roi_align-pooled_height", "sfpn.roi_align(x, rois, 1.0, 0, 2, 2, True)", "pooled_height"),
    ("roi_align-pooled_width", "sfpn.roi_align(x, rois, 1.0, 2, -3, 2, True)", "pooled_width"),
    # box values: checked by the CPU kernel inside its loop over RoIs
    ("roi_align-box-nan", "sfpn.roi_align(x, torch.tensor([[0, 1.0, nan, 3.0, 4.0]]), 1.0, 2, 2, 2, True)", "rois[0]"),
    ("roi_align-box-inf", "sfpn.roi_align(x, torch.tensor([[0, 1.0, 1.0, inf, 4.0]]), 1.0, 2, 2, -1, False)", "rois[0]"),
    ("roi_align-box-float32-overflow",
     "sfpn.roi_align(x, torch.tensor([[0, -3e38, 0.0, 3e38, 4.0]]), 1.0, 2, 2, 2, True)", "rois[0]"),
    ("roi_align-box-huge-adaptive",
     "sfpn.roi_align(x, torch.tensor([[0, 0.0, 0.0, 1e12, 4.0]]), 1.0, 2, 2, -1, True)", "rois[0]"),
    ("roi_align-sampling_ratio-huge", "sfpn.roi_align(x, rois, 1.0, 2, 2, 2**40, True)", "sampling_ratio"),
    ("roi_align-batch-index-negative", "sfpn.roi_align(x, torch.tensor([[-1, 1.0, 1, 3, 4]]), 1.0, 2, 2, 2, True)",
     "rois[0, 0]"),
    ("roi_align-batch-index-past-end", "sfpn.roi_align(x, torch.tensor([[2, 1.0, 1, 3, 4]]), 1.0, 2, 2, 2, True)",
     "rois[0, 0]"),
    ("roi_align-batch-index-nan", "sfpn.roi_align(x, torch.tensor([[nan, 1.0, 1, 3, 4]]), 1.0, 2, 2, 2, True)",
     "rois[0, 0]"),
    # roi_align_backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
    #                    height, width, sampling_ratio, aligned, deterministic)
    ("roi_align_backward-valid", "sfpn.roi_align_backward(grad, rois, 1.0, 2, 2, 2, 3, 8, 8, 2, True, True)", None),
    ("roi_align_backward-grad-rank", "sfpn.roi_align_backward(grad[0], rois, 1.0, 2, 2, 2, 3, 8, 8, 2, True, True)",
     "grad"),
    ("roi_align_backward-grad-int", "sfpn.roi_align_backward(grad.int(), rois, 1.0, 2, 2, 2, 3, 8, 8, 2, True, True)",
     "grad"),
    ("roi_align_backward-channels", "sfpn.roi_align_backward(grad, rois, 1.0, 2, 2, 2, 4, 8, 8, 2, True, True)",
     "channels"),
    ("roi_align_backward-rois-count", "sfpn.roi_align_backward(grad, rois[:1], 1.0, 2, 2, 2, 3, 8, 8, 2, True, True)",
     "rois"),
    ("roi_align_backward-pooled-size", "sfpn.roi_align_backward(grad, rois, 1.0, 3, 2, 2, 3, 8, 8, 2, True, True)",
     "pooled_height"),
    ("roi_align_backward-batch_size", "sfpn.roi_align_backward(grad, rois, 1.0, 2, 2, -2, 3, 8, 8, 2, True, True)",
     "batch_size"),
    ("roi_align_backward-height", "sfpn.roi_align_backward(grad, rois, 1.0, 2, 2, 2, 3, 0, 8, 2, True, True)",
     "height"),
    ("roi_align_backward-spatial_scale", "sfpn.roi_align_backward(grad, rois, inf, 2, 2, 2, 3, 8, 8, 2, True, True)",
     "spatial_scale"),
    ("roi_align_backward-batch-index", "sfpn.roi_align_backward(grad, rois, 1.0, 2, 2, 1, 3, 8, 8, 2, True, True)",
     "rois[1, 0]"),
    ("roi_align_backward-box-nan",
     "sfpn.roi_align_backward(grad, torch.tensor([[0, 1.0, 1, nan, 4], [1, 0, 0, 2, 2]]), 1.0, 2, 2, 2, 3, 8, 8, 2,"
     " True, True)", "rois[0]"),
    # multilevel_roi_align(levels, rois, scales, pooled_height, pooled_width, sampling_ratio, aligned,
    #                      canonical_scale, canonical_level)
    ("multilevel_roi_align-valid", "sfpn.multilevel_roi_align(levels, rois, [0.25, 0.125], 2, 2, 2, True, 224.0, 4)",
     None),
    # non-consecutive scales must not index a level that is not there
    ("multilevel_roi_align-scales-gap", "sfpn.multilevel_roi_align(levels, rois, [0.25, 1 / 64], 2, 2, 2, True, 224.0, 4)",
     "scales"),
    ("multilevel_roi_align-scales-coarse-first",
     "sfpn.multilevel_roi_align(levels, rois, [0.125, 0.25], 2, 2, 2, True, 224.0, 4)", "scales"),
    ("multilevel_roi_align-scales-count", "sfpn.multilevel_roi_align(levels, rois, [0.25], 2, 2, 2, True, 224.0, 4)",
     "scales"),
    ("multilevel_roi_align-scale-nan", "sfpn.multilevel_roi_align(levels, rois, [nan, 0.125], 2, 2, 2, True, 224.0, 4)",
     "scales[0]"),
    ("multilevel_roi_align-scale-zero", "sfpn.multilevel_roi_align(levels, rois, [0.25, 0.0], 2, 2, 2, True, 224.0, 4)",
     "scales[1]"),
    ("multilevel_roi_align-scale-tiny", "sfpn.multilevel_roi_align(levels, rois, [1e-300, 0.125], 2, 2, 2, True, 224.0, 4)",
     "scales[0]"),
    ("multilevel_roi_align-levels-empty", "sfpn.multilevel_roi_align([], rois, [], 2, 2, 2, True, 224.0, 4)", "levels"),
    ("multilevel_roi_align-levels-too-many",
     "sfpn.multilevel_roi_align([x] * 9, rois, [2.0 ** -k for k in range(9)], 2, 2, 2, True, 224.0, 4)", "levels"),
    ("multilevel_roi_align-level-channels",
     "sfpn.multilevel_roi_align([levels[0], levels[1][:, :1]], rois, [0.25, 0.125], 2, 2, 2, True, 224.0, 4)",
     "levels[1]"),
    ("multilevel_roi_align-level-dtype",
     "sfpn.multilevel_roi_align([levels[0], levels[1].double()], rois, [0.25, 0.125], 2, 2, 2, True, 224.0, 4)",
     "levels[1]"),
    ("multilevel_roi_align-level-empty-plane",
     "sfpn.multilevel_roi_align([levels[0], levels[1][:, :, :, :0]], rois, [0.25, 0.125], 2, 2, 2, True, 224.0, 4)",
     "levels[1]"),
    ("multilevel_roi_align-canonical_scale",
     "sfpn.multilevel_roi_align(levels, rois, [0.25, 0.125], 2, 2, 2, True, 0.0, 4)", "canonical_scale"),
    ("multilevel_roi_align-rois-columns",
     "sfpn.multilevel_roi_align(levels, rois[:, 1:], [0.25, 0.125], 2, 2, 2, True, 224.0, 4)", "rois"),
    ("multilevel_roi_align-box-inf",
     "sfpn.multilevel_roi_align(levels, torch.tensor([[1, -inf, 0, 4, 4.0]]), [0.25, 0.125], 2, 2, 2, True, 224.0, 4)",
     "rois[0]"),
    ("multilevel_roi_align-batch-index",
     "sfpn.multilevel_roi_align(levels, torch.tensor([[0, 0, 0, 4, 4.0], [7, 0, 0, 4, 4.0]]), [0.25, 0.125], 2, 2, 2,"
     " True, 224.0, 4)", "rois[1, 0]"),
    # multilevel_roi_align_backward(grad, rois, scales, batch_size, channels, heights, widths,
    #                               sampling_ratio, aligned, canonical_scale, canonical_level, deterministic)
    ("multilevel_roi_align_backward-valid",
     "sfpn.multilevel_roi_align_backward(grad, rois, [0.25, 0.125], 2, 3, [16, 8], [16, 8], 2, True, 224.0, 4, True)",
     None),
    ("multilevel_roi_align_backward-scales-gap",
     "sfpn.multilevel_roi_align_backward(grad, rois, [0.25, 1 / 64], 2, 3, [16, 8], [16, 8], 2, True, 224.0, 4, True)",
     "scales"),
    ("multilevel_roi_align_backward-heights-count",
     "sfpn.multilevel_roi_align_backward(grad, rois, [0.25, 0.125], 2, 3, [16], [16, 8], 2, True, 224.0, 4, True)",
     "heights"),
    ("multilevel_roi_align_backward-widths-count",
     "sfpn.multilevel_roi_align_backward(grad, rois, [0.25, 0.125], 2, 3, [16, 8], [16], 2, True, 224.0, 4, True)",
     "widths"),
    ("multilevel_roi_align_backward-width-zero",
     "sfpn.multilevel_roi_align_backward(grad, rois, [0.25, 0.125], 2, 3, [16, 8], [16, 0], 2, True, 224.0, 4, True)",
     "widths[1]"),
    ("multilevel_roi_align_backward-channels",
     "sfpn.multilevel_roi_align_backward(grad, rois, [0.25, 0.125], 2, 5, [16, 8], [16, 8], 2, True, 224.0, 4, True)",
     "channels"),
    ("multilevel_roi_align_backward-canonical_scale",
     "sfpn.multilevel_roi_align_backward(grad, rois, [0.25, 0.125], 2, 3, [16, 8], [16, 8], 2, True, nan, 4, True)",
     "canonical_scale"),
    # nms(boxes, scores, iou_threshold), batched_nms(..., idxs, ...), batched_nms_padded(..., max_out)
    ("nms-valid", "sfpn.nms(boxes, scores, 0.5)", None),
    ("nms-boxes-columns", "sfpn.nms(boxes[:, :3], scores, 0.5)", "boxes"),
    ("nms-boxes-rank", "sfpn.nms(boxes[0], scores[:1], 0.5)", "boxes"),
    ("nms-boxes-int", "sfpn.nms(boxes.long(), scores.long(), 0.5)", "boxes"),
    ("nms-scores-length", "sfpn.nms(boxes, scores[:2], 0.5)", "scores"),
    ("nms-scores-dtype", "sfpn.nms(boxes, scores.double(), 0.5)", "scores"),
    ("nms-scores-rank", "sfpn.nms(boxes, scores[:, None], 0.5)", "scores"),
    ("batched_nms-valid", "sfpn.batched_nms(boxes, scores, idxs, 0.5)", None),
    ("batched_nms-idxs-int32", "sfpn.batched_nms(boxes, scores, idxs.int(), 0.5)", "idxs"),
    ("batched_nms-idxs-length", "sfpn.batched_nms(boxes, scores, idxs[:2], 0.5)", "idxs"),
    ("batched_nms-idxs-rank", "sfpn.batched_nms(boxes, scores, idxs[:, None], 0.5)", "idxs"),
    ("batched_nms-boxes-half-scores-float", "sfpn.batched_nms(boxes.half(), scores, idxs, 0.5)", "scores"),
    ("batched_nms_padded-valid", "sfpn.batched_nms_padded(boxes, scores, idxs, 0.5, 2)", None),
    ("batched_nms_padded-max_out", "sfpn.batched_nms_padded(boxes, scores, idxs, 0.5, -1)", "max_out"),
    ("batched_nms_padded-idxs-float", "sfpn.batched_nms_padded(boxes, scores, idxs.float(), 0.5, 2)", "idxs"),
]
CASE_IDS = [case_id for case_id, _, _ in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)


@pytest.fixture(scope="module")
def outcomes():
    return run_isolated([(case_id, call) for case_id, call, _ in CASES])


@pytest.mark.parametrize(
    "case_id, call, argument", [pytest.param(*case, marks=op_marker(case[0])) for case in CASES], ids=CASE_IDS
)
def test_direct_call_checks_its_argument(outcomes, case_id, call, argument):
    outcome = outcomes[case_id]
    if argument is None:
        assert outcome["raised"] is None, f"{call} must succeed, got {outcome['raised']}: {outcome['message']}"
        return
    assert outcome["raised"] == "RuntimeError", f"{call}: expected a RuntimeError, got {outcome}"
    # The argument's name as a whole word (so "rois" does not match "rois[0]" by accident).
    assert re.search(rf"(?<![\w\[]){re.escape(argument)}(?![\w\[])", outcome["message"]), (
        f"{call}: the error must name {argument!r}, got: {outcome['message']}"
    )
