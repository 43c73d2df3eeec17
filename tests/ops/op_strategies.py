"""Hypothesis strategies and checks of the property tests (``test_*drawn_inputs*`` in each
tests/ops/test_<op>.py): every op against its pure-PyTorch reference
(``sfpn.ops.reference``) on drawn inputs: random shapes, dtypes, memory layouts (contiguous,
channels_last, transposed and strided views), scales, degenerate and extreme boxes, huge and
negative class ids, tied scores, empty inputs.

Example counts come from the hypothesis profile (tests/conftest.py): ``ci`` by default,
bounded so that the property tests fit in CI's time; ``--hypothesis-profile=long`` for a
thorough local run. Each test scales the profile's count by its cost (:func:`examples`).
"""
import torch
from hypothesis import settings
from hypothesis import strategies as st


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


# The semantic head's Triton ops, on the `device` fixture (the Triton interpreter on a CPU), so
# few small examples.
TRITON_DTYPES = (torch.float32, torch.bfloat16)
