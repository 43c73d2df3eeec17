"""Every CUDA kernel of csrc/cuda/, executed on the CPU, against the pure-PyTorch references.

The .cu files are compiled a second time by the host compiler against our CUDA emulation
(csrc/emulation/cuda_emulation.h) into the test library ``sfpn_emulated``: the same kernels, launch
geometry and host entry functions as the GPU build. Each block's threads run as fibers, one at a
time between barriers, in an order shuffled by the seed (a missing ``__syncthreads`` or a shared
memory race gives a wrong answer under some seed); blocks run one after another in a shuffled
order; every buffer a kernel touches ends at an inaccessible page (an out-of-bounds access fails
the launch with the kernel's name). Shapes are small, yet every kernel runs several blocks.
"""
import pytest
import torch

from sfpn.ops import reference

from cuda_emulation_build import load
from nms_threshold_pairs import THRESHOLDS, expected_keep, threshold_pairs
from test_upsample_argmax import assert_class_map, expected_upsampled

pytestmark = pytest.mark.usefixtures("single_thread")

SEEDS = (0, 1, 2)
RESIZE_MODES = [("nearest", False), ("bilinear", False), ("bilinear", True)]


@pytest.fixture(scope="module")
def emulated():
    """The emulated ops (torch.ops.sfpn_emulated), built once per session."""
    return load()


def _checked_copy(arg):
    if isinstance(arg, torch.Tensor):
        return arg.clone()
    if isinstance(arg, list):
        return [_checked_copy(a) for a in arg]
    return arg


def run(emulated, name, *args, seed=0):
    """Calls emulated op `name` under `seed` with checked copies of the tensor arguments: the
    kernels see only buffers that end at an inaccessible page, as do the outputs."""
    emulated.set_seed(seed)
    emulated.set_checked_memory(True)
    try:
        return getattr(emulated, name)(*(_checked_copy(a) for a in args))
    finally:
        emulated.set_checked_memory(False)


def assert_close(actual, expected, dtype=torch.float32):
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)


# ---- upsample_add -----------------------------------------------------------------------------
# (top, lateral) sizes: odd up-sampling, a W that takes the 16-byte vector path, down-sampling.
UPSAMPLE_SIZES = [((5, 7), (11, 13)), ((5, 8), (10, 16)), ((9, 11), (4, 6))]


@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("top_size,lateral_size", UPSAMPLE_SIZES)
def test_upsample_add_forward(emulated, generator, mode, align_corners, top_size, lateral_size):
    top = torch.randn(2, 4, *top_size, generator=generator)
    lateral = torch.randn(2, 4, *lateral_size, generator=generator)
    out = run(emulated, "upsample_add", top, lateral, mode, align_corners)
    assert_close(out, reference.upsample_add(top, lateral, mode, align_corners))


@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("top_size,lateral_size", UPSAMPLE_SIZES)
def test_upsample_add_backward(emulated, generator, mode, align_corners, top_size, lateral_size):
    top = torch.randn(2, 4, *top_size, generator=generator, dtype=torch.float64, requires_grad=True)
    lateral = torch.randn(2, 4, *lateral_size, generator=generator, dtype=torch.float64)
    grad = torch.randn_like(lateral)
    reference.upsample_add(top, lateral, mode, align_corners).backward(grad)
    grad_top = run(emulated, "upsample_add_backward", grad, top_size[0], top_size[1], mode, align_corners)
    assert_close(grad_top, top.grad, torch.float64)


def test_upsample_add_half(emulated, generator):
    top = torch.randn(2, 4, 5, 8, generator=generator).half()
    lateral = torch.randn(2, 4, 10, 16, generator=generator).half()
    out = run(emulated, "upsample_add", top, lateral, "bilinear", False)
    expected = reference.upsample_add(top.float(), lateral.float(), "bilinear", False)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


# ---- semantic_fuse ----------------------------------------------------------------------------
# Up (P2), identity (P3), down (P4, P5, odd sizes); and more levels than one launch takes (8).
FUSE_LEVELS = [[(20, 28), (10, 14), (5, 7), (3, 4)], [(3 + k, 5 + 2 * k) for k in range(9)]]


@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("sizes", FUSE_LEVELS, ids=["fpn", "nine-levels"])
def test_semantic_fuse_forward(emulated, generator, mode, align_corners, sizes):
    semantic = torch.randn(1, 3, 10, 14, generator=generator)
    levels = [torch.randn(1, 3, *size, generator=generator) for size in sizes]
    fused = run(emulated, "semantic_fuse", levels, semantic, mode, align_corners)
    expected = reference.semantic_fuse(levels, semantic, mode, align_corners)
    assert len(fused) == len(expected)
    for out, ref in zip(fused, expected):
        assert_close(out, ref)


@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("sizes", FUSE_LEVELS, ids=["fpn", "nine-levels"])
def test_semantic_fuse_backward(emulated, generator, mode, align_corners, sizes):
    semantic = torch.randn(1, 3, 10, 14, generator=generator, dtype=torch.float64, requires_grad=True)
    levels = [torch.randn(1, 3, *size, generator=generator, dtype=torch.float64) for size in sizes]
    grads = [torch.randn_like(level) for level in levels]
    fused = reference.semantic_fuse(levels, semantic, mode, align_corners)
    torch.autograd.backward(fused, grads)
    grad_semantic = run(emulated, "semantic_fuse_backward", grads, 10, 14, mode, align_corners)
    assert_close(grad_semantic, semantic.grad, torch.float64)


# ---- upsample_argmax --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("num_classes,logits_size,size,crop", [
    (7, (5, 6), (40, 48), (37, 45)),  # 8x, cropped: the detector's case
    (3, (4, 7), (11, 17), (11, 17)),  # sizes that do not divide
    (1, (3, 3), (9, 9), (9, 9)),
])
def test_upsample_argmax(emulated, generator, seed, dtype, num_classes, logits_size, size, crop):
    logits = (3 * torch.randn(num_classes, *logits_size, generator=generator)).to(dtype)
    got = run(emulated, "upsample_argmax", logits, list(size), list(crop), seed=seed)
    assert_class_map(got, expected_upsampled(logits, size, crop))


def test_upsample_argmax_nan_and_empty(emulated, generator):
    logits = torch.randn(4, 5, 5, generator=generator)
    logits[2, 1, 3] = float("nan")
    got = run(emulated, "upsample_argmax", logits, [20, 20], [20, 20])
    upsampled = expected_upsampled(logits, (20, 20), None)
    nan = upsampled.isnan().any(0)
    assert nan.any() and torch.equal(got[nan], upsampled.argmax(0)[nan])
    assert run(emulated, "upsample_argmax", logits, [20, 20], [0, 20]).shape == (0, 20)


# ---- roi_align and multilevel_roi_align -------------------------------------------------------
def random_rois(generator, count, batch_size, height, width, min_size=1.0, max_size=None):
    """(count, 5) RoIs [batch, x1, y1, x2, y2]; some reach past the map's borders."""
    max_size = max_size or max(height, width) * 0.6
    size = min_size + torch.rand(count, 2, generator=generator) * (max_size - min_size)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 1.2 - size * 0.3
    batch = torch.randint(0, batch_size, (count, 1), generator=generator).float()
    return torch.cat([batch, corner, corner + size], dim=1)


ROI_CASES = [(2, True), (-1, False), (-1, True)]  # (sampling_ratio, aligned)


@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES)
def test_roi_align_forward(emulated, generator, sampling_ratio, aligned):
    input = torch.randn(2, 3, 13, 17, generator=generator)
    rois = random_rois(generator, 24, 2, 26, 34)
    out = run(emulated, "roi_align", input, rois, 0.5, 5, 4, sampling_ratio, aligned, False)
    assert_close(out, reference.roi_align(input, rois, (5, 4), 0.5, sampling_ratio, aligned))


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES)
def test_roi_align_backward(emulated, generator, sampling_ratio, aligned, deterministic):
    input = torch.randn(2, 3, 13, 17, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(generator, 24, 2, 26, 34).double()
    grad = torch.randn(24, 3, 5, 4, generator=generator, dtype=torch.float64)
    reference.roi_align(input, rois, (5, 4), 0.5, sampling_ratio, aligned).backward(grad)
    grad_input = run(emulated, "roi_align_backward", grad, rois, 0.5, 5, 4, 2, 3, 13, 17, sampling_ratio, aligned,
                     deterministic)
    assert_close(grad_input, input.grad, torch.float64)


def test_roi_align_deterministic_backward_is_bit_identical(emulated, generator):
    """The same bits under every seed (block and thread order) and on every run."""
    rois = random_rois(generator, 40, 2, 26, 34, max_size=12.0)  # small RoIs: many shared pixels
    grad = torch.randn(40, 3, 5, 4, generator=generator)
    results = [
        run(emulated, "roi_align_backward", grad, rois, 0.5, 5, 4, 2, 3, 13, 17, -1, True, True, seed=seed)
        for seed in SEEDS + SEEDS[:1]
    ]
    for result in results[1:]:
        assert torch.equal(result, results[0])


# A 512 x 512 image: FPN levels P2..P5 and boxes of 20 to 500 pixels, so every level gets RoIs.
ML_SIZES = [(128, 128), (64, 64), (32, 32), (16, 16)]
ML_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def multilevel_inputs(generator, dtype):
    levels = [torch.randn(2, 2, *size, generator=generator, dtype=dtype) for size in ML_SIZES]
    rois = random_rois(generator, 20, 2, 512, 512, min_size=20.0, max_size=500.0).to(dtype)
    return levels, rois


@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES)
def test_multilevel_roi_align_forward(emulated, generator, sampling_ratio, aligned):
    levels, rois = multilevel_inputs(generator, torch.float32)
    out = run(emulated, "multilevel_roi_align", levels, rois, ML_SCALES, 7, 7, sampling_ratio, aligned, 224.0, 4,
              False)
    expected = reference.multilevel_roi_align(levels, rois, (7, 7), ML_SCALES, sampling_ratio, aligned)
    assert_close(out, expected)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("sampling_ratio,aligned", ROI_CASES[:2])
def test_multilevel_roi_align_backward(emulated, generator, sampling_ratio, aligned, deterministic):
    levels, rois = multilevel_inputs(generator, torch.float64)
    for level in levels:
        level.requires_grad_(True)
    grad = torch.randn(20, 2, 7, 7, generator=generator, dtype=torch.float64)
    reference.multilevel_roi_align(levels, rois, (7, 7), ML_SCALES, sampling_ratio, aligned).backward(grad)
    heights, widths = [h for h, _ in ML_SIZES], [w for _, w in ML_SIZES]
    grads = run(emulated, "multilevel_roi_align_backward", grad, rois, ML_SCALES, 2, 2, heights, widths,
                sampling_ratio, aligned, 224.0, 4, deterministic)
    for out, level in zip(grads, levels):
        assert_close(out, level.grad, torch.float64)


@pytest.mark.parametrize("op", ["forward", "atomic", "deterministic"])
@pytest.mark.parametrize("bad,message", [
    ((0, 2.0), "batch index lies outside"),
    ((0, -1.0), "batch index lies outside"),
    ((3, float("nan")), "non-finite coordinate"),
    ((4, float("inf")), "non-finite coordinate"),
])
def test_roi_align_kernels_assert_valid_rois(emulated, generator, op, bad, message):
    """Bad RoIs fail a device-side assertion (no host sync), which names the kernel."""
    input = torch.randn(2, 3, 13, 17, generator=generator)
    rois = random_rois(generator, 8, 2, 26, 34)
    rois[5, bad[0]] = bad[1]
    if op == "forward":
        call, kernel = ("roi_align", input, rois, 0.5, 5, 4, 2, True, False), "forward_kernel"
    else:
        grad = torch.randn(8, 3, 5, 4, generator=generator)
        kernel = "count_taps_kernel" if op == "deterministic" else "backward_atomic_kernel"
        call = ("roi_align_backward", grad, rois, 0.5, 5, 4, 2, 3, 13, 17, 2, True, op == "deterministic")
    with pytest.raises(RuntimeError, match=f"{kernel}.*{message}"):
        run(emulated, *call)


# ---- nms, batched_nms, batched_nms_padded ------------------------------------------------------
def crowded_boxes(generator, count, extent=200.0, box_size=40.0):
    """(count, 4) boxes crowded enough that most overlap several others, and scores with ties."""
    corner = torch.rand(count, 2, generator=generator) * extent
    size = 4 + torch.rand(count, 2, generator=generator) * box_size
    scores = torch.randint(0, 50, (count,), generator=generator).float() / 50  # many ties
    return torch.cat([corner, corner + size], dim=1), scores


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("count", [1, 63, 1000])
def test_nms(emulated, generator, seed, count):
    boxes, scores = crowded_boxes(generator, count)
    kept = run(emulated, "nms", boxes, scores, 0.5, seed=seed)
    assert torch.equal(kept, reference.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("seed", SEEDS)
def test_nms_one_class_beyond_64_by_64_boxes(emulated, generator, seed):
    """4200 boxes in one class: the scan walks 66 row blocks of mask words in one CTA."""
    boxes, scores = crowded_boxes(generator, 4200, extent=400.0)
    classes = torch.full((4200,), 3, dtype=torch.int64)
    kept = run(emulated, "batched_nms", boxes, scores, classes, 0.6, seed=seed)
    assert torch.equal(kept, reference.batched_nms(boxes, scores, classes, 0.6))


@pytest.mark.parametrize("seed", SEEDS)
def test_batched_nms_many_classes(emulated, generator, seed):
    """1000 boxes over 37 of 80 class ids (the others empty), runs crossing 64-box blocks."""
    boxes, scores = crowded_boxes(generator, 1000, extent=120.0)
    present = torch.randperm(80, generator=generator)[:37]
    classes = present[torch.randint(0, 37, (1000,), generator=generator)]
    kept = run(emulated, "batched_nms", boxes, scores, classes, 0.5, seed=seed)
    assert torch.equal(kept, reference.batched_nms(boxes, scores, classes, 0.5))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_out", [0, 50, 700])
def test_batched_nms_padded(emulated, generator, seed, max_out):
    """max_out below the kept count truncates, above it pads with -1."""
    boxes, scores = crowded_boxes(generator, 700, extent=150.0)
    classes = torch.randint(0, 5, (700,), generator=generator)
    indices, count = run(emulated, "batched_nms_padded", boxes, scores, classes, 0.5, max_out, seed=seed)
    expected_indices, expected_count = reference.batched_nms_padded(boxes, scores, classes, 0.5, max_out)
    assert 0 < expected_count < 700 or max_out == 0
    assert torch.equal(indices, expected_indices) and torch.equal(count, expected_count)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_nms_at_the_threshold(emulated, dtype):
    """IoUs at float32(threshold) and a float32 step either side: the kernel decides as torchvision's
    CPU kernel and the reference do (the IoU compared with the threshold as a float64)."""
    for threshold in THRESHOLDS:
        boxes, scores = threshold_pairs(threshold)
        if dtype == torch.float16:  # only the pairs half holds exactly, one per class (no offsets)
            boxes[:, [0, 2]] -= boxes[:, [0]]
            exact = (boxes.half().float() == boxes).all(1).view(-1, 2).all(1)
            boxes = boxes.view(-1, 2, 4)[exact].reshape(-1, 4)
            scores = torch.ones(boxes.shape[0])
        classes = torch.arange(boxes.shape[0]) // 2
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        expected = expected_keep(boxes, threshold)
        assert torch.equal(reference.batched_nms(boxes, scores, classes, threshold), expected)
        assert torch.equal(run(emulated, "batched_nms", boxes, scores, classes, threshold), expected)
        if dtype != torch.float16:
            assert torch.equal(run(emulated, "nms", boxes, scores, threshold), expected)


def test_nms_empty(emulated):
    boxes, scores = torch.zeros(0, 4), torch.zeros(0)
    assert run(emulated, "nms", boxes, scores, 0.5).shape == (0,)
    indices, count = run(emulated, "batched_nms_padded", boxes, scores, torch.zeros(0, dtype=torch.int64), 0.5, 4)
    assert indices.tolist() == [-1] * 4 and count.item() == 0


# ---- the emulation itself: it fails kernels with planted bugs (tests/native/emulated/selftest.cpp)
def test_emulation_runs_a_correct_shared_memory_kernel_under_every_seed(emulated, generator):
    input = torch.randn(4 * 64, generator=generator)
    expected = input.view(4, 64).roll(-1, dims=1).flatten()
    for seed in SEEDS:
        assert torch.equal(run(emulated, "selftest_rotate", input, True, seed=seed), expected)


def test_emulation_exposes_a_missing_barrier(emulated, generator):
    """Without the barrier some thread reads the tile before its neighbour wrote it."""
    input = torch.randn(4 * 64, generator=generator)
    expected = input.view(4, 64).roll(-1, dims=1).flatten()
    results = [run(emulated, "selftest_rotate", input, False, seed=seed) for seed in SEEDS]
    assert not any(torch.equal(result, expected) for result in results)


def test_emulation_reports_out_of_bounds_global_write(emulated):
    with pytest.raises(RuntimeError, match=r"overrun_kernel.*0 bytes past the end of a 2000-byte buffer"):
        run(emulated, "selftest_overrun", torch.zeros(500))


def test_emulation_reports_out_of_bounds_shared_write(emulated):
    with pytest.raises(RuntimeError, match=r"shared_overrun_kernel.*past the end of a 256-byte buffer.*thread \(63"):
        run(emulated, "selftest_shared_overrun", torch.zeros(64))


def test_emulation_reports_failed_device_assertion(emulated):
    input = torch.ones(64)
    input[17] = -1
    with pytest.raises(RuntimeError, match=r"assert_kernel.*a negative input.*thread \(17, 0, 0\)"):
        run(emulated, "selftest_check_nonnegative", input)
    run(emulated, "selftest_check_nonnegative", torch.ones(64))  # and passes a valid input
