// The sfpn operator library: every schema lives here, one line per op. Kernels register per
// dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cu; autograd, fake (meta) implementations and
// the pure-PyTorch references live in sfpn/ops/*.py.
#include <torch/library.h>

#ifdef SFPN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sfpn {

// CUDA runtime version the extension was compiled against (e.g. 13000), 0 for a CPU-only build.
int64_t cuda_version() {
#ifdef SFPN_WITH_CUDA
  return CUDART_VERSION;
#else
  return 0;
#endif
}

TORCH_LIBRARY(sfpn, m) {
  m.def("_cuda_version() -> int", &cuda_version);

  // FPN top-down step: lateral + resize(top, lateral.shape[-2:]).
  m.def("upsample_add(Tensor top, Tensor lateral, str mode, bool align_corners) -> Tensor");
  // Gradient w.r.t. `top` (the adjoint of the resize); the gradient w.r.t. lateral is `grad`.
  m.def(
      "upsample_add_backward(Tensor grad, SymInt top_height, SymInt top_width, str mode, "
      "bool align_corners) -> Tensor");

  // [levels[i] + resize(semantic, levels[i].shape[-2:]) for every i], one launch.
  m.def("semantic_fuse(Tensor[] levels, Tensor semantic, str mode, bool align_corners) -> Tensor[]");
  // Gradient w.r.t. `semantic`: sum over levels of the adjoint resize of grads[i].
  m.def(
      "semantic_fuse_backward(Tensor[] grads, SymInt semantic_height, SymInt semantic_width, "
      "str mode, bool align_corners) -> Tensor");

  // RoIAlign with torchvision's schema; rois are (K, 5) [batch_index, x1, y1, x2, y2]. The forward
  // ignores `deterministic`; it is there so that autograd can hand it to the backward.
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned, bool deterministic=False) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned, bool deterministic) -> Tensor");
  // All FPN levels in one launch; the level of each RoI is chosen inside the kernel.
  m.def(
      "multilevel_roi_align(Tensor[] levels, Tensor rois, float[] scales, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned, float canonical_scale, "
      "int canonical_level, bool deterministic=False) -> Tensor");
  // The level sizes instead of the levels themselves, so that autograd need not keep them alive.
  m.def(
      "multilevel_roi_align_backward(Tensor grad, Tensor rois, float[] scales, SymInt batch_size, "
      "SymInt channels, SymInt[] heights, SymInt[] widths, int sampling_ratio, bool aligned, "
      "float canonical_scale, int canonical_level, bool deterministic) -> Tensor[]");

  // Non-maximum suppression with torchvision's schemas: kept indices by decreasing score.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // Fixed-size variant for CUDA graphs and compiled code: (indices padded with -1, count).
  m.def(
      "batched_nms_padded(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, "
      "int max_out) -> (Tensor, Tensor)");
}

}  // namespace sfpn
