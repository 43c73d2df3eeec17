"""Pure-PyTorch references of every op: the definitions the kernels are tested against, and the
path that serves when no kernel does."""
from .roi_align import multilevel_roi_align_reference as multilevel_roi_align
from .roi_align import roi_align_reference as roi_align
from .suppression import batched_nms_padded_reference as batched_nms_padded
from .suppression import batched_nms_reference as batched_nms
from .suppression import nms_reference as nms
from .upsample import semantic_fuse_reference as semantic_fuse
from .upsample import upsample_add_reference as upsample_add

__all__ = [
    "upsample_add",
    "semantic_fuse", "roi_align", "multilevel_roi_align", "nms", "batched_nms", "batched_nms_padded",
]
