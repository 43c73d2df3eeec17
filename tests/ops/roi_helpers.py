"""Boxes, pyramids and comparisons shared by the roi_align and multilevel_roi_align tests."""
import pytest
import torch

from sfpn.ops import _library


HAS_KERNEL = _library.serving("roi_align", "cpu") == "C++"
needs_kernel = pytest.mark.skipif(not HAS_KERNEL, reason="sfpn._C is not built")

SCALES = [1 / 4, 1 / 8, 1 / 16]


def random_boxes(generator, count, height, width, batch_size, spill=0.3, dtype=torch.float32):
    """(count, 5) rois [batch, x1, y1, x2, y2] in an image of height x width pixels, some partly
    or wholly outside it, a few degenerate (zero width or height)."""
    corner = torch.rand(count, 2, generator=generator) * (1 + 2 * spill) - spill
    size = torch.rand(count, 2, generator=generator) * 0.6
    x1y1 = corner * torch.tensor([width, height])
    x2y2 = x1y1 + size * torch.tensor([width, height])
    x2y2[: count // 8] = x1y1[: count // 8]  # zero-size boxes
    batch = torch.randint(0, batch_size, (count, 1), generator=generator).float()
    return torch.cat([batch, x1y1, x2y2], 1).to(dtype)


def random_pyramid(generator, batch_size=2, channels=3, base=(32, 48), count=3, dtype=torch.float32):
    return [
        torch.randn(batch_size, channels, base[0] >> i, base[1] >> i, generator=generator, dtype=dtype)
        for i in range(count)
    ]


def close(actual, expected, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def close_with_grads(out, expected, inputs, generator):
    """``out`` and ``expected`` agree, and so do their gradients w.r.t. each of ``inputs`` (a
    list of tensors) for one random output gradient."""
    close(out, expected)
    grad = torch.randn(out.shape, generator=generator)
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        close(got, want)


def random_rois(generator, count, batch_size, height, width, min_size=1.0, max_size=None):
    """(count, 5) RoIs [batch, x1, y1, x2, y2]; some reach past the map's borders."""
    max_size = max_size or max(height, width) * 0.6
    size = min_size + torch.rand(count, 2, generator=generator) * (max_size - min_size)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 1.2 - size * 0.3
    batch = torch.randint(0, batch_size, (count, 1), generator=generator).float()
    return torch.cat([batch, corner, corner + size], dim=1)


ROI_CASES = [(2, True), (-1, False), (-1, True)]  # (sampling_ratio, aligned)
