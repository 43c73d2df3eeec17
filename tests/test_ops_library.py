"""The operator library (sfpn/ops/_library.py) and what every op gets from it: one definition,
the reference as the dispatcher's fallback, kernels per dispatch key, torch.compile, double
backward, autocast, TorchScript of the raw ops, and the Triton kernels' temporary CPU registration.
"""
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sfpn import _extension, info, kernels, ops
from sfpn.ops import _library, reference

pytestmark = pytest.mark.usefixtures("single_thread")

COMPILED_OPS = [name for name, op in _library.OPS.items() if op.backend == _library.COMPILED]
TRITON_OPS = [name for name, op in _library.OPS.items() if op.backend == _library.TRITON]
needs_interpreter = pytest.mark.skipif(
    not (kernels.AVAILABLE and kernels.INTERPRETING), reason="needs Triton and TRITON_INTERPRET=1"
)


def randn(generator, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=generator).to(dtype)


def rois_for(generator, count, batch_size, height, width, dtype=torch.float32):
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.8
    size = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.6 + 0.5
    batch = torch.randint(0, batch_size, (count, 1), generator=generator).float()
    return torch.cat([batch, corner, corner + size], 1).to(dtype)


def nms_inputs(generator, count=60, classes=3, dtype=torch.float32):
    corner = torch.rand(count, 2, generator=generator) * 100
    boxes = torch.cat([corner, corner + 10 + torch.rand(count, 2, generator=generator) * 30], 1).to(dtype)
    scores = torch.rand(count, generator=generator).to(dtype)
    return boxes, scores, torch.randint(0, classes, (count,), generator=generator)


# ------------------------------------------------------------------------------------------------
# The registry


def test_registry_lists_every_public_op_once_with_its_definition():
    modules_and_errors = {"RoIAlign", "MultiLevelRoIAlign", "OpArgumentError", "OpValueError", "OpTypeError", "RoIBoxesError"}
    assert sorted(_library.OPS) == sorted(set(ops.__all__) - modules_and_errors)
    assert sorted(_library.OPS) == sorted(reference.__all__)
    assert set(info.backends()) == set(_library.OPS)
    for op in _library.OPS.values():
        for name in (op.name, *op.backward, *op.triton):
            qualified = f"sfpn::{name}"
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CompositeExplicitAutograd"), name
            assert name in _library.REFERENCES
            assert torch._library.simple_registry.singleton.find(qualified).fake_impl.kernel is not None, name
        assert bool(op.triton) == (op.backend == _library.TRITON)


def test_compiled_kernels_serve_the_cpu_when_the_extension_is_loaded():
    expected = "C++" if _extension.STATUS.loaded else "reference"
    assert {name: _library.serving(name, "cpu") for name in COMPILED_OPS} == dict.fromkeys(COMPILED_OPS, expected)
    assert {name: _library.serving(name, "cpu") for name in TRITON_OPS} == dict.fromkeys(TRITON_OPS, "reference")


@pytest.mark.skipif(not _extension.STATUS.loaded, reason="sfpn._C is not loaded")
def test_kernels_loaded_after_the_definitions_serve_too():
    """sfpn imports the extension before defining the ops; the other order works as well."""
    code = (
        "import warnings, torch; warnings.simplefilter('ignore');"
        "import sfpn; from sfpn.ops import _library;"
        "assert _library.serving('roi_align', 'cpu') == 'reference';"
        "x = torch.randn(2, 3, 9, 9); r = torch.tensor([[1, 1., 2, 7, 8]]);"
        "before = sfpn.ops.roi_align(x, r, 3);"
        f"torch.ops.load_library({_extension.STATUS.path!r});"
        "assert _library.serving('roi_align', 'cpu') == 'C++', _library.serving('roi_align', 'cpu');"
        "torch.testing.assert_close(sfpn.ops.roi_align(x, r, 3), before, rtol=1e-5, atol=1e-5);"
        "print('ok')"
    )
    env = dict(os.environ, SFPN_DISABLE_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@needs_interpreter
def test_interpret_on_cpu_registers_triton_for_the_block_only(generator, monkeypatch):
    from sfpn.kernels import resize_sum as launcher

    launches = []
    launch = launcher.resize_sum
    monkeypatch.setattr(launcher, "resize_sum", lambda *a: launches.append(1) or launch(*a))
    levels = [randn(generator, 1, 2, 4, 5), randn(generator, 1, 2, 2, 3)]
    expected = reference.resize_sum(levels, (4, 5))
    with kernels.interpret_on_cpu():
        with kernels.interpret_on_cpu():  # reentrant
            assert _library.serving("resize_sum", "cpu") == "Triton"
        torch.testing.assert_close(ops.resize_sum(levels, (4, 5)), expected, rtol=1e-5, atol=1e-5)
        assert launches == [1]
        with _library.references():  # the references override the kernels for a block
            torch.testing.assert_close(ops.resize_sum(levels, (4, 5)), expected, rtol=1e-5, atol=1e-5)
        assert launches == [1]
        ops.resize_sum(levels, (4, 5))
        assert launches == [1, 1]
    assert _library.serving("resize_sum", "cpu") == "reference"
    torch.testing.assert_close(ops.resize_sum(levels, (4, 5)), expected, rtol=1e-5, atol=1e-5)
    assert launches == [1, 1]


# ------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the wrappers trace without a graph break or host sync


def test_compiled_ops_compile_fullgraph_and_match_eager(generator, monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "capture_dynamic_output_shape_ops", True)
    x = randn(generator, 2, 3, 12, 16)
    pyramid = [x, randn(generator, 2, 3, 6, 8)]
    rois = rois_for(generator, 7, 2, 48, 64)
    boxes, scores, idxs = nms_inputs(generator)

    def program(x, top, rois, boxes, scores, idxs):
        fused = ops.semantic_fuse(pyramid, top)
        pooled = ops.roi_align(fused[0], rois, 3, 0.25, 2, True)
        pooled_levels = ops.multilevel_roi_align(fused, rois, (2, 3), [1 / 4, 1 / 8], -1)
        out = ops.upsample_add(top, x, "bilinear").square().sum() + pooled.sum() + pooled_levels.square().sum()
        return out, ops.nms(boxes, scores, 0.5), ops.batched_nms(boxes, scores, idxs, 0.3), ops.batched_nms_padded(
            boxes, scores, idxs, 0.3, 20
        )

    torch._dynamo.reset()
    compiled = torch.compile(program, fullgraph=True, backend="aot_eager")
    top = randn(generator, 2, 3, 5, 7)
    inputs = [top.clone().requires_grad_(), top.clone().requires_grad_()]
    got, want = compiled(x, inputs[0], rois, boxes, scores, idxs), program(x, inputs[1], rois, boxes, scores, idxs)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(got[1:3] + got[3], want[1:3] + want[3]):
        assert torch.equal(ours, theirs)
    got[0].backward()
    want[0].backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, rtol=1e-5, atol=1e-5)


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
# Double backward: the four linear ops, kernels and references, in float64


def _double(generator, *shape):
    return randn(generator, *shape, dtype=torch.float64).requires_grad_()


def _upsample_add_case(g, mode, align_corners):
    return (lambda top, lateral: ops.upsample_add(top, lateral, mode, align_corners),
            (_double(g, 1, 2, 3, 4), _double(g, 1, 2, 5, 7)))


def _semantic_fuse_case(g):
    return (lambda a, b, s: ops.semantic_fuse([a, b], s),
            (_double(g, 1, 2, 6, 5), _double(g, 1, 2, 2, 3), _double(g, 1, 2, 3, 4)))


def _roi_align_case(g):
    rois = rois_for(g, 4, 2, 7, 8, torch.float64)
    return lambda x: ops.roi_align(x, rois, 2, 1.0, 2, True), (_double(g, 2, 2, 7, 8),)


def _multilevel_case(g):
    rois = rois_for(g, 5, 1, 16, 16, torch.float64)
    return (lambda a, b: ops.multilevel_roi_align([a, b], rois, 2, [1 / 2, 1 / 4], 2, False, 8, 2),
            (_double(g, 1, 2, 8, 8), _double(g, 1, 2, 4, 4)))


DOUBLE_BACKWARD = {
    "upsample_add_bilinear": lambda g: _upsample_add_case(g, "bilinear", True),
    "upsample_add_nearest": lambda g: _upsample_add_case(g, "nearest", None),
    "semantic_fuse": _semantic_fuse_case,
    "roi_align": _roi_align_case,
    "multilevel_roi_align": _multilevel_case,
}


@pytest.mark.parametrize("serving", ["kernels", "references"])
@pytest.mark.parametrize("case", sorted(DOUBLE_BACKWARD))
def test_double_backward(generator, case, serving):
    """The backward of each linear op is differentiable again (its backward is the forward op)."""
    function, inputs = DOUBLE_BACKWARD[case](generator)
    with _library.references() if serving == "references" else contextlib.nullcontext():
        assert torch.autograd.gradcheck(function, inputs)
        assert torch.autograd.gradgradcheck(function, inputs)


# ------------------------------------------------------------------------------------------------
# The Triton ops' reference backward ops (explicit formulas) against autograd through the reference


def test_group_norm_relu_reference_backward_is_exact(generator):
    x, weight, bias = _double(generator, 2, 4, 3, 5), _double(generator, 4), _double(generator, 4)
    assert torch.autograd.gradcheck(lambda *a: ops.group_norm_relu(a[0], 2, a[1], a[2]), (x, weight, bias))
    grad = randn(generator, 2, 4, 3, 5, dtype=torch.float64)
    ours = torch.autograd.grad(ops.group_norm_relu(x, 2, weight, bias), (x, weight, bias), grad)
    theirs = torch.autograd.grad(reference.group_norm_relu(x, 2, weight, bias), (x, weight, bias), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction, smoothing", [("mean", 0.0), ("mean", 0.2), ("sum", 0.1)])
@pytest.mark.parametrize("upsample", [False, True])
def test_cross_entropy_reference_gradient_is_exact(generator, upsample, reduction, smoothing):
    logits = _double(generator, 2, 5, 3, 4)
    labels = torch.randint(0, 5, (2, 7, 6) if upsample else (2, 3, 4), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.3] = 255
    op, ref = (ops.upsample_cross_entropy, reference.upsample_cross_entropy) if upsample else (
        ops.semantic_cross_entropy, reference.semantic_cross_entropy)
    ours = torch.autograd.grad(op(logits, labels, 255, reduction, smoothing), logits)[0]
    theirs = torch.autograd.grad(ref(logits, labels, 255, reduction, smoothing), logits)[0]
    torch.testing.assert_close(ours, theirs)


# ------------------------------------------------------------------------------------------------
# Autocast: what dtype each op runs in


def test_autocast_box_ops_compute_in_float32(generator):
    """NMS runs on float32 boxes and scores; RoIAlign runs in the features' dtype, computing in
    float32, which gives torchvision's result (float32 in, the features' dtype out) without a
    float32 copy of the maps."""
    x = randn(generator, 2, 3, 10, 12)
    rois = rois_for(generator, 6, 2, 10, 12)
    pyramid = [x, randn(generator, 2, 3, 5, 6)]
    boxes, scores, idxs = nms_inputs(generator)
    half = torch.bfloat16
    with torch.autocast("cpu", dtype=half):
        pooled = ops.roi_align(x.to(half), rois.to(half), 3, 1.0, 2)
        pooled_levels = ops.multilevel_roi_align([p.to(half) for p in pyramid], rois.to(half), 2, [1, 0.5], 2)
        kept = ops.batched_nms(boxes.to(half), scores.to(half), idxs, 0.5)
        fused = ops.upsample_add(pyramid[1].to(half), x.to(half))
    assert pooled.dtype == half and pooled_levels.dtype == half and fused.dtype == half
    torch.testing.assert_close(pooled, ops.roi_align(x.to(half).float(), rois.to(half).float(), 3, 1.0, 2).to(half))
    torch.testing.assert_close(
        pooled_levels, ops.multilevel_roi_align([p.to(half).float() for p in pyramid], rois.to(half).float(), 2,
                                                [1, 0.5], 2).to(half)
    )
    assert torch.equal(kept, ops.batched_nms(boxes.to(half).float(), scores.to(half).float(), idxs, 0.5))


# ------------------------------------------------------------------------------------------------
# torchvision's calling conventions


def test_batched_nms_of_no_boxes_is_empty_before_any_check():
    for device_boxes in (torch.empty(0, 4), torch.empty(0, 4, dtype=torch.float64)):
        kept = ops.batched_nms(device_boxes, None, None, None)
        assert kept.dtype == torch.int64 and kept.shape == (0,)


@pytest.mark.parametrize("threshold", [torch.tensor(0.4), torch.tensor(0.4, dtype=torch.float64), np.float32(0.4),
                                       np.float64(0.4)])
def test_iou_threshold_as_tensor_or_numpy_scalar(generator, threshold):
    boxes, scores, idxs = nms_inputs(generator)
    assert torch.equal(ops.nms(boxes, scores, threshold), ops.nms(boxes, scores, float(threshold)))
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs,
                                                                                         float(threshold)))
    with pytest.raises(TypeError, match="iou_threshold"):
        ops.nms(boxes, scores, torch.tensor([0.4, 0.5]))


def test_raw_ops_are_scriptable(generator):
    """The Python wrappers are not scriptable (see sfpn/ops/roi_align.py); the ops they call are."""
    x, rois = randn(generator, 2, 3, 9, 9), rois_for(generator, 4, 2, 9, 9)
    boxes, scores, idxs = nms_inputs(generator)
    scripted = torch.jit.CompilationUnit(SCRIPT)
    pooled, kept, kept_per_class = scripted.run(x, rois, boxes, scores, idxs)
    torch.testing.assert_close(pooled, ops.roi_align(x, rois, 3, 0.5, 2, True))
    assert torch.equal(kept, ops.nms(boxes, scores, 0.5))
    assert torch.equal(kept_per_class, ops.batched_nms(boxes, scores, idxs, 0.5))


SCRIPT = """
def run(x: Tensor, rois: Tensor, boxes: Tensor, scores: Tensor, idxs: Tensor):
    pooled = torch.ops.sfpn.roi_align(x, rois, 0.5, 3, 3, 2, True, False)
    return pooled, torch.ops.sfpn.nms(boxes, scores, 0.5), torch.ops.sfpn.batched_nms(boxes, scores, idxs, 0.5)
"""
