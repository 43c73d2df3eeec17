// Multi-level RoIAlign on CUDA: one launch pools every RoI from its FPN level (torchvision's
// LevelMapper rule, evaluated in the kernel). The kernels are in roi_align.cu.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cuda/roi_align_cuda.h"

namespace sfpn::roi_align {
namespace {

at::Tensor multilevel_roi_align_cuda(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                                     int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                     double canonical_scale, int64_t canonical_level, bool /*deterministic*/) {
  TORCH_CHECK(!scales.empty(), "multilevel_roi_align: scales must not be empty");
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return forward_cuda(levels, rois, scales, pooled_h, pooled_w, sampling_ratio, aligned, mapper);
}

std::vector<at::Tensor> multilevel_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                                           at::ArrayRef<double> scales, int64_t batch_size,
                                                           int64_t channels, at::IntArrayRef heights,
                                                           at::IntArrayRef widths, int64_t sampling_ratio,
                                                           bool aligned, double canonical_scale,
                                                           int64_t canonical_level, bool deterministic) {
  TORCH_CHECK(!scales.empty(), "multilevel_roi_align_backward: scales must not be empty");
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return backward_cuda(grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned, mapper,
                       deterministic);
}

}  // namespace
}  // namespace sfpn::roi_align

TORCH_LIBRARY_IMPL(sfpn, CUDA, m) {
  m.impl("multilevel_roi_align", &sfpn::roi_align::multilevel_roi_align_cuda);
  m.impl("multilevel_roi_align_backward", &sfpn::roi_align::multilevel_roi_align_backward_cuda);
}
