"""``normalize_images``: a detector's input batch, normalised, zero-padded, cast and laid out in one pass.

Schema, reference fallback and fake below (:mod:`sfpn.ops._library`); kernel:
``csrc/cpu/normalize_images.cpp``. Eagerly each image is a subtraction, a division and a cast,
each a fresh image, then a strided copy into its slot of the batch; the channels_last copy of a
bf16 batch (three 2-byte values a pixel) is the slowest of them. CUDA runs the reference. Not
differentiable: it reads images, which nothing trains.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _library
from ._validate import OpTypeError, OpValueError, check_tensor

OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def normalize_images_reference(images: Sequence[torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
                               size: Sequence[int], dtype: torch.dtype = torch.float32,
                               channels_last: bool = False) -> torch.Tensor:
    """Pure-PyTorch :func:`normalize_images`: each image normalised in float32, cast, and written
    into its slot of the batch, whose padding alone is cleared."""
    height, width = size
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch = torch.empty((len(images), images[0].shape[0], height, width), dtype=dtype, device=images[0].device,
                        memory_format=layout)
    mean, std = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
    for slot, image in zip(batch, images):
        h, w = image.shape[-2:]
        # Cast, then lay out: the layout change of 2-byte values costs 0.6x that of floats.
        slot[:, :h, :w] = ((image - mean) / std).to(dtype)
        slot[:, h:].zero_()
        slot[:, :h, w:].zero_()
    return batch


def normalize_images(images: Sequence[torch.Tensor], mean: torch.Tensor, std: torch.Tensor, size: Sequence[int],
                     dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """``(image - mean) / std`` of each image, computed in float32, rounded to ``dtype`` and written
    into its slot (top left) of a zero-padded batch.

    Args:
        images: a non-empty list of ``(C, h_i, w_i)`` float32 images, on one device.
        mean, std: ``(C,)`` (or ``(C, 1, 1)``) float32, on the images' device.
        size: ``(H, W)`` of the batch, at least each image's ``(h_i, w_i)``.
        dtype: the batch's dtype, float32, bfloat16 or float16.
        channels_last: lay the batch out channels_last (as a backbone with channels_last weights
            reads it) instead of NCHW.

    Returns:
        ``(N, C, H, W)`` in ``dtype``: the same values as :func:`normalize_images_reference`. Not
        differentiable.
    """
    if not isinstance(images, (list, tuple)) or not images:
        raise OpValueError("images must be a non-empty list of (C, h, w) float32 tensors")
    check_tensor("mean", mean, dtypes=(torch.float32,))
    check_tensor("std", std, dtypes=(torch.float32,), device=mean.device)
    channels = mean.numel()
    if std.numel() != channels:
        raise OpValueError(f"mean and std must hold one value per channel, got {mean.numel()} and {std.numel()}")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in size)):
        raise OpValueError(f"size must be (H, W), two ints >= 0, got {size!r}")
    if dtype not in OUTPUT_DTYPES:
        raise OpTypeError(f"dtype must be one of float32, bfloat16, float16, got {dtype}")
    for i, image in enumerate(images):
        check_tensor(f"images[{i}]", image, ndim=3, dtypes=(torch.float32,), device=mean.device)
        if image.shape[0] != channels:
            raise OpValueError(f"images[{i}] must have {channels} channels (mean's), got shape {tuple(image.shape)}")
        if image.shape[1] > size[0] or image.shape[2] > size[1]:
            raise OpValueError(f"images[{i}] of size {tuple(image.shape[1:])} does not fit in size {tuple(size)}")
    with torch.no_grad():
        return torch.ops.sfpn.normalize_images(list(images), mean.reshape(-1), std.reshape(-1), list(size), dtype,
                                               channels_last)


# --------------------------------------------------------------------------------------------------
# The dispatcher op: schema, reference fallback, fake (no autograd: images are not trained).

_library.define("normalize_images(Tensor[] images, Tensor mean, Tensor std, int[2] size, ScalarType dtype, "
                "bool channels_last) -> Tensor", normalize_images_reference)


@torch.library.register_fake("sfpn::normalize_images")
def _(images, mean, std, size, dtype, channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    shape = (len(images), images[0].shape[0], *size)
    return torch.empty(shape, dtype=dtype, device=images[0].device, memory_format=layout)


_library.register(_library.Op("normalize_images", _library.COMPILED_CPU))
