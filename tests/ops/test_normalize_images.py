"""normalize_images: the C++ CPU kernel (csrc/cpu/normalize_images.cpp) against the reference, bit for
bit, in each output dtype and layout, for images of several sizes and channel counts (the RGB row
and the general one) lying planar, interleaved (a decoded image permuted) or strided otherwise,
NaN and infinities, drawn inputs; the zero padding, opcheck, argument checks."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import _library
from sfpn.ops.normalize_images import OUTPUT_DTYPES, normalize_images_reference

from op_helpers import assert_same_bits_at_thread_counts
from op_strategies import examples, seeds

pytestmark = pytest.mark.normalize_images

needs_cpu_kernel = pytest.mark.skipif(_library.serving("normalize_images", "cpu") != "C++",
                                      reason="sfpn._C not built")
#: (channels, image sizes (h, w), batch size (H, W)): RGB images of a detector's batch, one as
#: large as the batch, odd sizes, one channel, four channels, a one-pixel image.
CASES = [
    (3, [(256, 320), (250, 300), (17, 23)], (256, 320)),
    (3, [(31, 45)], (32, 64)),
    (1, [(7, 9), (12, 5)], (12, 16)),
    (4, [(5, 6), (1, 1)], (8, 8)),
]


def arranged(image, layout):
    """``image (C, h, w)`` with the same values, laid out planar, interleaved ((h, w, C) in memory,
    as ``torch.from_numpy(hwc).permute(2, 0, 1)`` gives) or as a strided view into a larger one."""
    if layout == "interleaved":
        return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    if layout == "strided":
        larger = torch.zeros(image.shape[0], image.shape[1] + 3, image.shape[2] + 2)
        larger[:, 1 : 1 + image.shape[1], 2:] = image
        return larger[:, 1 : 1 + image.shape[1], 2:]
    return image


def statistics(channels):
    mean = torch.tensor([0.485, 0.456, 0.406, 0.5][:channels])
    std = torch.tensor([0.229, 0.224, 0.225, 0.25][:channels])
    return mean, std


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", OUTPUT_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("layout", ["planar", "interleaved", "strided"])
@pytest.mark.parametrize("channels, image_sizes, size", CASES)
def test_cpu_kernel_matches_reference_bit_for_bit(generator, channels, image_sizes, size, layout, dtype,
                                                  channels_last):
    """The same values and strides as the reference; the padding right of and below each image is 0."""
    images = [arranged(torch.rand(channels, h, w, generator=generator) * 255, layout) for h, w in image_sizes]
    mean, std = statistics(channels)
    got = ops.normalize_images(images, mean, std, size, dtype, channels_last)
    want = normalize_images_reference(images, mean, std, size, dtype, channels_last)
    assert got.dtype == dtype and got.shape == want.shape and got.stride() == want.stride()
    assert torch.equal(got, want)
    for slot, (h, w) in zip(got, image_sizes):
        assert not slot[:, h:].any() and not slot[:, :, w:].any()


@st.composite
def batches(draw):
    """(images, mean, std, size, dtype, channels_last): 1-4 images of 1-5 channels and 0-40 pixels a
    side, each planar, interleaved or strided, in a batch at least as large, values of any scale."""
    g = torch.Generator().manual_seed(draw(seeds))
    channels = draw(st.integers(1, 5))
    sizes = [(draw(st.integers(0, 40)), draw(st.integers(0, 40))) for _ in range(draw(st.integers(1, 4)))]
    scale = draw(st.sampled_from((1.0, 255.0, 1e30)))
    images = [arranged((torch.rand(channels, h, w, generator=g) - 0.5) * scale, draw(st.sampled_from(
        ("planar", "interleaved", "strided")))) for h, w in sizes]
    size = (max(h for h, _ in sizes) + draw(st.integers(0, 5)), max(w for _, w in sizes) + draw(st.integers(0, 5)))
    mean = torch.rand(channels, generator=g)
    std = torch.rand(channels, generator=g) + 0.01
    return images, mean, std, size, draw(st.sampled_from(OUTPUT_DTYPES)), draw(st.booleans())


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@examples(1.0)
@given(inputs=batches())
def test_drawn_inputs_match_reference(inputs):
    got, want = ops.normalize_images(*inputs), normalize_images_reference(*inputs)
    assert got.dtype == want.dtype and got.stride() == want.stride()
    assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())


@needs_cpu_kernel
def test_nan_and_infinity_pass_through(generator):
    images = [torch.rand(3, 9, 11, generator=generator)]
    images[0][0, 2, 3], images[0][2, 8, 10] = float("nan"), float("inf")
    mean, std = statistics(3)
    for dtype in OUTPUT_DTYPES:
        got = ops.normalize_images(images, mean, std, (16, 16), dtype, True)
        want = normalize_images_reference(images, mean, std, (16, 16), dtype, True)
        assert got[0, 0, 2, 3].isnan() and got[0, 2, 8, 10] == float("inf")
        assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())


@needs_cpu_kernel
def test_same_bits_at_any_thread_count(generator):
    images = [arranged(torch.rand(3, 200, 300, generator=generator), layout)
              for layout in ("planar", "interleaved", "strided")]
    mean, std = statistics(3)
    assert_same_bits_at_thread_counts(lambda: (ops.normalize_images(images, mean, std, (224, 320), torch.bfloat16,
                                                                    True),))


def test_statistics_of_shape_c11_and_a_batch_of_empty_images(generator):
    """``(C, 1, 1)`` statistics (a detector's buffers) as ``(C,)``; a batch of size (0, 0)."""
    images = [torch.rand(3, 4, 5, generator=generator)]
    mean, std = statistics(3)
    got = ops.normalize_images(images, mean.reshape(3, 1, 1), std.reshape(3, 1, 1), (4, 8))
    assert torch.equal(got, normalize_images_reference(images, mean, std, (4, 8)))
    assert ops.normalize_images([torch.rand(3, 0, 0)], mean, std, (0, 0)).shape == (1, 3, 0, 0)


def test_opcheck(generator):
    images = [torch.rand(3, 6, 7, generator=generator), torch.rand(3, 8, 5, generator=generator)]
    mean, std = statistics(3)
    for dtype, channels_last in ((torch.float32, False), (torch.bfloat16, True)):
        torch.library.opcheck(torch.ops.sfpn.normalize_images, (images, mean, std, [8, 8], dtype, channels_last))


MEAN, STD = statistics(3)


@pytest.mark.parametrize("arguments, error, message", [
    (([], MEAN, STD, (4, 4)), ValueError, "images must be a non-empty list"),
    (([torch.rand(1, 4, 4)], MEAN, STD, (4, 4)), ValueError, r"images\[0\] must have 3 channels \(mean's\)"),
    (([torch.rand(3, 4, 4)], MEAN, STD, (4, 3)), ValueError, r"images\[0\] of size \(4, 4\) does not fit"),
    (([torch.rand(3, 4)], MEAN, STD, (4, 4)), ValueError, r"images\[0\] must have 3 dimensions"),
    (([torch.rand(3, 4, 4).double()], MEAN, STD, (4, 4)), TypeError, r"images\[0\] must have dtype in \(float32\)"),
    (([torch.rand(3, 4, 4)], MEAN, STD[:2], (4, 4)), ValueError, "mean and std must hold one value per channel"),
    (([torch.rand(3, 4, 4)], MEAN.double(), STD, (4, 4)), TypeError, "mean must have dtype in"),
    (([torch.rand(3, 4, 4)], MEAN, STD, (4,)), ValueError, r"size must be \(H, W\)"),
    (([torch.rand(3, 4, 4)], MEAN, STD, (4, -1)), ValueError, r"size must be \(H, W\)"),
])
def test_argument_errors(arguments, error, message):
    with pytest.raises(error, match=message):
        ops.normalize_images(*arguments)


def test_output_dtype_error():
    with pytest.raises(TypeError, match="dtype must be one of float32, bfloat16, float16, got torch.float64"):
        ops.normalize_images([torch.rand(3, 4, 4)], MEAN, STD, (4, 4), torch.float64)


@needs_cpu_kernel
@pytest.mark.parametrize("arguments, message", [
    (([], MEAN, STD, [4, 4], torch.float32, False), "images must not be empty"),
    (([torch.rand(2, 4, 4)], MEAN, STD, [4, 4], torch.float32, False), r"images\[0\] must be \(3, h, w\)"),
    (([torch.rand(3, 5, 4)], MEAN, STD, [4, 4], torch.float32, False), r"images\[0\] of size \[5, 4\] does not fit"),
    (([torch.rand(3, 4, 4)], MEAN, STD, [4, 4], torch.float64, False), "dtype must be float32, bfloat16 or float16"),
    (([torch.rand(3, 4, 4)], MEAN.half(), STD, [4, 4], torch.float32, False), "mean must be a float32 CPU tensor"),
])
def test_cpp_checks_of_direct_calls(arguments, message):
    with pytest.raises(RuntimeError, match="sfpn::normalize_images: " + message):
        torch.ops.sfpn.normalize_images(*arguments)
