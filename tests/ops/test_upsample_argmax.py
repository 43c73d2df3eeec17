"""upsample_argmax: the class map of bilinearly upsampled logits, the C++ kernel and both
references (the op and the banded one) against ``F.interpolate(...).argmax(0)`` (dtypes,
layouts, NaN, empty crops, determinism across thread counts), argument checks, opcheck, the
CUDA kernel on the CPU (emulation)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from sfpn import _extension
from sfpn.ops import _library, reference, upsample_argmax

from cuda_emulation import SEEDS, run
from op_helpers import at_thread_count

pytestmark = [pytest.mark.upsample_argmax, pytest.mark.usefixtures("single_thread")]


requires_kernels = pytest.mark.skipif(not _extension.STATUS.loaded, reason="sfpn._C is not loaded")

# (K, logits (h, w), size (H, W), crop (H', W') or None): the detector's 8x, sizes that do not
# divide, a crop inside padding, one class, a 1x1 grid, the logits' own size, down-sampling.
CASES = [
    (7, (32, 40), (256, 320), (250, 317)),
    (3, (5, 7), (37, 61), None),
    (81, (13, 9), (104, 72), (99, 70)),
    (1, (4, 4), (32, 32), (32, 32)),
    (4, (1, 1), (5, 9), (3, 9)),
    (5, (6, 7), (6, 7), None),
    (6, (13, 9), (7, 5), (6, 5)),
    (300, (9, 11), (45, 300), (40, 290)),  # the column tile (256) and a remainder; K > the tile
]
CASE_IDS = [f"K{k}-{h}x{w}-to-{H}x{W}" for k, (h, w), (H, W), _ in CASES]

# Each way of serving the op: the C++ kernel through the dispatcher, the dispatcher's reference,
# and the public reference with small bands (several per call).
SERVINGS = ["kernel", "reference-op", "reference-banded"]


def expected_upsampled(logits, size, crop):
    """``(K, H', W')`` float32: F.interpolate of the logits (in float32), cropped."""
    upsampled = F.interpolate(logits[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
    crop_h, crop_w = crop or size
    return upsampled[:, :crop_h, :crop_w]


def assert_class_map(got, upsampled, rtol=1e-5):
    """``got`` (H', W') int64 is ``upsampled.argmax(0)`` up to near-ties: the value it picks is the
    maximum (to float32 rounding of another summation order), and wherever the two best classes
    are clearly apart it is the very same class."""
    assert got.dtype == torch.int64 and got.shape == upsampled.shape[1:]
    if got.numel() == 0:
        return
    maximum = upsampled.max(0).values
    picked = upsampled.gather(0, got[None])[0]
    torch.testing.assert_close(picked, maximum, rtol=rtol, atol=rtol)
    if upsampled.shape[0] == 1:
        assert (got == 0).all()
        return
    top2 = upsampled.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4 * (1 + top2[0].abs())
    assert clear.float().mean() > 0.95, "too few pixels with a clear winner: the test would prove little"
    assert torch.equal(got[clear], upsampled.argmax(0)[clear])


def serve(serving, logits, size, crop):
    if serving == "kernel":
        return upsample_argmax(logits, size, crop)
    if serving == "reference-op":
        with _library.references():
            return upsample_argmax(logits, size, crop)
    return reference.upsample_argmax(logits, size, crop, chunk_elements=logits.shape[0] * 40)


def random_logits(generator, num_classes, size, dtype=torch.float32):
    return (3 * torch.randn(num_classes, *size, generator=generator)).to(dtype)


# ------------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("serving", SERVINGS)
@pytest.mark.parametrize("num_classes,logits_size,size,crop", CASES, ids=CASE_IDS)
def test_matches_interpolate_then_argmax(generator, serving, num_classes, logits_size, size, crop):
    if serving == "kernel" and not _extension.STATUS.loaded:
        pytest.skip("sfpn._C is not loaded")
    logits = random_logits(generator, num_classes, logits_size)
    assert_class_map(serve(serving, logits, size, crop), expected_upsampled(logits, size, crop))


def region_logits(generator, num_classes, size, block):
    """``(K, h, w)`` logits of a trained model's kind: regions of one class, ``block`` source
    pixels on a side, the region's class ahead by 4 +- noise, so that most cells (four source
    pixels) share a clear winner and the boundaries between regions do not."""
    h, w = size
    labels = torch.randint(0, num_classes, (-(-h // block), -(-w // block)), generator=generator)
    labels = labels.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    one_hot = F.one_hot(labels, num_classes).permute(2, 0, 1).float()
    return 4 * one_hot + 0.5 * torch.randn(num_classes, h, w, generator=generator)


def noise_or_regions(generator, kind, num_classes, size):
    """Logits the kernel blends over whole rows (noise) or cell by cell (regions of one class)."""
    if kind == "noise":
        return random_logits(generator, num_classes, size)
    return region_logits(generator, num_classes, size, block=3)


@pytest.mark.parametrize("serving", SERVINGS)
@pytest.mark.parametrize("num_classes,logits_size,size,crop,block", [
    (11, (40, 40), (320, 320), (288, 300), 5),
    (81, (25, 42), (200, 336), None, 3),
    (3, (9, 14), (61, 101), (60, 97), 2),
    (7, (12, 12), (8, 8), None, 4),  # down-sampling
], ids=["default-run", "coco-like", "odd-sizes", "down"])
def test_regions_of_one_class(generator, serving, num_classes, logits_size, size, crop, block):
    """Where the kernel decides a pixel from its cell's candidates alone (one inside a region) and
    where it blends two or more (on a boundary): the class map is argmax's."""
    if serving == "kernel" and not _extension.STATUS.loaded:
        pytest.skip("sfpn._C is not loaded")
    logits = region_logits(generator, num_classes, logits_size, block)
    assert_class_map(serve(serving, logits, size, crop), expected_upsampled(logits, size, crop))


@requires_kernels
@pytest.mark.parametrize("kind", ["noise", "regions"])
def test_infinities_as_in_interpolate(generator, kind):
    """A cell with an infinity keeps every class: the blend there is F.interpolate's, inf or NaN
    (inf times a zero weight), and the class map argmax's of it."""
    logits = noise_or_regions(generator, kind, 5, (6, 7))
    logits[2, 3, 4] = float("inf")
    logits[4, 1, 1] = -float("inf")
    logits[0, 5, 6] = float("inf")
    got = upsample_argmax(logits, (24, 28))
    upsampled = expected_upsampled(logits, (24, 28), None)
    infinite = ~upsampled.isfinite().all(0)
    assert infinite.any() and upsampled.isnan().any()
    assert torch.equal(got[infinite], upsampled.argmax(0)[infinite])
    assert_class_map(got[~infinite].view(1, -1), upsampled[:, ~infinite].view(5, 1, -1))


@pytest.mark.parametrize("serving", SERVINGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_blend_in_their_accumulation_type(generator, serving, dtype):
    """Half-precision logits are blended in float32, not rounded to their dtype in between (as
    F.interpolate's output would be): the class map is that of the float32 upsampling."""
    if serving == "kernel" and not _extension.STATUS.loaded:
        pytest.skip("sfpn._C is not loaded")
    logits = random_logits(generator, 9, (11, 14), dtype)
    got = serve(serving, logits, (88, 112), (85, 107))
    upsampled = F.interpolate(logits[None].double(), size=(88, 112), mode="bilinear")[0, :, :85, :107]
    assert_class_map(got, upsampled.float(), rtol=1e-5)


@pytest.mark.parametrize("serving", SERVINGS)
def test_non_contiguous_logits(generator, serving):
    if serving == "kernel" and not _extension.STATUS.loaded:
        pytest.skip("sfpn._C is not loaded")
    logits = random_logits(generator, 12, (9, 5)).transpose(1, 2)[::2]  # (6, 5, 9), strided
    assert not logits.is_contiguous()
    assert_class_map(serve(serving, logits, (40, 72), None), expected_upsampled(logits, (40, 72), None))


@requires_kernels
@pytest.mark.parametrize("kind", ["noise", "regions"])
def test_nan_is_the_maximum_as_in_argmax(generator, kind):
    """torch.argmax takes NaN for the largest value (its first one): so does the kernel."""
    logits = noise_or_regions(generator, kind, 5, (6, 6))
    logits[3, 2, 4] = float("nan")
    logits[1, 2, 5] = float("nan")
    got = upsample_argmax(logits, (24, 24))
    upsampled = expected_upsampled(logits, (24, 24), None)
    nan = upsampled.isnan().any(0)
    assert nan.any() and (~nan).any()
    assert torch.equal(got[nan], upsampled.argmax(0)[nan])
    assert_class_map(got[~nan].view(1, -1), upsampled[:, ~nan].view(5, 1, -1))


@requires_kernels
def test_kernel_is_deterministic_and_thread_count_independent(generator):
    logits = random_logits(generator, 21, (16, 20))
    once = upsample_argmax(logits, (128, 160), (121, 150))
    assert torch.equal(at_thread_count(2, lambda: upsample_argmax(logits, (128, 160), (121, 150))), once)


@pytest.mark.parametrize("serving", SERVINGS)
@pytest.mark.parametrize("size,crop", [((0, 0), None), ((16, 20), (0, 20)), ((16, 20), (16, 0)), ((0, 7), (0, 7))])
def test_empty_outputs(generator, serving, size, crop):
    if serving == "kernel" and not _extension.STATUS.loaded:
        pytest.skip("sfpn._C is not loaded")
    got = serve(serving, random_logits(generator, 3, (2, 3)), size, crop)
    assert got.shape == tuple(crop or size) and got.dtype == torch.int64


# ------------------------------------------------------------------------------------------------
# Opcheck


@pytest.mark.parametrize("serving", ["kernel", "reference-op"])
def test_opcheck(generator, serving):
    if serving == "kernel" and not _extension.STATUS.loaded:
        pytest.skip("sfpn._C is not loaded")
    with _library.references() if serving == "reference-op" else contextlib.nullcontext():
        for dtype in (torch.float32, torch.bfloat16):
            logits = random_logits(generator, 5, (6, 7), dtype)
            torch.library.opcheck(torch.ops.sfpn.upsample_argmax, (logits, [48, 56], [45, 50]))


# ------------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize(
    "logits,size,crop,error,match",
    [
        (torch.zeros(2, 3), (8, 8), None, ValueError, "logits must have 3 dimensions"),
        (torch.zeros(0, 3, 3), (8, 8), None, ValueError, "logits must not be empty"),
        (torch.zeros(2, 3, 3, dtype=torch.int64), (8, 8), None, TypeError, "logits must have dtype"),
        ([[[0.0]]], (8, 8), None, TypeError, "logits must be a torch.Tensor"),
        (torch.zeros(2, 3, 3), (8,), None, TypeError, "size must be a pair"),
        (torch.zeros(2, 3, 3), (8, 8.0), None, TypeError, "size must be a pair"),
        (torch.zeros(2, 3, 3), (-1, 8), None, ValueError, "size must be >= 0"),
        (torch.zeros(2, 3, 3), (8, 8), (9, 8), ValueError, "crop must lie within size"),
        (torch.zeros(2, 3, 3), (8, 8), (8, -1), ValueError, "crop must lie within size"),
        (torch.zeros(2, 3, 3), (8, 8), 8, TypeError, "crop must be a pair"),
    ],
)
def test_bad_arguments_name_the_argument(logits, size, crop, error, match):
    with pytest.raises(error, match=match):
        upsample_argmax(logits, size, crop)


@requires_kernels
@pytest.mark.parametrize(
    "logits,size,crop,match",
    [
        (torch.zeros(2, 3), [8, 8], [8, 8], "logits must be \\(K, h, w\\)"),
        (torch.zeros(2, 0, 3), [8, 8], [8, 8], "logits must not be empty"),
        (torch.zeros(2, 3, 3), [-1, 8], [0, 0], "size must be \\(H, W\\) with H, W >= 0"),
        (torch.zeros(2, 3, 3), [8, 8], [8, 9], "crop must lie within size"),
    ],
)
def test_kernel_checks_direct_calls(logits, size, crop, match):
    """A direct call of the op (no Python checks) gets the kernel's error naming the argument."""
    with pytest.raises(RuntimeError, match=f"sfpn::upsample_argmax: {match}"):
        torch.ops.sfpn.upsample_argmax(logits, size, crop)


# ------------------------------------------------------------------------------------------------
# CUDA kernels on the CPU (emulation)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("num_classes,logits_size,size,crop", [
    (7, (5, 6), (40, 48), (37, 45)),  # 8x, cropped: the detector's case
    (3, (4, 7), (11, 17), (11, 17)),  # sizes that do not divide
    (1, (3, 3), (9, 9), (9, 9)),
])
def test_emulated_matches_interpolate_then_argmax(emulated, generator, seed, dtype, num_classes, logits_size, size, crop):
    logits = (3 * torch.randn(num_classes, *logits_size, generator=generator)).to(dtype)
    got = run(emulated, "upsample_argmax", logits, list(size), list(crop), seed=seed)
    assert_class_map(got, expected_upsampled(logits, size, crop))


def test_emulated_nan_and_empty(emulated, generator):
    logits = torch.randn(4, 5, 5, generator=generator)
    logits[2, 1, 3] = float("nan")
    got = run(emulated, "upsample_argmax", logits, [20, 20], [20, 20])
    upsampled = expected_upsampled(logits, (20, 20), None)
    nan = upsampled.isnan().any(0)
    assert nan.any() and torch.equal(got[nan], upsampled.argmax(0)[nan])
    assert run(emulated, "upsample_argmax", logits, [20, 20], [0, 20]).shape == (0, 20)
