// CUDA RoIAlign over one or several pyramid levels: the engine behind the single-level
// (roi_align.cu) and multi-level (multilevel_roi_align.cu) operator registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "roi_align_geometry.h"

namespace sfpn::roi_align {

// As forward_cpu (cpu/roi_align_cpu.h): one launch for all levels.
at::Tensor forward_cuda(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_h,
                        int64_t pooled_w, int64_t sampling_ratio, bool aligned, const LevelMapper& mapper);

// As backward_cpu. deterministic = false: float atomics; true: every input-pixel tap of every
// RoI bin is listed, stably sorted by pixel and reduced in that fixed order (no atomics; one
// host sync for the tap count).
std::vector<at::Tensor> backward_cuda(const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales,
                                      int64_t batch_size, int64_t channels, at::IntArrayRef heights,
                                      at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
                                      const LevelMapper& mapper, bool deterministic);

}  // namespace sfpn::roi_align
