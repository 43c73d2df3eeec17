"""sfpn's ops: fused kernels behind validated, documented, differentiable functions.

Each op is a dispatcher op ``torch.ops.sfpn.<name>`` defined in ``sfpn/ops/<name>.py`` (schema,
reference fallback, fake, autograd; see :mod:`sfpn.ops._library`): its compiled kernel
(``sfpn._C``) or Triton kernel (``sfpn.kernels``) serves when registered for the input's device,
its pure-PyTorch reference otherwise (``sfpn.ops.reference``). ``python -m sfpn.info`` says which
backend serves each op; ``sfpn.ops._library.OPS`` lists them. Bad arguments raise
:class:`OpArgumentError` and its subclasses (:mod:`sfpn.ops._validate`): ``ValueError`` or
``TypeError``, and ``RuntimeError`` as torchvision's ops raise.
"""
# Imported in the order of the registry (sfpn.info's table): the compiled ops, then the Triton ops.
from .upsample_add import upsample_add  # noqa: I001
from .semantic_fuse import semantic_fuse
from .upsample_argmax import upsample_argmax
from .roi_align import RoIAlign, roi_align
from .multilevel_roi_align import MultiLevelRoIAlign, multilevel_roi_align
from .nms import batched_nms, batched_nms_padded, nms
from .resize_sum import resize_sum
from .group_norm_relu import group_norm_relu
from .batch_norm_relu import batch_norm_relu
from .max_pool2d import max_pool2d
from .cross_entropy import semantic_cross_entropy, upsample_cross_entropy
from .winograd import winograd_conv2d
from .box_iou_max import box_iou_max
from .normalize_images import normalize_images
from ._validate import OpArgumentError, OpTypeError, OpValueError, RoIBoxesError

__all__ = [
    "upsample_add",
    "semantic_fuse",
    "upsample_argmax",
    "roi_align",
    "RoIAlign",
    "multilevel_roi_align",
    "MultiLevelRoIAlign",
    "nms",
    "batched_nms",
    "batched_nms_padded",
    "resize_sum",
    "group_norm_relu",
    "batch_norm_relu",
    "max_pool2d",
    "semantic_cross_entropy",
    "upsample_cross_entropy",
    "winograd_conv2d",
    "box_iou_max",
    "normalize_images",
    "OpArgumentError",
    "OpValueError",
    "OpTypeError",
    "RoIBoxesError",
]
