"""Bilinear sampling coordinates shared by the kernels, bit-compatible with ``F.interpolate``
(``mode="bilinear", align_corners=False``, output size given)."""
import triton
import triton.language as tl


def scale(in_size: int, out_size: int) -> float:
    """PyTorch's source step per output pixel for align_corners=False and a given output size."""
    return in_size / out_size


@triton.jit
def source_index(dst, in_size, scale):
    """Source rows (or columns) ``i0, i1`` and the weight ``lam`` of ``i1`` for output index ``dst``.

    ``src = max((dst + 0.5) * scale - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
    as in ATen's ``upsample_bilinear2d`` (it computes in float for float inputs).
    """
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)
    i1 = tl.minimum(i0 + 1, in_size - 1)
    lam = src - i0.to(tl.float32)
    return i0, i1, lam
