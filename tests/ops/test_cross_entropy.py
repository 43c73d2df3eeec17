"""semantic_cross_entropy and upsample_cross_entropy: the Triton kernel against the
pure-PyTorch references (K from 2 to 200, chunked classes, class weights, all-ignored labels, half types),
drawn inputs, the references' explicit gradient, opcheck, argument checks. The kernel runs as
in tests/ops/test_resize_sum.py: on a GPU or under the Triton interpreter, on tiny shapes. The C++
CPU kernel of upsample_cross_entropy (csrc/cpu/cross_entropy.cpp) against the same references on
drawn inputs, against finite differences, its thread-count independence and its own argument
checks; the op's Python reference, which serves CPU tensors without the extension (and
semantic_cross_entropy's always), through ``_library.references()``."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import _library, reference

from op_helpers import FP32, at_thread_count, exact, float64_leaf, labels_for, leaf, needs_triton, randn
from op_strategies import FLOAT_DTYPES, TRITON_DTYPES, arrange, assert_close, examples, layouts, seeds, uniform

pytestmark = pytest.mark.cross_entropy

needs_cpu_kernel = pytest.mark.skipif(_library.serving("upsample_cross_entropy", "cpu") != "C++", reason="sfpn._C not built")
# How the CPU serves the op in the tests that take ``serving``: its C++ kernel, or the op's Python
# reference (the fallback without the extension).
SERVINGS = [pytest.param("kernel", marks=needs_cpu_kernel), "reference"]


def served(serving: str):
    return _library.references() if serving == "reference" else contextlib.nullcontext()


def assert_loss_and_grad(op, ref, logits, labels, tol=FP32, **kwargs):
    ours, theirs = leaf(logits), exact(logits)
    loss, expected = op(ours, labels, **kwargs), ref(theirs, labels, **kwargs)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, expected.float(), equal_nan=True, **tol)
    (loss * 0.75).backward()  # a non-unit incoming gradient must scale the fused gradient
    (expected * 0.75).backward()
    torch.testing.assert_close(ours.grad, theirs.grad.float(), **tol)


# ------------------------------------------------------------------------------------------------
# Against the reference


CE_CASES = [
    # (N, K, H, W): K from 2 to 200, odd sizes, a single pixel
    (2, 2, 5, 7),
    (1, 7, 3, 11),
    (2, 81, 4, 5),
    (1, 200, 3, 3),
    (1, 5, 1, 1),
]


@needs_triton
@pytest.mark.parametrize("shape", CE_CASES)
@pytest.mark.parametrize("reduction, smoothing", [("mean", 0.0), ("sum", 0.1)])
def test_semantic_cross_entropy_matches_reference(device, generator, launches, shape, reduction, smoothing):
    n, k, h, w = shape
    logits = randn(generator, n, k, h, w, device=device) * 3
    labels = labels_for(generator, (n, h, w), k, device, ignored_fraction=0.0 if h * w == 1 else 0.2)
    assert_loss_and_grad(
        ops.semantic_cross_entropy, reference.semantic_cross_entropy, logits, labels,
        reduction=reduction, label_smoothing=smoothing,
    )
    assert launches == {"cross_entropy": 1}


UPSAMPLE_CASES = [
    # (N, K, h, w, H, W): x8 as in the detector, odd ratios, labels smaller than logits, 1x1 logits
    (1, 5, 2, 3, 16, 24),
    (2, 13, 3, 4, 11, 9),
    (1, 200, 2, 2, 5, 3),
    (1, 3, 5, 6, 2, 3),
    (2, 4, 1, 1, 3, 2),
]


@needs_triton
@pytest.mark.parametrize("shape", UPSAMPLE_CASES)
def test_upsample_cross_entropy_matches_reference(device, generator, launches, shape):
    n, k, h, w, out_h, out_w = shape
    logits = randn(generator, n, k, h, w, device=device) * 3
    labels = labels_for(generator, (n, out_h, out_w), k, device, dtype=torch.uint8)
    assert_loss_and_grad(ops.upsample_cross_entropy, reference.upsample_cross_entropy, logits, labels)
    assert launches == {"cross_entropy": 1}


@needs_triton
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("upsample", [False, True])
def test_chunked_classes(device, generator, upsample, weighted):
    """K wider than one class tile: the online log-sum-exp over chunks, then a gradient pass
    (label smoothing, or class weights, which exclude it)."""
    from sfpn.kernels import cross_entropy as launcher

    logits = randn(generator, 2, 37, 3, 5, device=device) * 3
    size = (7, 9) if upsample else (3, 5)
    labels = labels_for(generator, (2, *size), 37, device)
    weight = torch.rand(37, generator=generator).to(device) if weighted else None
    smoothing = 0.0 if weighted else 0.05
    loss, grad = launcher.cross_entropy(logits, labels, 255, "mean", smoothing, True, max_block_k=16, weight=weight)
    ref_fn = reference.upsample_cross_entropy if upsample else reference.semantic_cross_entropy
    theirs = leaf(logits)
    expected = ref_fn(theirs, labels, label_smoothing=smoothing, weight=weight)
    expected.backward()
    torch.testing.assert_close(loss, expected, **FP32)
    torch.testing.assert_close(grad, theirs.grad, **FP32)


@needs_triton
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("op_name", ["semantic_cross_entropy", "upsample_cross_entropy"])
def test_class_weights(device, generator, launches, op_name, reduction):
    """Class weights: each pixel's loss and gradient times its label's weight, the mean over the
    summed weight, as F.cross_entropy's ``weight``."""
    logits = randn(generator, 2, 7, 3, 5, device=device) * 3
    size = (3, 5) if op_name == "semantic_cross_entropy" else (11, 9)
    labels = labels_for(generator, (2, *size), 7, device)
    weight = torch.rand(7, generator=generator).to(device) * 4
    assert_loss_and_grad(getattr(ops, op_name), getattr(reference, op_name), logits, labels,
                         reduction=reduction, weight=weight)
    assert launches == {"cross_entropy": 1}


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("serving", SERVINGS)
@pytest.mark.parametrize("upsample", [False, True])
def test_weighted_cpu_op_is_f_cross_entropy(generator, upsample, serving):
    """The op on the CPU, gradient included, against F.cross_entropy(weight=...) in float64:
    a weight of 0 removes a class, unequal weights change the mean's divisor."""
    logits = float64_leaf(generator, 2, 5, 3, 4)
    labels = torch.randint(0, 5, (2, 7, 6) if upsample else (2, 3, 4), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.3] = 255
    weight = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    op = ops.upsample_cross_entropy if upsample else ops.semantic_cross_entropy
    full = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=False) if upsample else logits
    expected = F.cross_entropy(full, labels, weight=weight, ignore_index=255)
    with served(serving):
        ours = op(logits, labels, weight=weight)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(expected, logits)[0])


@needs_triton
@pytest.mark.parametrize("op_name", ["semantic_cross_entropy", "upsample_cross_entropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored(device, generator, op_name, reduction):
    """No labelled pixel: mean is NaN and sum is 0 (as F.cross_entropy); the gradient is zero."""
    logits = randn(generator, 1, 4, 3, 3, device=device)
    labels = torch.full((1, 3, 3), 255, dtype=torch.int64, device=device)
    assert_loss_and_grad(getattr(ops, op_name), getattr(reference, op_name), logits, labels, reduction=reduction)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op_name", ["semantic_cross_entropy", "upsample_cross_entropy"])
def test_low_precision(device, generator, dtype, op_name):
    logits = randn(generator, 2, 9, 3, 4, dtype=dtype, device=device) * 3
    size = (3, 4) if op_name == "semantic_cross_entropy" else (10, 7)
    labels = labels_for(generator, (2, *size), 9, device)
    ours, theirs = leaf(logits), leaf(logits)
    loss = getattr(ops, op_name)(ours, labels)
    expected = getattr(reference, op_name)(theirs, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)  # float32 math inside
    loss.backward()
    expected.backward()
    assert ours.grad.dtype == dtype
    torch.testing.assert_close(ours.grad.float(), theirs.grad.float(), rtol=2e-2, atol=2e-3)


@needs_triton
def test_invalid_label_gives_nan(device, generator):
    logits = randn(generator, 1, 3, 2, 2, device=device)
    labels = torch.tensor([[[0, 1], [3, 2]]], device=device)  # 3 is neither a class nor ignored
    assert torch.isnan(ops.semantic_cross_entropy(logits, labels))


@needs_triton
def test_without_grad_writes_none(device, generator, monkeypatch):
    logits = randn(generator, 1, 6, 3, 4, device=device)
    labels = labels_for(generator, (1, 3, 4), 6, device)
    from sfpn.kernels import cross_entropy as launcher

    seen = []
    launch = launcher.cross_entropy
    monkeypatch.setattr(launcher, "cross_entropy", lambda *args, **kwargs: seen.append(args[5]) or launch(*args, **kwargs))
    with torch.no_grad():
        loss = ops.semantic_cross_entropy(leaf(logits), labels)
    torch.testing.assert_close(loss, reference.semantic_cross_entropy(logits, labels), **FP32)
    assert seen == [False]


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("serving", SERVINGS)
@pytest.mark.parametrize("reduction, smoothing", [("mean", 0.0), ("mean", 0.2), ("sum", 0.1)])
@pytest.mark.parametrize("upsample", [False, True])
def test_cpu_gradient_is_exact(generator, upsample, reduction, smoothing, serving):
    logits = float64_leaf(generator, 2, 5, 3, 4)
    labels = torch.randint(0, 5, (2, 7, 6) if upsample else (2, 3, 4), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.3] = 255
    op, ref = (ops.upsample_cross_entropy, reference.upsample_cross_entropy) if upsample else (
        ops.semantic_cross_entropy, reference.semantic_cross_entropy)
    with served(serving):
        ours = torch.autograd.grad(op(logits, labels, 255, reduction, smoothing), logits)[0]
    theirs = torch.autograd.grad(ref(logits, labels, 255, reduction, smoothing), logits)[0]
    torch.testing.assert_close(ours, theirs)


@needs_triton
def test_upsample_reference_is_bilinear_then_cross_entropy(generator):
    """The references are the documented compositions (guards against a drifting definition)."""
    logits = randn(generator, 1, 4, 3, 5)
    labels = labels_for(generator, (1, 9, 10), 4, "cpu")
    up = F.interpolate(logits, (9, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        reference.upsample_cross_entropy(logits, labels), F.cross_entropy(up, labels, ignore_index=255)
    )


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


# What both kernels' property tests draw: the logits' shape and layout, the labels' ignored share.
DRAWN = dict(
    seed=seeds,
    batch=st.integers(1, 2),
    classes=st.integers(1, 40),
    size=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    upsample=st.booleans(),
    reduction=st.sampled_from(("mean", "sum")),
    ignored=st.sampled_from((0.0, 0.3, 1.0)),
    layout=layouts,
)


@pytest.mark.usefixtures("single_thread")
@examples(0.1)
@given(**DRAWN, label_smoothing=st.sampled_from((0.0, 0.1)), dtype=st.sampled_from(TRITON_DTYPES))
def test_drawn_inputs_match_reference(
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


# ------------------------------------------------------------------------------------------------
# Opcheck


@needs_triton
@pytest.mark.parametrize("op_name", ["semantic_cross_entropy", "upsample_cross_entropy"])
def test_opcheck(device, generator, op_name):
    logits = randn(generator, 2, 5, 3, 4, device=device).requires_grad_()
    size = (3, 4) if op_name == "semantic_cross_entropy" else (7, 6)
    labels = labels_for(generator, (2, *size), 5, device)
    op = getattr(torch.ops.sfpn, op_name)
    weight = torch.rand(5, generator=generator).to(device)
    torch.library.opcheck(op, (logits, labels, None, 255, "mean", 0.1, True))
    torch.library.opcheck(op, (logits, labels, weight, 255, "mean", 0.0, True))
    torch.library.opcheck(op, (logits.detach(), labels, None, 255, "sum", 0.0, False))


# ------------------------------------------------------------------------------------------------
# Argument checks


@needs_triton
def test_bad_inputs(generator):
    logits, labels = randn(generator, 2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.int64)
    with pytest.raises(TypeError, match="labels must have dtype"):
        ops.semantic_cross_entropy(logits, labels.float())
    with pytest.raises(ValueError, match="labels must have 3 dimensions"):
        ops.semantic_cross_entropy(logits, labels[None])
    with pytest.raises(ValueError, match="spatial size.*upsample_cross_entropy"):
        ops.semantic_cross_entropy(logits, labels[:, :3])
    with pytest.raises(ValueError, match="batch size"):
        ops.upsample_cross_entropy(logits, labels[:1])
    with pytest.raises(ValueError, match="reduction"):
        ops.semantic_cross_entropy(logits, labels, reduction="none")
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.upsample_cross_entropy(logits, labels, label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index"):
        ops.semantic_cross_entropy(logits, labels, ignore_index=255.0)
    with pytest.raises(ValueError, match="logits must have 4 dimensions"):
        ops.semantic_cross_entropy(logits[0], labels)
    with pytest.raises(ValueError, match=r"weight must hold one value per class \(3\)"):
        ops.semantic_cross_entropy(logits, labels, weight=torch.ones(4))
    with pytest.raises(TypeError, match="weight must have dtype"):
        ops.semantic_cross_entropy(logits, labels, weight=torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="weight and label_smoothing"):
        ops.upsample_cross_entropy(logits, labels, label_smoothing=0.1, weight=torch.ones(3))


# ------------------------------------------------------------------------------------------------
# The C++ CPU kernel


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@examples(0.1)
@given(
    **DRAWN,
    label_size=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    target=st.sampled_from(("plain", "smoothed", "weighted")),
    dtype=st.sampled_from(FLOAT_DTYPES),
)
def test_cpu_kernel_drawn_inputs_match_reference(
    seed, batch, classes, size, label_size, upsample, reduction, target, ignored, dtype, layout
):
    """upsample_cross_entropy at any scale (the labels may be smaller than the logits: bilinear
    down-sampling; ``upsample`` False: the logits' own size, the identity resize), any dtype and
    layout; the gradient comes back in the logits' dtype and layout."""
    g = torch.Generator().manual_seed(seed)
    logits = uniform(g, (batch, classes, *size), dtype, -4, 4)
    label_size = label_size if upsample else size
    labels = torch.randint(0, classes, (batch, *label_size), generator=g)
    labels[torch.rand(labels.shape, generator=g) < ignored] = 255
    smoothing = 0.1 if target == "smoothed" else 0.0
    weight = torch.rand(classes, generator=g, dtype=torch.float64) if target == "weighted" else None
    op, ref = ops.upsample_cross_entropy, reference.upsample_cross_entropy
    expected_logits = logits.double().requires_grad_()
    expected = ref(expected_logits, labels, 255, reduction, smoothing, weight=weight)
    got_logits = arrange(logits, layout).requires_grad_()
    out = op(got_logits, labels, 255, reduction, smoothing, weight=None if weight is None else weight.to(dtype if dtype == torch.float64 else torch.float32))
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if expected.isnan():  # every label ignored with the mean: 0 / 0, as F.cross_entropy
        assert out.isnan()
        return
    expected.backward()
    out.backward()
    assert_close(out, expected.to(out.dtype), out.dtype)
    assert got_logits.grad.dtype == dtype
    assert_close(got_logits.grad, expected_logits.grad.to(dtype), dtype)
    if layout == "channels_last" and not got_logits.is_contiguous():
        assert got_logits.grad.is_contiguous(memory_format=torch.channels_last)


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("width", [16, 37, 320])
@pytest.mark.parametrize("target", ["plain", "smoothed", "weighted"])
def test_cpu_kernel_wide_rows_match_reference(generator, width, target):
    """Label rows of 16 pixels and more, whose loss the kernel sums 16 pixels at a time in
    vector lanes (the rest one by one): 37 = two lanes' worth and a tail, 320 the default run's.
    A NaN logit in the first lanes makes the loss NaN, unless every pixel reading it is ignored."""
    logits = uniform(generator, (2, 6, 5, (width + 7) // 8), torch.float32, -6, 6)
    labels = torch.randint(0, 6, (2, 9, width), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = 255
    smoothing = 0.1 if target == "smoothed" else 0.0
    weight = torch.rand(6, generator=generator) if target == "weighted" else None
    op, ref = ops.upsample_cross_entropy, reference.upsample_cross_entropy
    for reduction in ("mean", "sum"):
        expected_logits = logits.double().requires_grad_()
        expected = ref(expected_logits, labels, 255, reduction, smoothing, weight=weight)
        got_logits = logits.clone().requires_grad_()
        out = op(got_logits, labels, 255, reduction, smoothing, weight=weight)
        expected.backward()
        out.backward()
        assert_close(out, expected.float(), torch.float32)
        assert_close(got_logits.grad, expected_logits.grad.float(), torch.float32)
    poisoned = logits.clone()
    poisoned[1, 2, 0, 0] = float("nan")
    # No pixel is labelled 2: the NaN reaches the loss through the log-sum-exp alone.
    relabelled = torch.where(labels == 2, 3, labels)
    assert op(poisoned, relabelled, 255, "sum", smoothing, weight=weight).isnan()
    hidden = labels.clone()
    hidden[1, :, :16] = 255  # the pixels reading the NaN, in rows that count: their NaN must not
    got = op(poisoned, hidden, 255, "sum", smoothing, weight=weight)
    assert_close(got, ref(poisoned.double(), hidden, 255, "sum", smoothing, weight=weight).float(), torch.float32)
    assert torch.isfinite(got)


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("target", ["plain", "smoothed", "weighted"])
@pytest.mark.parametrize("upsample", [False, True])
def test_cpu_kernel_gradient_against_finite_differences(generator, upsample, target):  # upsample False: same size
    """gradcheck's fast mode by hand, in float64: the gradient's product with random directions
    against central differences of the loss. (gradcheck itself runs the backward twice on one
    graph, which the op refuses: its backward scales the saved gradient in place.)"""
    logits = float64_leaf(generator, 2, 4, 3, 5).detach()
    labels = torch.randint(0, 4, (2, 7, 4) if upsample else (2, 3, 5), generator=generator)
    labels[0, 0] = 255
    op = ops.upsample_cross_entropy
    smoothing = 0.2 if target == "smoothed" else 0.0
    weight = torch.tensor([0.5, 0.0, 2.0, 1.0], dtype=torch.float64) if target == "weighted" else None

    def loss(x):
        return op(x, labels, 255, "mean", smoothing, weight=weight)

    grad = torch.autograd.grad(loss(logits.requires_grad_()), logits)[0]
    step = 1e-6
    for _ in range(5):
        direction = torch.randn(logits.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            numeric = (loss(logits + step * direction) - loss(logits - step * direction)) / (2 * step)
        torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-6, atol=1e-8)


@needs_cpu_kernel
def test_cpu_kernel_depends_on_the_thread_count_only(generator):
    """Each thread's run adds into its own buffer, summed in run order: a repeated call is bitwise
    equal, and another thread count changes the result by rounding only."""
    logits = randn(generator, 1, 32, 16, 16).requires_grad_()
    labels = labels_for(generator, (1, 128, 128), 32, "cpu")  # 2^19 class-pixels: two runs on two threads

    def loss_and_grad():
        loss = ops.upsample_cross_entropy(logits, labels, reduction="sum")
        return loss, torch.autograd.grad(loss, logits)[0]

    first, again, one_thread = (at_thread_count(threads, loss_and_grad) for threads in (2, 2, 1))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    torch.testing.assert_close(first[0], one_thread[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(first[1], one_thread[1], **FP32)


@pytest.mark.parametrize("serving", SERVINGS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("upsample", [False, True])
def test_cpu_op_with_every_pixel_ignored(generator, upsample, reduction, serving):
    """The mean is 0 / 0 = NaN and the sum 0, as F.cross_entropy; the gradient is 0 either way
    (a NaN there would poison every weight the step updates)."""
    logits = randn(generator, 1, 4, 3, 3).requires_grad_()
    labels = torch.full((1, 7, 7) if upsample else (1, 3, 3), 255, dtype=torch.uint8)
    op = ops.upsample_cross_entropy if upsample else ops.semantic_cross_entropy
    with served(serving):
        loss = op(logits, labels, reduction=reduction)
    assert loss.isnan() if reduction == "mean" else loss == 0
    assert torch.equal(torch.autograd.grad(loss, logits)[0], torch.zeros_like(logits))


@needs_cpu_kernel
def test_cpu_kernel_refuses_what_the_python_checks_refuse(generator):
    """A direct call (torch.ops.sfpn.*, past the Python checks) gets the kernel's own errors; a label
    that is neither a class nor ignore_index raises (the CUDA kernel gives NaN, see above)."""
    logits, labels = randn(generator, 2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.int64)
    op = torch.ops.sfpn.upsample_cross_entropy
    with pytest.raises(RuntimeError, match=r"labels must be classes in \[0, 3\) or ignore_index \(255\), got 7"):
        op(logits, labels + 7, None, 255, "mean", 0.0, False)
    with pytest.raises(RuntimeError, match="labels must be integer classes"):
        op(logits, labels.float(), None, 255, "mean", 0.0, False)
    with pytest.raises(RuntimeError, match="reduction must be 'mean' or 'sum'"):
        op(logits, labels, None, 255, "none", 0.0, False)
    with pytest.raises(RuntimeError, match="weight and label_smoothing"):
        op(logits, labels, torch.ones(3), 255, "mean", 0.1, False)
    with pytest.raises(RuntimeError, match=r"labels must be classes in \[0, 3\) or ignore_index \(255\), got -1"):
        ops.upsample_cross_entropy(logits, labels - 1)
