// Host side of non-maximum suppression (nms, batched_nms, batched_nms_padded), shared by the CPU
// (cpu/nms.cpp) and CUDA (cuda/nms.cu) backends: the argument checks. The IoU test both
// backends' kernels run is nms_iou.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

}  // namespace sfpn::nms
