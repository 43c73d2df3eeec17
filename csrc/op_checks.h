// Argument checks of every sfpn operator, shared by the CPU (cpu/*.cpp) and CUDA (cuda/*.cu) entry
// points: a call that reaches a registered op directly (torch.ops.sfpn.*, bypassing sfpn.ops'
// Python checks) gets a TORCH_CHECK error naming the argument and what was expected, never a
// crash. Only metadata is read here (ranks, sizes, dtypes, devices, scalar arguments): a check of
// tensor values would cost a device-to-host sync on CUDA. Values are checked by the kernels
// themselves (the CPU RoIAlign inside its loop over RoIs, the CUDA kernels with device asserts).
//
// Each check is named after its op and takes the op's arguments under the schema's names.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "roi_align_geometry.h"

namespace sfpn::checks {

// Whether a CPU kernel takes `t` as NHWC: a channels_last (N, C, H, W) tensor that is not also
// plainly contiguous. The rule of sfpn/ops/_library.py's output_memory_format on the CPU: such an
// input is read as it is and gives a channels_last output.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// `list[i]`, the name of one element of a list argument.
inline std::string element(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// A floating-point tensor of rank `dim`; `layout` names its dimensions, e.g. "(N, C, H, W)".
inline void check_tensor(const char* op, const std::string& name, const at::Tensor& t, int64_t dim,
                         const char* layout) {
  TORCH_CHECK(t.dim() == dim, "sfpn::", op, ": ", name, " must be ", layout, ", got shape ", t.sizes());
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, "sfpn::", op,
              ": ", name, " must be float16, bfloat16, float32 or float64, got ", type);
}

inline void check_same_device(const char* op, const std::string& name, const at::Tensor& t, const std::string& ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "sfpn::", op, ": ", name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

// Same dtype, device, batch size and channels as `ref`, both (N, C, H, W).
inline void check_like(const char* op, const std::string& name, const at::Tensor& t, const std::string& ref_name,
                       const at::Tensor& ref) {
  check_same_device(op, name, t, ref_name, ref);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "sfpn::", op, ": ", name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.size(0) == ref.size(0) && t.size(1) == ref.size(1), "sfpn::", op, ": ", name,
              " must have the batch size and channels (N, C) of ", ref_name, ", got shapes ", t.sizes(), " and ",
              ref.sizes());
}

// ---------------------------------------------------------------------------------------------
// upsample_add, semantic_fuse and their backwards. `mode` is checked where it is parsed
// (resize::is_bilinear).

inline void upsample_add(const at::Tensor& top, const at::Tensor& lateral) {
  check_tensor("upsample_add", "lateral", lateral, 4, "(N, C, H, W)");
  check_tensor("upsample_add", "top", top, 4, "(N, C, H, W)");
  check_like("upsample_add", "top", top, "lateral", lateral);
  TORCH_CHECK(lateral.numel() == 0 || top.numel() > 0,
              "sfpn::upsample_add: top must not be empty when lateral is not, got shape ", top.sizes());
}

inline void upsample_add_backward(const at::Tensor& grad, int64_t top_height, int64_t top_width) {
  check_tensor("upsample_add_backward", "grad", grad, 4, "(N, C, H, W)");
  TORCH_CHECK(top_height >= 0 && top_width >= 0, "sfpn::upsample_add_backward: top_height and top_width must be >= 0, got ",
              top_height, " and ", top_width);
}

inline void semantic_fuse(at::TensorList levels, const at::Tensor& semantic) {
  check_tensor("semantic_fuse", "semantic", semantic, 4, "(N, C, H, W)");
  for (size_t i = 0; i < levels.size(); ++i) {
    const std::string name = element("levels", i);
    check_tensor("semantic_fuse", name, levels[i], 4, "(N, C, H, W)");
    check_like("semantic_fuse", name, levels[i], "semantic", semantic);
    TORCH_CHECK(levels[i].numel() == 0 || semantic.numel() > 0,
                "sfpn::semantic_fuse: semantic must not be empty when ", name, " is not, got shape ", semantic.sizes());
  }
}

inline void semantic_fuse_backward(at::TensorList grads, int64_t semantic_height, int64_t semantic_width) {
  TORCH_CHECK(!grads.empty(), "sfpn::semantic_fuse_backward: grads must hold at least one gradient");
  for (size_t i = 0; i < grads.size(); ++i) {
    check_tensor("semantic_fuse_backward", element("grads", i), grads[i], 4, "(N, C, H, W)");
    check_like("semantic_fuse_backward", element("grads", i), grads[i], "grads[0]", grads[0]);
  }
  TORCH_CHECK(semantic_height >= 0 && semantic_width >= 0,
              "sfpn::semantic_fuse_backward: semantic_height and semantic_width must be >= 0, got ", semantic_height,
              " and ", semantic_width);
}

// ---------------------------------------------------------------------------------------------
// RoIAlign, single- and multi-level, and their backwards.

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
  TORCH_CHECK(num_levels >= 1 && num_levels <= static_cast<size_t>(sfpn::roi_align::kMaxLevels), "sfpn::", op,
              ": needs 1 to ", sfpn::roi_align::kMaxLevels, " levels, got ", num_levels);
  TORCH_CHECK(scales.size() == num_levels, "sfpn::", op, ": scales must give one scale per level: ", scales.size(),
              " scales for ", num_levels, " levels");
  for (size_t i = 0; i < scales.size(); ++i) check_scale(op, element("scales", i), scales[i]);
  const int64_t first = sfpn::roi_align::level_of_scale(scales[0]);
  for (size_t i = 0; i < scales.size(); ++i) {
    TORCH_CHECK(sfpn::roi_align::level_of_scale(scales[i]) == first + static_cast<int64_t>(i), "sfpn::", op,
                ": scales must be 2**-k for consecutive levels k, finest first (as FPN's), got ", scales);
  }
}

// rois: (K, 5) [batch_index, x1, y1, x2, y2], floating point, on the device of `like`.
inline void check_rois(const char* op, const at::Tensor& rois, const std::string& like_name, const at::Tensor& like) {
  check_tensor(op, "rois", rois, 2, "(K, 5) [batch_index, x1, y1, x2, y2]");
  TORCH_CHECK(rois.size(1) == 5, "sfpn::", op, ": rois must be (K, 5) [batch_index, x1, y1, x2, y2], got shape ",
              rois.sizes());
  check_same_device(op, "rois", rois, like_name, like);
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
    check_tensor(op, name(l), levels[l], 4, "(N, C, H, W)");
    check_like(op, name(l), levels[l], name(0), levels[0]);
    TORCH_CHECK(levels[l].size(2) > 0 && levels[l].size(3) > 0, "sfpn::", op, ": ", name(l),
                " must have a non-empty spatial size, got shape ", levels[l].sizes());
  }
}

// The backward's description of the maps: batch_size, channels and one positive height and
// width per level (the sizes themselves are checked by the caller, which knows their names);
// grad (K, C, PH, PW) with one row per RoI.
inline void check_backward_sizes(const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size,
                                 int64_t channels) {
  check_tensor(op, "grad", grad, 4, "(K, C, pooled_height, pooled_width)");
  check_rois(op, rois, "grad", grad);
  TORCH_CHECK(batch_size >= 0, "sfpn::", op, ": batch_size must be >= 0, got ", batch_size);
  TORCH_CHECK(grad.size(1) == channels, "sfpn::", op, ": grad must have channels = ", channels,
              " channels, got shape ", grad.sizes());
  TORCH_CHECK(grad.size(0) == rois.size(0), "sfpn::", op, ": grad must have one row per RoI, got shape ",
              grad.sizes(), " for rois of shape ", rois.sizes());
}

inline void roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                      int64_t pooled_width) {
  check_feature_maps("roi_align", input, [](size_t) { return std::string("input"); });
  check_rois("roi_align", rois, "input", input);
  check_scale("roi_align", "spatial_scale", spatial_scale);
  check_pooled_size("roi_align", pooled_height, pooled_width);
}

inline void roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                               int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                               int64_t height, int64_t width) {
  check_backward_sizes("roi_align_backward", grad, rois, batch_size, channels);
  TORCH_CHECK(height > 0 && width > 0, "sfpn::roi_align_backward: height and width must be positive, got ", height,
              " and ", width);
  check_scale("roi_align_backward", "spatial_scale", spatial_scale);
  check_pooled_size("roi_align_backward", pooled_height, pooled_width);
  TORCH_CHECK(grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              "sfpn::roi_align_backward: grad must be (K, C, pooled_height, pooled_width) with (", pooled_height, ", ",
              pooled_width, "), got shape ", grad.sizes());
}

inline void multilevel_roi_align(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                                 int64_t pooled_height, int64_t pooled_width, double canonical_scale) {
  check_pyramid_scales("multilevel_roi_align", scales, levels.size());
  check_feature_maps("multilevel_roi_align", levels, [](size_t l) { return element("levels", l); });
  check_rois("multilevel_roi_align", rois, "levels[0]", levels[0]);
  check_pooled_size("multilevel_roi_align", pooled_height, pooled_width);
  check_canonical_scale("multilevel_roi_align", canonical_scale);
}

inline void multilevel_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales,
                                          int64_t batch_size, int64_t channels, at::IntArrayRef heights,
                                          at::IntArrayRef widths, double canonical_scale) {
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

// ---------------------------------------------------------------------------------------------
// nms, batched_nms, batched_nms_padded. Any int64 class id is valid, any threshold too (a NaN
// one suppresses nothing, as in torchvision).

// boxes (N, 4), scores (N,) of their dtype, and for the batched ops idxs (N,) int64 (null for nms).
inline void check_boxes(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs) {
  check_tensor(op, "boxes", boxes, 2, "(N, 4) [x1, y1, x2, y2]");
  TORCH_CHECK(boxes.size(1) == 4, "sfpn::", op, ": boxes must be (N, 4) [x1, y1, x2, y2], got shape ", boxes.sizes());
  check_tensor(op, "scores", scores, 1, "(N,)");
  TORCH_CHECK(scores.size(0) == boxes.size(0), "sfpn::", op, ": scores must be (N,) = (", boxes.size(0),
              ",) like boxes, got shape ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), "sfpn::", op, ": scores must have the dtype of boxes (",
              boxes.scalar_type(), "), got ", scores.scalar_type());
  check_same_device(op, "scores", scores, "boxes", boxes);
  if (idxs == nullptr) return;
  TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), "sfpn::", op, ": idxs must be (N,) = (",
              boxes.size(0), ",) like boxes, got shape ", idxs->sizes());
  TORCH_CHECK(idxs->scalar_type() == at::kLong, "sfpn::", op, ": idxs must be int64, got ", idxs->scalar_type());
  check_same_device(op, "idxs", *idxs, "boxes", boxes);
}

inline void nms(const at::Tensor& boxes, const at::Tensor& scores) {
  check_boxes("nms", boxes, scores, nullptr);
}

inline void batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs) {
  check_boxes("batched_nms", boxes, scores, &idxs);
}

inline void batched_nms_padded(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                               int64_t max_out) {
  check_boxes("batched_nms_padded", boxes, scores, &idxs);
  TORCH_CHECK(max_out >= 0, "sfpn::batched_nms_padded: max_out must be >= 0, got ", max_out);
}

}  // namespace sfpn::checks
