// CPU RoIAlign over one or several pyramid levels: the engine behind the single-level
// (roi_align.cpp) and multi-level (multilevel_roi_align.cpp) operator registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "roi_align_geometry.h"

namespace sfpn::roi_align {

// levels: L maps (N, C, H_l, W_l) of one dtype; rois: (K, 5) [batch, x1, y1, x2, y2] in image
// coordinates; RoI k is pooled from level mapper(box_k) at scale scales[level].
// Returns (K, C, pooled_h, pooled_w).
at::Tensor forward_cpu(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_h,
                       int64_t pooled_w, int64_t sampling_ratio, bool aligned, const LevelMapper& mapper);

// grad: (K, C, pooled_h, pooled_w). Returns the gradient of every level, (N, C, H_l, W_l).
// Deterministic: each thread owns whole channel planes and visits RoIs in a fixed order.
std::vector<at::Tensor> backward_cpu(const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales,
                                     int64_t batch_size, int64_t channels, at::IntArrayRef heights,
                                     at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
                                     const LevelMapper& mapper);

}  // namespace sfpn::roi_align
