// Source indices and weights of a 2-D resize, one axis at a time, with exactly the arithmetic of
// F.interpolate (ATen/native/UpSample.h and cuda/UpSample.cuh, which agree): the same float
// scale, the same rounding, so every output picks the same source pixels as PyTorch does.
// Shared by the CPU (csrc/cpu/resize_kernels.h) and CUDA (csrc/cuda/resize_kernels.cuh) kernels.
//
// Forward: output o of an axis reads the sources and weights taps_of(o): two in bilinear mode,
// index0(o) alone in nearest mode.
// Adjoint (the backward): source i receives from the outputs in tap_range(tap, i); both index
// functions are non-decreasing in o, so those outputs are one contiguous range, and the gradient
// is a gather over it: no atomics and no zero-filling.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace sfpn::resize {

struct Range {
  int64_t begin, end;  // [begin, end)
};

// The forward taps of one output: index0 weighs weight0, index1 weighs weight1 (0 in nearest).
template <typename acc_t>
struct Taps {
  int64_t index0, index1;
  acc_t weight0, weight1;
};

// `acc_t` is the accumulation type of the kernel (float for float/half/bfloat16, double for
// double): bilinear coordinates are computed in it, as PyTorch does; nearest always uses float.
template <typename acc_t>
struct Axis {
  int64_t in_size, out_size;
  bool linear;  // bilinear taps, else PyTorch's legacy nearest
  bool align_corners;
  float nearest_scale;
  acc_t linear_scale;

  Axis() = default;

  C10_HOST_DEVICE Axis(int64_t in, int64_t out, bool linear_, bool align_corners_)
      : in_size(in), out_size(out), linear(linear_), align_corners(align_corners_) {
    nearest_scale = static_cast<float>(in) / out;  // compute_scales_value<float>
    if (align_corners) {
      linear_scale = out > 1 ? static_cast<acc_t>(in - 1) / (out - 1) : acc_t(0);
    } else {
      linear_scale = static_cast<acc_t>(in) / out;
    }
  }

  // The (non-negative) source coordinate of output o in bilinear mode.
  C10_HOST_DEVICE acc_t linear_source(int64_t o) const {
    if (in_size == out_size) return static_cast<acc_t>(o);
    if (align_corners) return linear_scale * o;
    const acc_t source = linear_scale * (o + static_cast<acc_t>(0.5)) - static_cast<acc_t>(0.5);
    return source < acc_t(0) ? acc_t(0) : source;  // F.interpolate clamps, it does not extrapolate
  }

  C10_HOST_DEVICE int64_t index0(int64_t o) const {
    int64_t i;
    if (linear) {
      i = static_cast<int64_t>(linear_source(o));  // truncation == floor: the source is >= 0
    } else if (in_size == out_size) {
      i = o;
    } else if (out_size == 2 * in_size) {
      i = o >> 1;
    } else {
      i = static_cast<int64_t>(static_cast<float>(o) * nearest_scale);
    }
    return i < in_size - 1 ? i : in_size - 1;
  }

  C10_HOST_DEVICE Taps<acc_t> taps_of(int64_t o) const {
    const int64_t i = index0(o);
    if (!linear) return {i, i, acc_t(1), acc_t(0)};
    acc_t lambda = linear_source(o) - static_cast<acc_t>(i);
    lambda = lambda < acc_t(0) ? acc_t(0) : (lambda > acc_t(1) ? acc_t(1) : lambda);
    return {i, i < in_size - 1 ? i + 1 : i, acc_t(1) - lambda, lambda};
  }

  // Weight of tap `tap` of output o (the adjoint needs one at a time).
  C10_HOST_DEVICE acc_t weight(int tap, int64_t o) const {
    const Taps<acc_t> t = taps_of(o);
    return tap == 0 ? t.weight0 : t.weight1;
  }

  // Smallest output o with index0(o) >= i (out_size when there is none): an estimate from the
  // inverse of the mapping, then corrected against index0 itself, which is monotone.
  C10_HOST_DEVICE int64_t first_output(int64_t i) const {
    if (i <= 0) return 0;
    if (i >= in_size) return out_size;
    double estimate;
    const double ratio = static_cast<double>(out_size) / static_cast<double>(in_size);
    if (!linear) {
      estimate = i * ratio;
    } else if (align_corners) {
      estimate = out_size > 1 ? i * static_cast<double>(out_size - 1) / (in_size - 1) : out_size;
    } else {
      estimate = (i + 0.5) * ratio - 0.5;
    }
    int64_t o = estimate <= 0 ? 0 : static_cast<int64_t>(estimate);
    if (o > out_size) o = out_size;
    while (o > 0 && index0(o - 1) >= i) --o;
    while (o < out_size && index0(o) < i) ++o;
    return o;
  }

  // Outputs whose tap `tap` (0: index0, 1: index1; nearest has only tap 0) reads source i.
  C10_HOST_DEVICE Range tap_range(int tap, int64_t i) const {
    if (tap == 0) return {first_output(i), first_output(i + 1)};
    // index1 = index0 + 1 below the last source, and index0 itself at the last one.
    if (in_size == 1) return {0, out_size};
    if (i == 0) return {0, 0};
    if (i < in_size - 1) return {first_output(i - 1), first_output(i)};
    return {first_output(in_size - 2), out_size};
  }

  C10_HOST_DEVICE int taps() const {
    return linear ? 2 : 1;
  }
};

}  // namespace sfpn::resize
