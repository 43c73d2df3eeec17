// Host side of RoIAlign, shared by the CPU (cpu/roi_align.cpp) and CUDA (cuda/roi_align.cu)
// backends, so that each backend file holds only its kernels and their launch: the argument
// checks and preparation every call starts with, and the four operators of sfpn/ops/_library.py
// (sfpn::roi_align, sfpn::multilevel_roi_align and their backwards), written once over a
// backend's engine and registered by register_roi_align_ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <vector>

#include "checks.h"
#include "roi_align_geometry.h"

namespace sfpn::roi_align {

// The checks of each op's arguments under the schema's names.

// A feature-map scale must be a positive normal float32 (the kernels compute in float32 for
// every dtype but float64, and the level of a scale is log2 of its float32 value).
inline void check_scale(const char* op, const std::string& name, double scale) {
  TORCH_CHECK(scale > 0 && std::isnormal(static_cast<float>(scale)), "sfpn::", op, ": ", name,
              " must be a positive finite float32 number, got ", scale);
}

// One scale per level, each 2^-k for consecutive levels k, finest first (FPN's pyramid): the
// kernels map a RoI to level k - k_min of the pyramid from k_min = level(scales[0]) to
// k_max = level(scales[-1]), so any other sequence would index a level that is not there.
inline void check_pyramid_scales(const char* op, at::ArrayRef<double> scales, size_t num_levels) {
  TORCH_CHECK(num_levels >= 1 && num_levels <= static_cast<size_t>(kMaxLevels), "sfpn::", op,
              ": needs 1 to ", kMaxLevels, " levels, got ", num_levels);
  TORCH_CHECK(scales.size() == num_levels, "sfpn::", op, ": scales must give one scale per level: ", scales.size(),
              " scales for ", num_levels, " levels");
  for (size_t i = 0; i < scales.size(); ++i) check_scale(op, checks::element("scales", i), scales[i]);
  const int64_t first = level_of_scale(scales[0]);
  for (size_t i = 0; i < scales.size(); ++i) {
    TORCH_CHECK(level_of_scale(scales[i]) == first + static_cast<int64_t>(i), "sfpn::", op,
                ": scales must be 2**-k for consecutive levels k, finest first (as FPN's), got ", scales);
  }
}

// rois: (K, 5) [batch_index, x1, y1, x2, y2], floating point, on the device of `like`.
inline void check_rois(const char* op, const at::Tensor& rois, const std::string& like_name, const at::Tensor& like) {
  checks::check_tensor(op, "rois", rois, 2, "(K, 5) [batch_index, x1, y1, x2, y2]");
  TORCH_CHECK(rois.size(1) == 5, "sfpn::", op, ": rois must be (K, 5) [batch_index, x1, y1, x2, y2], got shape ",
              rois.sizes());
  checks::check_same_device(op, "rois", rois, like_name, like);
}

inline void check_pooled_size(const char* op, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "sfpn::", op,
              ": pooled_height and pooled_width must be positive, got ", pooled_height, " and ", pooled_width);
}

inline void check_canonical_scale(const char* op, double canonical_scale) {
  TORCH_CHECK(canonical_scale > 0 && std::isfinite(canonical_scale), "sfpn::", op,
              ": canonical_scale must be a positive finite number, got ", canonical_scale);
}

// levels: the maps (N, C, H_l, W_l), non-empty planes, one dtype and device. `name(l)` names
// level l in messages.
template <typename Name>
void check_feature_maps(const char* op, at::TensorList levels, Name name) {
  for (size_t l = 0; l < levels.size(); ++l) {
    checks::check_tensor(op, name(l), levels[l], 4, "(N, C, H, W)");
    checks::check_like(op, name(l), levels[l], name(0), levels[0]);
    TORCH_CHECK(levels[l].size(2) > 0 && levels[l].size(3) > 0, "sfpn::", op, ": ", name(l),
                " must have a non-empty spatial size, got shape ", levels[l].sizes());
  }
}

// The backward's description of the maps: batch_size, channels and one positive height and
// width per level (the sizes themselves are checked by the caller, which knows their names);
// grad (K, C, PH, PW) with one row per RoI.
inline void check_backward_sizes(const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size,
                                 int64_t channels) {
  checks::check_tensor(op, "grad", grad, 4, "(K, C, pooled_height, pooled_width)");
  check_rois(op, rois, "grad", grad);
  TORCH_CHECK(batch_size >= 0, "sfpn::", op, ": batch_size must be >= 0, got ", batch_size);
  TORCH_CHECK(grad.size(1) == channels, "sfpn::", op, ": grad must have channels = ", channels,
              " channels, got shape ", grad.sizes());
  TORCH_CHECK(grad.size(0) == rois.size(0), "sfpn::", op, ": grad must have one row per RoI, got shape ",
              grad.sizes(), " for rois of shape ", rois.sizes());
}

inline void check_roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width) {
  check_feature_maps("roi_align", input, [](size_t) { return std::string("input"); });
  check_rois("roi_align", rois, "input", input);
  check_scale("roi_align", "spatial_scale", spatial_scale);
  check_pooled_size("roi_align", pooled_height, pooled_width);
}

inline void check_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                     int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                     int64_t channels, int64_t height, int64_t width) {
  check_backward_sizes("roi_align_backward", grad, rois, batch_size, channels);
  TORCH_CHECK(height > 0 && width > 0, "sfpn::roi_align_backward: height and width must be positive, got ", height,
              " and ", width);
  check_scale("roi_align_backward", "spatial_scale", spatial_scale);
  check_pooled_size("roi_align_backward", pooled_height, pooled_width);
  TORCH_CHECK(grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              "sfpn::roi_align_backward: grad must be (K, C, pooled_height, pooled_width) with (", pooled_height, ", ",
              pooled_width, "), got shape ", grad.sizes());
}

inline void check_multilevel_roi_align(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                                       int64_t pooled_height, int64_t pooled_width, double canonical_scale) {
  check_pyramid_scales("multilevel_roi_align", scales, levels.size());
  check_feature_maps("multilevel_roi_align", levels, [](size_t l) { return checks::element("levels", l); });
  check_rois("multilevel_roi_align", rois, "levels[0]", levels[0]);
  check_pooled_size("multilevel_roi_align", pooled_height, pooled_width);
  check_canonical_scale("multilevel_roi_align", canonical_scale);
}

inline void check_multilevel_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                                                at::ArrayRef<double> scales, int64_t batch_size, int64_t channels,
                                                at::IntArrayRef heights, at::IntArrayRef widths,
                                                double canonical_scale) {
  constexpr const char* op = "multilevel_roi_align_backward";
  check_pyramid_scales(op, scales, scales.size());
  check_backward_sizes(op, grad, rois, batch_size, channels);
  TORCH_CHECK(heights.size() == scales.size() && widths.size() == scales.size(), "sfpn::", op,
              ": heights and widths must give one size per scale (", scales.size(), "), got ", heights.size(),
              " and ", widths.size());
  for (size_t l = 0; l < scales.size(); ++l) {
    TORCH_CHECK(heights[l] > 0 && widths[l] > 0, "sfpn::", op, ": heights[", l, "] and widths[", l,
                "] must be positive, got ", heights[l], " and ", widths[l]);
  }
  check_canonical_scale(op, canonical_scale);
}

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
// (N, C, H_l, W_l), laid out channels_last when `channels_last` says so (autograd asks for the
// layout of the maps, so that the gradient adds to their other consumers' without a reorder).
// `deterministic` asks for the same bits on every run (a backend that always gives them may
// ignore it).
using BackwardEngine = std::vector<at::Tensor>(const at::Tensor& grad, const at::Tensor& rois,
                                               at::ArrayRef<double> scales, int64_t batch_size, int64_t channels,
                                               at::IntArrayRef heights, at::IntArrayRef widths,
                                               int64_t sampling_ratio, bool aligned, const LevelMapper& mapper,
                                               bool deterministic, bool channels_last);

// RoI coordinates in the precision the kernels compute in: fp32 for fp16/bf16/fp32 maps.
inline at::Tensor rois_in_compute_type(const at::Tensor& rois, at::ScalarType input_type) {
  return rois.to(input_type == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

// A forward call's arguments (checked by the operator, check_*) in the form the kernels read.
struct ForwardArgs {
  std::vector<at::Tensor> levels;        // (N, C, H_l, W_l), contiguous or (channels_last) NHWC
  std::vector<int64_t> heights, widths;  // H_l, W_l
  at::Tensor rois;                       // contiguous (K, 5) in the compute type
  at::Tensor output;                     // uninitialised contiguous (K, C, pooled_h, pooled_w)
};

// `channels_last`: the backend's kernel reads NHWC levels (each level is copied into that layout
// only when it is not in it already).
inline ForwardArgs forward_args(at::TensorList levels, const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w,
                                bool channels_last = false) {
  const at::Tensor& first = levels[0];
  ForwardArgs args;
  for (const at::Tensor& level : levels) {
    args.levels.push_back(level.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
    args.heights.push_back(level.size(2));
    args.widths.push_back(level.size(3));
  }
  args.rois = rois_in_compute_type(rois, first.scalar_type());
  args.output = at::empty({rois.size(0), first.size(1), pooled_h, pooled_w}, first.options());
  return args;
}

// A backward call's arguments (checked by the operator, check_*) in the form the kernels read.
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
  check_roi_align(input, rois, spatial_scale, pooled_h, pooled_w);
  return forward({input}, rois, {spatial_scale}, pooled_h, pooled_w, sampling_ratio, aligned, LevelMapper{});
}

template <BackwardEngine* backward>
at::Tensor roi_align_backward_op(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                 int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                 bool deterministic, bool channels_last) {
  check_roi_align_backward(grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width);
  return backward(grad, rois, {spatial_scale}, batch_size, channels, {height}, {width}, sampling_ratio, aligned,
                  LevelMapper{}, deterministic, channels_last)[0];
}

template <ForwardEngine* forward>
at::Tensor multilevel_roi_align_op(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                                   int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                   double canonical_scale, int64_t canonical_level, bool /*deterministic*/) {
  check_multilevel_roi_align(levels, rois, scales, pooled_h, pooled_w, canonical_scale);
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return forward(levels, rois, scales, pooled_h, pooled_w, sampling_ratio, aligned, mapper);
}

template <BackwardEngine* backward>
std::vector<at::Tensor> multilevel_roi_align_backward_op(const at::Tensor& grad, const at::Tensor& rois,
                                                         at::ArrayRef<double> scales, int64_t batch_size,
                                                         int64_t channels, at::IntArrayRef heights,
                                                         at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
                                                         double canonical_scale, int64_t canonical_level,
                                                         bool deterministic, bool channels_last) {
  check_multilevel_roi_align_backward(grad, rois, scales, batch_size, channels, heights, widths, canonical_scale);
  const LevelMapper mapper = make_level_mapper(scales.front(), scales.back(), canonical_scale, canonical_level);
  return backward(grad, rois, scales, batch_size, channels, heights, widths, sampling_ratio, aligned, mapper,
                  deterministic, channels_last);
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
