"""``semantic_cross_entropy`` and ``upsample_cross_entropy``: softmax cross-entropy over pixel
logits, on the logits' grid or against full-size labels with the bilinear upsampling fused into
the loss.

Schemas, reference fallbacks and the Triton kernel's registration for CUDA below
(:mod:`sfpn.ops._library`); kernels: ``kernels/cross_entropy.py`` for CUDA (one Triton kernel,
both ops), ``csrc/cpu/cross_entropy.cpp`` for ``upsample_cross_entropy`` on the CPU (float32 or
float64, without image-size temporaries; ``semantic_cross_entropy``, with nothing to resize, keeps
its reference there). The Triton kernel computes in float32: float64 logits and empty inputs run
the reference there. Under
``torch.autocast`` they run in the logits' dtype (the loss is float32 either way; the reference
computes in float32 too). The gradient takes the logits' layout on the CPU (channels_last
logits, a channels_last gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _library
from .. import kernels
from ._validate import OpTypeError, OpValueError, check_choice, check_tensor

LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
REDUCTIONS = ("mean", "sum")
WEIGHT_DTYPES = (torch.float32, torch.float64)


def semantic_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch :func:`semantic_cross_entropy` (computed in float32 at least, as the kernel)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(
        logits, labels.long(), weight=None if weight is None else weight.to(logits.dtype), ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing,
    )


def upsample_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch :func:`upsample_cross_entropy`: resize the logits, then the cross-entropy."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    return semantic_cross_entropy_reference(logits, labels, ignore_index, reduction, label_smoothing, weight)


def _check_cross_entropy(logits, labels, ignore_index, reduction, label_smoothing, weight, same_size: bool) -> None:
    check_tensor("logits", logits, ndim=4)
    check_tensor("labels", labels, ndim=3, dtypes=LABEL_DTYPES)
    if labels.device != logits.device:
        raise OpValueError(f"labels must be on the same device as logits ({logits.device}), got {labels.device}")
    if labels.shape[0] != logits.shape[0]:
        raise OpValueError(f"labels must have logits' batch size {logits.shape[0]}, got shape {tuple(labels.shape)}")
    if same_size and labels.shape[1:] != logits.shape[2:]:
        raise OpValueError(
            f"labels must have logits' spatial size {tuple(logits.shape[2:])}, got {tuple(labels.shape[1:])} "
            "(use upsample_cross_entropy for full-size labels)"
        )
    if logits.shape[1] < 1 or logits.shape[2] * logits.shape[3] == 0:
        raise OpValueError(f"logits must have at least one class and one pixel, got shape {tuple(logits.shape)}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise OpTypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    check_choice("reduction", reduction, REDUCTIONS)
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
        raise OpValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if weight is not None:
        check_tensor("weight", weight, ndim=1, dtypes=WEIGHT_DTYPES)
        if weight.device != logits.device or weight.shape[0] != logits.shape[1]:
            raise OpValueError(
                f"weight must hold one value per class ({logits.shape[1]}) on logits' device ({logits.device}), "
                f"got shape {tuple(weight.shape)} on {weight.device}"
            )
        if label_smoothing:
            # F.cross_entropy weighs each class of the smoothed target by its own weight: a second
            # definition for one kernel to carry, which no caller of ours needs.
            raise OpValueError(f"weight and label_smoothing ({label_smoothing}) cannot be combined")


def _cross_entropy(name, logits, labels, ignore_index, reduction, label_smoothing, weight) -> torch.Tensor:
    """Checks the arguments of ``sfpn::<name>`` and returns its loss (the gradient, written by the
    same pass, is kept for the backward when logits require grad)."""
    same_size = name == "semantic_cross_entropy"
    _check_cross_entropy(logits, labels, ignore_index, reduction, label_smoothing, weight, same_size=same_size)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    op = getattr(torch.ops.sfpn, name)
    return op(logits, labels, weight, ignore_index, reduction, float(label_smoothing), compute_grad)[0]


def semantic_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy, ``F.cross_entropy(logits, labels, ...)`` in one pass.

    Args:
        logits: ``(N, K, H, W)`` class scores.
        labels: ``(N, H, W)`` integer classes in ``[0, K)`` or ``ignore_index`` (uint8 label maps
            are fine). Another value raises on the CPU, and makes the loss NaN on CUDA (no sync).
        ignore_index: label of pixels that take no part in the loss (255 by default).
        reduction: ``"mean"`` over the labelled pixels (NaN when there are none, as F.cross_entropy)
            or ``"sum"``.
        label_smoothing: as in F.cross_entropy.
        weight: ``(K,)`` float weights of the classes, as F.cross_entropy's: a pixel's loss is
            multiplied by its label's weight, and ``"mean"`` divides by the labelled pixels'
            summed weight. Not with ``label_smoothing``.

    Returns:
        A float32 scalar (float64 for float64 logits). When logits require grad, the gradient is
        written during the forward pass; the backward only scales it.
    """
    return _cross_entropy("semantic_cross_entropy", logits, labels, ignore_index, reduction, label_smoothing, weight)


def upsample_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of coarse logits, bilinearly resized to the labels' size, against full-size labels.

    Equals ``semantic_cross_entropy(interpolate(logits, labels.shape[-2:], bilinear,
    align_corners=False), labels)`` but the kernel samples the logits in place and scatters the
    gradient back to the coarse grid: no full-size logits exist.

    Args:
        logits: ``(N, K, h, w)`` on the head's grid (stride 8).
        labels: ``(N, H, W)`` at image size (any size), classes or ``ignore_index``.
        ignore_index, reduction, label_smoothing, weight: as :func:`semantic_cross_entropy`.

    Returns:
        A float32 scalar (float64 for float64 logits).
    """
    return _cross_entropy("upsample_cross_entropy", logits, labels, ignore_index, reduction, label_smoothing, weight)


# --------------------------------------------------------------------------------------------------
# The dispatcher ops: schemas, reference fallbacks, Triton kernel, fakes, autograd. Each returns
# ``(loss, grad)``: the loss (float32, float64 for float64 logits) and, with ``compute_grad``,
# d loss / d logits written by the same pass (else an empty tensor).


def _loss_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _in_loss_dtype(logits: torch.Tensor) -> torch.Tensor:
    """The logits in the loss's dtype, NCHW: one pass that casts and lays them out as the softmax
    over classes reads them (a channels_last map of few classes gains nothing from NHWC)."""
    return logits.to(_loss_dtype(logits), memory_format=torch.contiguous_format)


def _as_logits(grad: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The gradient in the logits' dtype and layout (one pass)."""
    return grad.to(logits.dtype, memory_format=_library.output_memory_format(logits))


def _loss_and_grad(logits, labels, weight, ignore_index, reduction, label_smoothing, compute_grad):
    """The reference loss, F.cross_entropy's, and its gradient ``(softmax - smoothed one-hot) *
    weight[label]`` on labelled pixels (divided by their summed weight for ``"mean"``), on the
    logits' grid. One ``(N, K, H, W)`` buffer: the log-softmax, which becomes the gradient in place
    (these run at image size on the CPU, where every pass over K full-size maps counts)."""
    log_probs = _in_loss_dtype(logits).log_softmax(1)
    num_classes = log_probs.shape[1]
    labelled = labels != ignore_index
    classes = torch.where(labelled, labels.long(), 0).unsqueeze(1)  # (N, 1, H, W)
    pixel_weight = labelled.to(log_probs.dtype)
    if weight is not None:
        pixel_weight = pixel_weight * weight.to(log_probs.dtype)[classes.squeeze(1)]
    pixel_loss = log_probs.gather(1, classes).squeeze(1).mul_(label_smoothing - 1)
    if label_smoothing:  # the smoothed target's uniform part (never with class weights)
        pixel_loss.sub_(log_probs.sum(1), alpha=label_smoothing / num_classes)
    loss = (pixel_loss * pixel_weight).sum()
    if reduction == "mean":  # over the labelled pixels' summed weight: 0 / 0 = NaN with none, as F.cross_entropy,
        total = pixel_weight.sum()  # whose gradient is 0 then: every pixel weight is 0, divided by at least tiny
        loss, pixel_weight = loss / total, pixel_weight / total.clamp_min(torch.finfo(total.dtype).tiny)
    if not compute_grad:
        return loss, None
    grad = log_probs.exp_()
    grad.scatter_add_(1, classes, grad.new_full(classes.shape, label_smoothing - 1))
    if label_smoothing:
        grad.sub_(label_smoothing / num_classes)
    return loss, grad.mul_(pixel_weight.unsqueeze(1))


def _semantic_cross_entropy_op_reference(logits, labels, weight, ignore_index, reduction, label_smoothing, compute_grad):
    loss, grad = _loss_and_grad(logits, labels, weight, ignore_index, reduction, label_smoothing, compute_grad)
    return loss, (_as_logits(grad, logits) if compute_grad else logits.new_empty((0,)))


def _upsample_cross_entropy_op_reference(logits, labels, weight, ignore_index, reduction, label_smoothing, compute_grad):
    full_size = F.interpolate(_in_loss_dtype(logits), size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    loss, grad = _loss_and_grad(full_size, labels, weight, ignore_index, reduction, label_smoothing, compute_grad)
    if not compute_grad:
        return loss, logits.new_empty((0,))
    grad = torch.ops.aten.upsample_bilinear2d_backward(grad, list(labels.shape[-2:]), list(logits.shape), False)
    return loss, _as_logits(grad, logits)


def _triton(op, reference):
    def implementation(logits, labels, weight, ignore_index, reduction, label_smoothing, compute_grad):
        if not (kernels.takes(logits) and labels.numel() > 0):
            return reference(logits, labels, weight, ignore_index, reduction, label_smoothing, compute_grad)
        kernels.check_launchable(logits, op)
        from ..kernels import cross_entropy as launcher

        loss, grad = launcher.cross_entropy(
            logits.contiguous(), labels.contiguous(), ignore_index, reduction, label_smoothing, compute_grad,
            weight=None if weight is None else weight.float().contiguous(),
        )
        return loss, grad.contiguous(memory_format=_library.output_memory_format(logits)) if compute_grad else grad

    return implementation


def _fake(logits, labels, weight, ignore_index, reduction, label_smoothing, compute_grad):
    grad = _library.empty_like_layout(logits, logits.shape) if compute_grad else logits.new_empty((0,))
    return logits.new_empty((), dtype=_loss_dtype(logits)), grad


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, grad_of_grad):
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0 and grad_loss is not None:
        raise RuntimeError("the cross-entropy op ran with compute_grad=False; call it with compute_grad=True")
    # The forward wrote d loss / d logits. Eagerly, scaling it in place keeps the peak memory at
    # logits + one gradient; a second backward through the same graph (retain_graph) then fails
    # loudly on the saved tensor's version counter instead of reusing a scaled gradient. Traced
    # (torch.compile, AOTAutograd: tensors are fake/functional subclasses there), AOTAutograd cannot
    # partition a backward that mutates a forward output, so the product is out of place and
    # Inductor plans the buffers.
    if torch.compiler.is_compiling() or type(grad) is not torch.Tensor:
        return grad * grad_loss, None, None, None, None, None, None
    return grad.mul_(grad_loss), None, None, None, None, None, None


_SCHEMA = ("(Tensor logits, Tensor labels, Tensor? weight, int ignore_index, str reduction, float label_smoothing, "
           "bool compute_grad) -> (Tensor, Tensor)")
for _name, _reference in (
    ("semantic_cross_entropy", _semantic_cross_entropy_op_reference),
    # As semantic_cross_entropy, the logits resized to the labels' size in the kernel.
    ("upsample_cross_entropy", _upsample_cross_entropy_op_reference),
):
    _library.define(_name + _SCHEMA, _reference)
    torch.library.register_fake(f"sfpn::{_name}", _fake)
    torch.library.register_autograd(f"sfpn::{_name}", _backward, setup_context=_setup_context)
    _library.register(_library.Op(_name, _library.TRITON, triton={_name: _triton(_name, _reference)},
                                  compiled_on_cpu=_name == "upsample_cross_entropy"))
