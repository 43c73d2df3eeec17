"""sfpn's ops: fused kernels behind validated, documented, differentiable functions.

Each op runs a compiled kernel (``sfpn._C``) or a Triton kernel (``sfpn.kernels``) when one serves
the input's device, and its pure-PyTorch reference otherwise (``sfpn.ops.reference``).
``python -m sfpn.info`` says which backend serves each op.
"""
from .roi_align import MultiLevelRoIAlign, RoIAlign, multilevel_roi_align, roi_align
from .semantic import group_norm_relu, resize_sum, semantic_cross_entropy, upsample_cross_entropy
from .suppression import batched_nms, batched_nms_padded, nms
from .upsample import semantic_fuse, upsample_add

__all__ = [
    "upsample_add",
    "semantic_fuse",
    "roi_align",
    "RoIAlign",
    "multilevel_roi_align",
    "MultiLevelRoIAlign",
    "nms",
    "batched_nms",
    "batched_nms_padded",
    "resize_sum",
    "group_norm_relu",
    "semantic_cross_entropy",
    "upsample_cross_entropy",
]
