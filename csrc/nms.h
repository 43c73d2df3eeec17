// Host side of non-maximum suppression (nms, batched_nms, batched_nms_padded), shared by the CPU
// (cpu/nms.cpp) and CUDA (cuda/nms.cu) backends, so that each backend file holds only its
// kernels and their launch: the argument checks, and the three operators written once over a
// backend's engine and registered by register_nms_ops. The IoU test both backends' kernels run
// is nms_iou.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "checks.h"
#include "nms_iou.h"

namespace sfpn::nms {

// The checks of each op's arguments under the schema's names. Any int64 class id is valid, any
// threshold too (a NaN one suppresses nothing, as in torchvision).

// boxes (N, 4), scores (N,) of their dtype, and for the batched ops idxs (N,) int64 (null for nms).
inline void check_boxes(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs) {
  checks::check_tensor(op, "boxes", boxes, 2, "(N, 4) [x1, y1, x2, y2]");
  TORCH_CHECK(boxes.size(1) == 4, "sfpn::", op, ": boxes must be (N, 4) [x1, y1, x2, y2], got shape ", boxes.sizes());
  checks::check_tensor(op, "scores", scores, 1, "(N,)");
  TORCH_CHECK(scores.size(0) == boxes.size(0), "sfpn::", op, ": scores must be (N,) = (", boxes.size(0),
              ",) like boxes, got shape ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), "sfpn::", op, ": scores must have the dtype of boxes (",
              boxes.scalar_type(), "), got ", scores.scalar_type());
  checks::check_same_device(op, "scores", scores, "boxes", boxes);
  if (idxs == nullptr) return;
  TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), "sfpn::", op, ": idxs must be (N,) = (",
              boxes.size(0), ",) like boxes, got shape ", idxs->sizes());
  TORCH_CHECK(idxs->scalar_type() == at::kLong, "sfpn::", op, ": idxs must be int64, got ", idxs->scalar_type());
  checks::check_same_device(op, "idxs", *idxs, "boxes", boxes);
}

inline void check_nms(const at::Tensor& boxes, const at::Tensor& scores) {
  check_boxes("nms", boxes, scores, nullptr);
}

inline void check_batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs) {
  check_boxes("batched_nms", boxes, scores, &idxs);
}

inline void check_batched_nms_padded(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                     int64_t max_out) {
  check_boxes("batched_nms_padded", boxes, scores, &idxs);
  TORCH_CHECK(max_out >= 0, "sfpn::batched_nms_padded: max_out must be >= 0, got ", max_out);
}

// A backend's engine. The boxes kept by greedy suppression (a box is dropped when it overlaps a
// kept box of higher score and the same class by IoU > iou_threshold; idxs null: one class), by
// decreasing score: their indices fill the first `count` of `max_out` slots, -1 the rest.
// Returns (indices (max_out,) int64, count () int64 = min(kept, max_out)). Arguments checked.
using PaddedEngine = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& boxes, const at::Tensor& scores,
                                                        const at::Tensor* idxs, double iou_threshold,
                                                        int64_t max_out);

// The variable-length ops' result: the kept indices alone. Reading their count is the one host
// sync of the CUDA ops.
inline at::Tensor kept_indices(const std::tuple<at::Tensor, at::Tensor>& padded) {
  const auto& [indices, count] = padded;
  return indices.slice(0, 0, count.item<int64_t>());
}

// The operators of sfpn/ops/_library.py over one backend's engine.

template <PaddedEngine* engine>
at::Tensor nms_op(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms(boxes, scores);
  return kept_indices(engine(boxes, scores, nullptr, iou_threshold, boxes.size(0)));
}

template <PaddedEngine* engine>
at::Tensor batched_nms_op(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                          double iou_threshold) {
  check_batched_nms(boxes, scores, idxs);
  return kept_indices(engine(boxes, scores, &idxs, iou_threshold, boxes.size(0)));
}

template <PaddedEngine* engine>
std::tuple<at::Tensor, at::Tensor> batched_nms_padded_op(const at::Tensor& boxes, const at::Tensor& scores,
                                                         const at::Tensor& idxs, double iou_threshold,
                                                         int64_t max_out) {
  check_batched_nms_padded(boxes, scores, idxs, max_out);
  return engine(boxes, scores, &idxs, iou_threshold, max_out);
}

// Registers the three operators for the backend whose TORCH_LIBRARY_IMPL block calls this (`m` is
// a torch::Library, or the CUDA emulation's stand-in for one).
template <PaddedEngine* engine, typename Library>
void register_nms_ops(Library& m) {
  m.impl("nms", &nms_op<engine>);
  m.impl("batched_nms", &batched_nms_op<engine>);
  m.impl("batched_nms_padded", &batched_nms_padded_op<engine>);
}

}  // namespace sfpn::nms
