"""Pure-PyTorch references of every op: the definitions the kernels are tested against, and the
path that serves when no kernel does."""
from .roi_align import multilevel_roi_align_reference as multilevel_roi_align
from .roi_align import roi_align_reference as roi_align
from .semantic import group_norm_relu_reference as group_norm_relu
from .semantic import resize_sum_reference as resize_sum
from .semantic import semantic_cross_entropy_reference as semantic_cross_entropy
from .semantic import upsample_cross_entropy_reference as upsample_cross_entropy
from .suppression import batched_nms_padded_reference as batched_nms_padded
from .suppression import batched_nms_reference as batched_nms
from .suppression import nms_reference as nms
from .upsample import semantic_fuse_reference as semantic_fuse
from .upsample import upsample_add_reference as upsample_add

__all__ = [
    "upsample_add",
    "semantic_fuse",
    "roi_align",
    "multilevel_roi_align",
    "nms",
    "batched_nms",
    "batched_nms_padded",
    "resize_sum",
    "group_norm_relu",
    "semantic_cross_entropy",
    "upsample_cross_entropy",
]
