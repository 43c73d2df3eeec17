// Host side of sfpn::upsample_argmax (the class map of logits bilinearly upsampled to image size),
// shared by the CPU (cpu/upsample_argmax.cpp) and CUDA (cuda/upsample_argmax.cu) backends: the
// argument checks, the operator written once over a backend's engine, its registration, and the
// argmax order both backends' kernels keep.
//
// The bilinear taps are F.interpolate's (resize_index.h, align_corners=False), computed in the
// accumulation type: float32 for float32, bfloat16 and float16 logits, float64 for float64.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "checks.h"
#include "resize_index.h"

namespace sfpn::upsample_argmax {

// logits (K, h, w) with K, h, w >= 1; size (H, W) >= 0; crop (H', W') within size.
inline void check_upsample_argmax(const at::Tensor& logits, at::IntArrayRef size, at::IntArrayRef crop) {
  checks::check_tensor("upsample_argmax", "logits", logits, 3, "(K, h, w)");
  TORCH_CHECK(logits.numel() > 0, "sfpn::upsample_argmax: logits must not be empty, got shape ", logits.sizes());
  TORCH_CHECK(size.size() == 2 && size[0] >= 0 && size[1] >= 0,
              "sfpn::upsample_argmax: size must be (H, W) with H, W >= 0, got ", size);
  TORCH_CHECK(crop.size() == 2 && crop[0] >= 0 && crop[0] <= size[0] && crop[1] >= 0 && crop[1] <= size[1],
              "sfpn::upsample_argmax: crop must lie within size ", size, ", got ", crop);
}

// Whether `value` of a later class takes the place of the best so far, in argmax's order: a
// larger value wins, NaN wins over any number (torch.argmax treats NaN as the maximum), and of
// equal values (or two NaNs) the first class stays.
template <typename acc_t>
C10_HOST_DEVICE inline bool beats(acc_t value, acc_t best) {
  return value > best || (value != value && best == best);
}

// A backend's engine writes out (H', W') int64, non-empty: at each pixel of the crop, the argmax
// over the classes of logits (K, h, w), contiguous, bilinearly upsampled to (height, width).
using Engine = void(const at::Tensor& logits, int64_t height, int64_t width, at::Tensor& out);

template <Engine* engine>
at::Tensor upsample_argmax_op(const at::Tensor& logits, at::IntArrayRef size, at::IntArrayRef crop) {
  check_upsample_argmax(logits, size, crop);
  at::Tensor out = at::empty({crop[0], crop[1]}, logits.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  at::Tensor logits_c = logits.contiguous();
  engine(logits_c, size[0], size[1], out);
  return out;
}

// Registers the operator for the backend whose TORCH_LIBRARY_IMPL block calls this (`m` is a
// torch::Library, or the CUDA emulation's stand-in for one).
template <Engine* engine, typename Library>
void register_upsample_argmax_ops(Library& m) {
  m.impl("upsample_argmax", &upsample_argmax_op<engine>);
}

}  // namespace sfpn::upsample_argmax
