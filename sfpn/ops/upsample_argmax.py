"""``upsample_argmax``: the class map of logits bilinearly upsampled to image size,
``F.interpolate(logits[None], size, mode="bilinear")[0].argmax(0)[:crop_h, :crop_w]``, without the
``(K, H, W)`` upsampled logits (183 COCO-stuff classes at 800 x 1333 would be 780 MB).

Schema and reference fallback below (:mod:`sfpn.ops._library`); kernels:
``csrc/cpu/upsample_argmax.cpp`` (per cell of four source pixels, only the classes that can win
there are blended: one inside a region of one class, every class over whole rows where most stay
in play; exact, parallel over rows) and ``csrc/cuda/upsample_argmax.cu`` (one thread per output pixel); the bilinear taps are
``F.interpolate``'s (``csrc/resize_index.h``), blended in float32 for half-precision logits.
Not differentiable (its output is an index map).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _library
from ._validate import OpTypeError, OpValueError, check_tensor

#: The reference interpolates this many logits at a time (a band of output rows).
REFERENCE_CHUNK_ELEMENTS = 1 << 22


def _bilinear_taps(out_size: int, in_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices ``(i0, i1)`` and the weight of ``i1`` for each output position, as
    ``F.interpolate(mode="bilinear", align_corners=False)`` computes them for a given size."""
    source = ((torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    i0 = source.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, (source - i0).float()


def upsample_argmax_reference(
    logits: torch.Tensor, size: Sequence[int], crop: Sequence[int] | None = None,
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Pure-PyTorch ``upsample_argmax``: the definition the kernels are tested against. It
    interpolates a band of output rows at a time, so its memory stays at ``chunk_elements``
    float32 logits, never ``K * H * W``."""
    height, width = (int(s) for s in size)
    crop_h, crop_w = (height, width) if crop is None else (int(c) for c in crop)
    out = torch.empty((crop_h, crop_w), dtype=torch.int64, device=logits.device)
    if out.numel() == 0:
        return out
    num_classes, in_h, in_w = logits.shape
    y0, y1, wy = _bilinear_taps(height, in_h, logits.device)
    x0, x1, wx = _bilinear_taps(width, in_w, logits.device)
    x0, x1, wx = x0[:crop_w], x1[:crop_w], wx[:crop_w]
    logits = logits.float()
    rows_per_chunk = max(1, chunk_elements // (num_classes * crop_w))
    for start in range(0, crop_h, rows_per_chunk):
        rows = slice(start, min(crop_h, start + rows_per_chunk))
        band = torch.lerp(logits[:, y0[rows]], logits[:, y1[rows]], wy[rows].view(1, -1, 1))  # (K, R, w)
        band = torch.lerp(band[:, :, x0], band[:, :, x1], wx)  # (K, R, W')
        out[rows] = band.argmax(dim=0)
    return out


def _check_upsample_argmax(logits, size, crop) -> tuple[list[int], list[int]]:
    check_tensor("logits", logits, ndim=3, nonempty=True)
    sizes = {}
    for name, value in (("size", size), ("crop", size if crop is None else crop)):
        if (isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or len(value) != 2
                or any(not isinstance(v, (int, torch.SymInt)) or isinstance(v, bool) for v in value)):
            raise OpTypeError(f"{name} must be a pair of ints (H, W), got {value!r}")
        sizes[name] = list(value)
    (height, width), (crop_h, crop_w) = sizes["size"], sizes["crop"]
    # Traced sizes (torch.export: the image's and the padded batch's) are checked by the kernel.
    if all(type(v) is int for v in (height, width, crop_h, crop_w)):
        if height < 0 or width < 0:
            raise OpValueError(f"size must be >= 0, got {tuple(size)}")
        if not (0 <= crop_h <= height and 0 <= crop_w <= width):
            raise OpValueError(f"crop must lie within size {tuple(size)}, got {tuple(crop)}")
    return sizes["size"], sizes["crop"]


def upsample_argmax(logits: torch.Tensor, size: Sequence[int], crop: Sequence[int] | None = None) -> torch.Tensor:
    """The class map of ``logits`` bilinearly upsampled to ``size``, cropped to ``crop``.

    Equal to ``F.interpolate(logits[None].float(), size, mode="bilinear")[0].argmax(0)[:crop_h,
    :crop_w]`` up to float rounding at near-ties (ties go to the lower class, as ``argmax``), but
    no ``(K, H, W)`` tensor is made: each output pixel keeps a running maximum over the classes.

    Args:
        logits: ``(K, h, w)``, float32, bfloat16, float16 or float64 (half precision is blended
            in float32).
        size: ``(H, W)`` the logits cover when upsampled (the padded batch size).
        crop: ``(H', W')`` top-left part to return (the image inside the padding); default ``size``.

    Returns:
        ``(H', W')`` int64 class indices in ``[0, K)``.
    """
    size, crop = _check_upsample_argmax(logits, size, crop)
    return torch.ops.sfpn.upsample_argmax(logits, size, crop)


# ----------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake. No autograd formula: the output is an index.

_library.define("upsample_argmax(Tensor logits, SymInt[2] size, SymInt[2] crop) -> Tensor", upsample_argmax_reference)


@torch.library.register_fake("sfpn::upsample_argmax")
def _(logits, size, crop):
    return logits.new_empty((crop[0], crop[1]), dtype=torch.int64)


_library.register(_library.Op("upsample_argmax", _library.COMPILED))
