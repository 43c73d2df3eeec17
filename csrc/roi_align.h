// Host side of RoIAlign, shared by the CPU (cpu/roi_align.cpp) and CUDA (cuda/roi_align.cu)
// backends, so that each backend file holds only its kernels and their launch: the argument
// checks and preparation every call starts with, and the four operators of sfpn/ops/_library.py
// (sfpn::roi_align, sfpn::multilevel_roi_align and their backwards), written once over a
// backend's engine and registered by register_roi_align_ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "op_checks.h"
#include "roi_align_geometry.h"

namespace sfpn::roi_align {

// A backend's engine pools every RoI from its level of a pyramid, one level being the
// single-level op's case.
//
// Forward. levels: L maps (N, C, H_l, W_l) of one dtype; rois: (K, 5) [batch, x1, y1, x2, y2] in
// image coordinates; RoI k is pooled from level mapper(box_k) at scale scales[level].
// Returns (K, C, pooled_h, pooled_w).
using ForwardEngine = at::Tensor(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                 const LevelMapper& mapper);

// Backward. grad: (K, C, pooled_h, pooled_w). Returns the gradient of every level,
// (N, C, H_l, W_l). `deterministic` asks for the same bits on every run (a backend that always
// gives them may ignore it).
using BackwardEngine = std::vector<at::Tensor>(const at::Tensor& grad, const at::Tensor& rois,
                                               at::ArrayRef<double> scales, int64_t batch_size, int64_t channels,
                                               at::IntArrayRef heights, at::IntArrayRef widths,
                                               int64_t sampling_ratio, bool aligned, const LevelMapper& mapper,
                                               bool deterministic);

// RoI coordinates in the precision the kernels compute in: fp32 for fp16/bf16/fp32 maps.
inline at::Tensor rois_in_compute_type(const at::Tensor& rois, at::ScalarType input_type) {
  return rois.to(input_type == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

// A forward call's arguments (checked by the operator, op_checks.h) in the form the kernels read.
struct ForwardArgs {
  std::vector<at::Tensor> levels;        // contiguous (N, C, H_l, W_l)
  std::vector<int64_t> heights, widths;  // H_l, W_l
  at::Tensor rois;                       // contiguous (K, 5) in the compute type
  at::Tensor output;                     // uninitialised (K, C, pooled_h, pooled_w)
};

inline ForwardArgs forward_args(at::TensorList levels, const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w) {
  const at::Tensor& first = levels[0];
  ForwardArgs args;
  for (const at::Tensor& level : levels) {
    args.levels.push_back(level.contiguous());
    args.heights.push_back(level.size(2));
    args.widths.push_back(level.size(3));
  }
  args.rois = rois_in_compute_type(rois, first.scalar_type());
  args.output = at::empty({rois.size(0), first.size(1), pooled_h, pooled_w}, first.options());
  return args;
}

// A backward call's arguments (checked by the operator, op_checks.h) in the form the kernels read.
struct BackwardArgs {
  at::Tensor grad;  // contiguous (K, C, pooled_h, pooled_w)
  at::Tensor rois;  // contiguous (K, 5) in the compute type
};

inline BackwardArgs backward_args(const at::Tensor& grad, const at::Tensor& rois) {
  return {grad.contiguous(), rois_in_compute_type(rois, grad.scalar_type())};
}

// The operators of sfpn/ops/_library.py over one backend's engine. The single-level ops are the engine
// on a one-level pyramid (the default mapper sends every RoI to level 0); the multi-level ops
// map RoIs to levels with torchvision's LevelMapper rule.

template <ForwardEngine* forward>
at::Tensor roi_align_op(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                        int64_t pooled_w, int64_t sampling_ratio, bool aligned, bool /*deterministic*/) {
  checks::roi_align(input, rois, spatial_scale, pooled_h, pooled_w);
  return forward({input}, rois, {spatial_scale}, pooled_h, pooled_w, sampling_ratio, aligned, LevelMapper{});
}

template <BackwardEngine* backward>
at::Tensor roi_align_backward_op(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                 int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                 bool deterministic) {
  checks::roi_align_backward(grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width);
  return backward(grad, rois, {spatial_scale}, batch_size, channels, {height}, {width}, sampling_ratio, aligned,
                  LevelMapper{}, deterministic)[0];
}

template <ForwardEngine* forward>
at::Tensor multilevel_roi_align_op(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                                   int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                   double canonical_scale, int64_t canonical_level, bool /*deterministic*/) {
  checks::multilevel_roi_align(levels, rois, scales, pooled_h, pooled_w, canonical_scale);
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return forward(levels, rois, scales, pooled_h, pooled_w, sampling_ratio, aligned, mapper);
}

template <BackwardEngine* backward>
std::vector<at::Tensor> multilevel_roi_align_backward_op(const at::Tensor& grad, const at::Tensor& rois,
                                                         at::ArrayRef<double> scales, int64_t batch_size,
                                                         int64_t channels, at::IntArrayRef heights,
                                                         at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
                                                         double canonical_scale, int64_t canonical_level,
                                                         bool deterministic) {
  checks::multilevel_roi_align_backward(grad, rois, scales, batch_size, channels, heights, widths, canonical_scale);
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return backward(grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned, mapper,
                  deterministic);
}

// Registers the four operators for the backend whose TORCH_LIBRARY_IMPL block calls this (`m`
// is a torch::Library, or the CUDA emulation's stand-in for one).
template <ForwardEngine* forward, BackwardEngine* backward, typename Library>
void register_roi_align_ops(Library& m) {
  m.impl("roi_align", &roi_align_op<forward>);
  m.impl("roi_align_backward", &roi_align_backward_op<backward>);
  m.impl("multilevel_roi_align", &multilevel_roi_align_op<forward>);
  m.impl("multilevel_roi_align_backward", &multilevel_roi_align_backward_op<backward>);
}

}  // namespace sfpn::roi_align
