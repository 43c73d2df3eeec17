// Multi-level RoIAlign on the CPU: every RoI picks its FPN level (torchvision's LevelMapper rule)
// and all RoIs are pooled in one pass over the pyramid. The engine is in roi_align.cpp.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/roi_align_cpu.h"

namespace sfpn::roi_align {
namespace {

at::Tensor multilevel_roi_align_cpu(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                                    int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                    double canonical_scale, int64_t canonical_level, bool /*deterministic*/) {
  TORCH_CHECK(!scales.empty(), "multilevel_roi_align: scales must not be empty");
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return forward_cpu(levels, rois, scales, pooled_h, pooled_w, sampling_ratio, aligned, mapper);
}

// Deterministic whatever `deterministic` says (see backward_cpu).
std::vector<at::Tensor> multilevel_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                                          at::ArrayRef<double> scales, int64_t batch_size,
                                                          int64_t channels, at::IntArrayRef heights,
                                                          at::IntArrayRef widths, int64_t sampling_ratio,
                                                          bool aligned, double canonical_scale,
                                                          int64_t canonical_level, bool /*deterministic*/) {
  TORCH_CHECK(!scales.empty(), "multilevel_roi_align_backward: scales must not be empty");
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return backward_cpu(grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned, mapper);
}

}  // namespace
}  // namespace sfpn::roi_align

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("multilevel_roi_align", &sfpn::roi_align::multilevel_roi_align_cpu);
  m.impl("multilevel_roi_align_backward", &sfpn::roi_align::multilevel_roi_align_backward_cpu);
}
