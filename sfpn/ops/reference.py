"""Pure-PyTorch references of every op: the definitions the kernels are tested against, and the
path that serves when no kernel does."""
from .roi_align import multilevel_roi_align_reference as multilevel_roi_align
from .roi_align import roi_align_reference as roi_align
from .upsample import upsample_add_reference as upsample_add

__all__ = ["upsample_add", "roi_align", "multilevel_roi_align"]
