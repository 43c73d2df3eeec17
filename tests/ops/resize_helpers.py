"""What the tests of the two resize ops, upsample_add and semantic_fuse, share."""
import pytest
import torch

from sfpn import _extension


requires_kernels = pytest.mark.skipif(not _extension.STATUS.loaded, reason="sfpn._C is not loaded")

# (mode, align_corners) as the public ops take them.
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]
MODE_IDS = ["nearest", "bilinear", "bilinear-corners"]

TOLERANCE = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}


def assert_close_to_exact(actual, exact, dtype):
    """`actual` (any dtype) against `exact` (computed in float64 from the same inputs)."""
    torch.testing.assert_close(actual.double(), exact, **TOLERANCE[dtype])


RESIZE_MODES = [("nearest", False), ("bilinear", False), ("bilinear", True)]
