"""Pure-PyTorch references of every op: the definitions the kernels are tested against, with the
public functions' signatures. (The dispatcher's fallback of each op wraps the same code.)"""
from .batch_norm_relu import batch_norm_relu_reference as batch_norm_relu
from .box_iou_max import box_iou_max_reference as box_iou_max
from .cross_entropy import semantic_cross_entropy_reference as semantic_cross_entropy
from .cross_entropy import upsample_cross_entropy_reference as upsample_cross_entropy
from .group_norm_relu import group_norm_relu_reference as group_norm_relu
from .max_pool2d import max_pool2d_reference as max_pool2d
from .multilevel_roi_align import multilevel_roi_align_reference as multilevel_roi_align
from .nms import batched_nms_padded_reference as batched_nms_padded
from .nms import batched_nms_reference as batched_nms
from .nms import nms_reference as nms
from .normalize_images import normalize_images_reference as normalize_images
from .resize_sum import resize_sum_reference as resize_sum
from .roi_align import roi_align_reference as roi_align
from .semantic_fuse import semantic_fuse_reference as semantic_fuse
from .upsample_add import upsample_add_reference as upsample_add
from .upsample_argmax import upsample_argmax_reference as upsample_argmax
from .winograd import winograd_conv2d_reference as winograd_conv2d

__all__ = [
    "upsample_add",
    "semantic_fuse",
    "upsample_argmax",
    "roi_align",
    "multilevel_roi_align",
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
]
