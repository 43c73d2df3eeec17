// CPU building blocks of the normalisation + ReLU ops (group_norm_relu, batch_norm_relu): per-channel
// sums over a map, the pass that normalises, applies per-channel affine coefficients, adds a
// residual and the ReLU as it writes the output, and the pass that writes the input's gradient
// dx = a g' + b x + d from per-channel coefficients. Each op computes its own statistics and
// coefficients from the sums: per image and group for GroupNorm, per channel over the batch for
// BatchNorm.
//
// Layout: a map is (N, C, H, W), NHWC (channels_last) or NCHW as it is laid out, with `pixels` =
// H * W. Per-channel arrays are (N, C): one row per image. A kernel may also walk an NHWC map as
// one image of N * H * W pixels (the (N * H * W, C) matrix it is in memory), with one row of
// coefficients: how BatchNorm, whose coefficients are the same for every image, walks it.
//
// Sums: every channel's two sums in double (runs of up to 256 rows summed first in float for
// bf16/fp16 maps), NCHW a plane at a time, NHWC a fixed run of pixels at a time (a vector of
// channels per pixel) into per-run partial sums then added in run order, so that the bits never
// depend on the thread count.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "cpu/vector_clones.h"

namespace sfpn::norm_relu::cpu {

// NHWC pixels per partial sum: a fixed run, so the order of the additions is the same at any
// thread count.
constexpr int64_t kRunPixels = 256;
// Values per parallel task at least: small maps run on one thread.
constexpr int64_t kMinTaskValues = int64_t(1) << 16;

// Items per parallel task, for items of `values` values each (planes, pixels, runs).
inline int64_t grain_of(int64_t values) {
  return std::max<int64_t>(1, kMinTaskValues / values);
}

// Whether the ReLU passed the gradient at an output value: out > 0 (a NaN passes none, as ATen's
// threshold_backward, the references', passes none).
template <typename scalar_t>
inline bool relu_passes(scalar_t out) {
  return static_cast<at::opmath_type<scalar_t>>(out) > 0;
}

// bf16/fp16 maps sum runs of up to kSumRows rows in float, a block of kSumBlock channels at a time
// (the block's two sums in 8 of AVX-512's 32 vector registers), before the double sums take them:
// float holds their values, squares and products exactly (8 or 11 significant bits, squared), so
// that a run's sum rounds by at most ~kSumRows * 2^-24 of its magnitude (typically ~16 * 2^-24),
// far below the map's own rounding (2^-9 for bf16), at half the vector width's cost of double
// (the bf16 passes ran 1.3x faster). float32 and float64 maps add every row
// into the double sums as it is read (a float run would round float32's products; blocking the
// double sums as the float ones cost 13-20% at 256 channels).
constexpr int64_t kSumRows = 256;
constexpr int64_t kSumBlock = 64;

// ReLU's gradient select by bit mask: `value` where `keep`, else +0 (a NaN gradient the ReLU drops
// stays dropped). GCC turns `keep ? value : 0` added into a sum into a conditional add, which it
// does not vectorise; value * keep would make NaN of a dropped NaN.
template <typename sum_t>
inline sum_t passed_by(bool keep, sum_t value) {
  using bits_t = std::conditional_t<sizeof(sum_t) == 4, uint32_t, uint64_t>;
  return std::bit_cast<sum_t>(std::bit_cast<bits_t>(value) & -static_cast<bits_t>(keep));
}

// The sums of the terms of a block of channels over a run of rows (float, for bf16/fp16 maps),
// added into the double sums.
inline void add_run(const float* s, const float* q, int64_t block, double* first, double* second) {
  for (int64_t i = 0; i < block; ++i) {
    first[i] += s[i];
    second[i] += q[i];
  }
}

// The two per-channel sums of the statistics, added over `rows` rows of `width` contiguous values
// (NHWC: pixels of C channels; NCHW: a plane read as rows of kPlaneWidth) into sum[i], squares[i]:
// the forward's x and x^2. (The loops are written out per sum type: a lambda passed into a clone
// for the terms kept GCC from vectorising the bf16 loops, 1.3-1.4x slower.)
template <typename scalar_t>
SFPN_VECTOR_CLONES void add_moments(const scalar_t* x, int64_t rows, int64_t width, double* sum, double* squares) {
  if constexpr (sizeof(scalar_t) == 2) {
    for (int64_t c0 = 0; c0 < width; c0 += kSumBlock) {
      const int64_t block = std::min(kSumBlock, width - c0);
      for (int64_t r0 = 0; r0 < rows; r0 += kSumRows) {
        float s[kSumBlock] = {}, q[kSumBlock] = {};
        for (int64_t r = r0; r < std::min(rows, r0 + kSumRows); ++r) {
          const scalar_t* __restrict__ row = x + r * width + c0;
          for (int64_t i = 0; i < block; ++i) {
            const float v = static_cast<float>(row[i]);
            s[i] += v;
            q[i] += v * v;
          }
        }
        add_run(s, q, block, sum + c0, squares + c0);
      }
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* __restrict__ row = x + r * width;
      double* __restrict__ s = sum;
      double* __restrict__ q = squares;
      for (int64_t i = 0; i < width; ++i) {
        const double v = static_cast<double>(row[i]);
        s[i] += v;
        q[i] += v * v;
      }
    }
  }
}

// The backward's: g' and g' x, where g' is the incoming gradient passed by the ReLU (out > 0).
template <typename scalar_t>
SFPN_VECTOR_CLONES void add_gradient_moments(const scalar_t* grad, const scalar_t* out, const scalar_t* x, int64_t rows,
                                             int64_t width, double* sum, double* products) {
  if constexpr (sizeof(scalar_t) == 2) {
    for (int64_t c0 = 0; c0 < width; c0 += kSumBlock) {
      const int64_t block = std::min(kSumBlock, width - c0);
      for (int64_t r0 = 0; r0 < rows; r0 += kSumRows) {
        float s[kSumBlock] = {}, q[kSumBlock] = {};
        for (int64_t r = r0; r < std::min(rows, r0 + kSumRows); ++r) {
          const int64_t o = r * width + c0;
          const scalar_t* __restrict__ g = grad + o;
          const scalar_t* __restrict__ y = out + o;
          const scalar_t* __restrict__ v = x + o;
          for (int64_t i = 0; i < block; ++i) {
            const float passed = passed_by(relu_passes(y[i]), static_cast<float>(g[i]));
            s[i] += passed;
            q[i] += passed * static_cast<float>(v[i]);
          }
        }
        add_run(s, q, block, sum + c0, products + c0);
      }
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* __restrict__ g = grad + r * width;
      const scalar_t* __restrict__ y = out + r * width;
      const scalar_t* __restrict__ v = x + r * width;
      double* __restrict__ s = sum;
      double* __restrict__ q = products;
      for (int64_t i = 0; i < width; ++i) {
        const double passed = passed_by(relu_passes(y[i]), static_cast<double>(g[i]));
        s[i] += passed;
        q[i] += passed * static_cast<double>(v[i]);
      }
    }
  }
}

// Calls span(first, count, k) over the whole map, in parallel, for the passes that write it:
// NHWC a task's pixels an image at a time (`count` pixels from value `first`, k = n * C the
// image's first per-channel coefficient), NCHW a plane at a time (`count` values from value
// `first`, k the plane's coefficient).
template <typename Span>
void for_each_span(int64_t batch, int64_t channels, int64_t pixels, bool channels_last, const Span& span) {
  if (channels_last) {
    at::parallel_for(0, batch * pixels, grain_of(channels), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end;) {
        const int64_t n = p / pixels, stop = std::min(end, (n + 1) * pixels);
        span(p * channels, stop - p, n * channels);
        p = stop;
      }
    });
  } else {
    at::parallel_for(0, batch * channels, grain_of(pixels), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) span(plane * pixels, pixels, plane);
    });
  }
}

// Two sums per (n, c) over the pixels, (N, C) each, in double, of the terms `add` adds:
// add(first, rows, width, s, q) adds those of `rows` rows of `width` values from value `first` of
// the map into s[0, width) and q[0, width) (add_moments or add_gradient_moments). NHWC: fixed runs
// of kRunPixels pixels into partial sums added in run order; NCHW: a plane at a time, as rows of
// kPlaneWidth columns summed at the end. Either way the order of the additions is fixed.
template <typename AddTerms>
std::tuple<at::Tensor, at::Tensor> per_channel_sums(int64_t batch, int64_t channels, int64_t pixels, bool channels_last,
                                                    const at::TensorOptions& options, const AddTerms& add) {
  const auto double_options = options.dtype(at::kDouble);
  at::Tensor sum = at::zeros({batch, channels}, double_options), second = at::zeros({batch, channels}, double_options);
  double* sum_data = sum.mutable_data_ptr<double>();
  double* second_data = second.mutable_data_ptr<double>();
  if (!channels_last) {
    constexpr int64_t kPlaneWidth = 64;
    at::parallel_for(0, batch * channels, grain_of(pixels), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        double s[kPlaneWidth] = {}, q[kPlaneWidth] = {};
        const int64_t rows = pixels / kPlaneWidth, first = plane * pixels;
        add(first, rows, kPlaneWidth, s, q);
        add(first + rows * kPlaneWidth, 1, pixels - rows * kPlaneWidth, s, q);
        for (int64_t i = 0; i < kPlaneWidth; ++i) {
          sum_data[plane] += s[i];
          second_data[plane] += q[i];
        }
      }
    });
    return {sum, second};
  }
  const int64_t runs = (pixels + kRunPixels - 1) / kRunPixels;
  at::Tensor partial = at::zeros({batch * runs, 2, channels}, double_options);
  double* partial_data = partial.mutable_data_ptr<double>();
  at::parallel_for(0, batch * runs, grain_of(kRunPixels * channels), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / runs, first = (task % runs) * kRunPixels;
      double* run_sums = partial_data + task * 2 * channels;
      add((n * pixels + first) * channels, std::min(kRunPixels, pixels - first), channels, run_sums,
          run_sums + channels);
    }
  });
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t run = 0; run < runs; ++run) {
      const double* run_sums = partial_data + (n * runs + run) * 2 * channels;
      for (int64_t c = 0; c < channels; ++c) {
        sum_data[n * channels + c] += run_sums[c];
        second_data[n * channels + c] += run_sums[channels + c];
      }
    }
  }
  return {sum, second};
}

// The forward's statistics' sums of x: sum(x) and sum(x^2) per (n, c), (N, C) each, in double.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> moments(const scalar_t* x, int64_t batch, int64_t channels, int64_t pixels,
                                           bool channels_last, const at::TensorOptions& options) {
  return per_channel_sums(batch, channels, pixels, channels_last, options,
                          [x](int64_t first, int64_t rows, int64_t width, double* s, double* q) {
                            add_moments(x + first, rows, width, s, q);
                          });
}

// The backward's: sum(g') and sum(g' x) per (n, c), (N, C) each, in double.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> gradient_moments(const scalar_t* grad, const scalar_t* out, const scalar_t* x,
                                                    int64_t batch, int64_t channels, int64_t pixels,
                                                    bool channels_last, const at::TensorOptions& options) {
  return per_channel_sums(batch, channels, pixels, channels_last, options,
                          [grad, out, x](int64_t first, int64_t rows, int64_t width, double* s, double* q) {
                            add_gradient_moments(grad + first, out + first, x + first, rows, width, s, q);
                          });
}

// max(y, 0), NaN staying NaN as ATen's ReLU leaves it.
template <typename acc_t>
inline acc_t relu(acc_t y) {
  return y < acc_t(0) ? acc_t(0) : y;
}

// NHWC: `pixels` pixels of `channels` values, each channel with its own scale and shift; with
// kResidual, the residual's value added before the ReLU.
template <bool kResidual, typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void normalise_pixels(const scalar_t* x, const scalar_t* residual, scalar_t* out, int64_t pixels,
                                         int64_t channels, const acc_t* scale, const acc_t* shift) {
  for (int64_t p = 0; p < pixels; ++p) {
    const scalar_t* __restrict__ in = x + p * channels;
    scalar_t* __restrict__ to = out + p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      acc_t y = static_cast<acc_t>(in[c]) * scale[c] + shift[c];
      if constexpr (kResidual) y += static_cast<acc_t>(residual[p * channels + c]);
      to[c] = static_cast<scalar_t>(relu(y));
    }
  }
}

// NCHW: one plane of `count` values, one scale and shift.
template <bool kResidual, typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void normalise_plane(const scalar_t* x, const scalar_t* residual, scalar_t* out, int64_t count,
                                        acc_t scale, acc_t shift) {
  const scalar_t* __restrict__ in = x;
  scalar_t* __restrict__ to = out;
  for (int64_t i = 0; i < count; ++i) {
    acc_t y = static_cast<acc_t>(in[i]) * scale + shift;
    if constexpr (kResidual) y += static_cast<acc_t>(residual[i]);
    to[i] = static_cast<scalar_t>(relu(y));
  }
}

// out = relu(x * scale + shift + residual) over a map of `batch` images, scale and shift (batch,
// C) per image and channel; no sum where `residual` is null.
template <typename scalar_t, typename acc_t>
void normalise_relu(const scalar_t* x, const scalar_t* residual, scalar_t* out, int64_t batch, int64_t channels,
                    int64_t pixels, bool channels_last, const acc_t* scale, const acc_t* shift) {
  const auto pass = [&]<bool kResidual>() {
    for_each_span(batch, channels, pixels, channels_last, [&](int64_t first, int64_t count, int64_t k) {
      const scalar_t* r = kResidual ? residual + first : nullptr;
      if (channels_last) {
        normalise_pixels<kResidual>(x + first, r, out + first, count, channels, scale + k, shift + k);
      } else {
        normalise_plane<kResidual>(x + first, r, out + first, count, scale[k], shift[k]);
      }
    });
  };
  if (residual != nullptr) {
    pass.template operator()<true>();
  } else {
    pass.template operator()<false>();
  }
}

// The input's gradient, dx = a g' + b x + d, g' the gradient the ReLU passed; with kResidual g'
// itself too, the gradient of a residual summed before the ReLU. NHWC: `pixels` pixels of
// `channels` values, a, b and d per channel.
template <bool kResidual, typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void input_gradient_pixels(const scalar_t* grad, const scalar_t* out, const scalar_t* x,
                                              scalar_t* grad_x, scalar_t* grad_residual, int64_t pixels,
                                              int64_t channels, const acc_t* a, const acc_t* b, const acc_t* d) {
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t o = p * channels;
    const scalar_t* __restrict__ g = grad + o;
    const scalar_t* __restrict__ y = out + o;
    const scalar_t* __restrict__ v = x + o;
    scalar_t* __restrict__ to = grad_x + o;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t incoming = static_cast<acc_t>(g[c]);
      const acc_t passed = relu_passes(y[c]) ? incoming : acc_t(0);
      to[c] = static_cast<scalar_t>(a[c] * passed + b[c] * static_cast<acc_t>(v[c]) + d[c]);
      if constexpr (kResidual) grad_residual[o + c] = static_cast<scalar_t>(passed);
    }
  }
}

// NCHW: one plane of `count` values, one a, b and d.
template <bool kResidual, typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void input_gradient_plane(const scalar_t* grad, const scalar_t* out, const scalar_t* x,
                                             scalar_t* grad_x, scalar_t* grad_residual, int64_t count, acc_t a,
                                             acc_t b, acc_t d) {
  const scalar_t* __restrict__ g = grad;
  const scalar_t* __restrict__ y = out;
  const scalar_t* __restrict__ v = x;
  scalar_t* __restrict__ to = grad_x;
  for (int64_t i = 0; i < count; ++i) {
    const acc_t incoming = static_cast<acc_t>(g[i]);
    const acc_t passed = relu_passes(y[i]) ? incoming : acc_t(0);
    to[i] = static_cast<scalar_t>(a * passed + b * static_cast<acc_t>(v[i]) + d);
    if constexpr (kResidual) grad_residual[i] = static_cast<scalar_t>(passed);
  }
}

// dx = a g' + b x + d over a map of `batch` images, a, b and d (batch, C) per image and channel;
// g' into grad_residual too unless it is null.
template <typename scalar_t, typename acc_t>
void input_gradient(const scalar_t* grad, const scalar_t* out, const scalar_t* x, scalar_t* grad_x,
                    scalar_t* grad_residual, int64_t batch, int64_t channels, int64_t pixels, bool channels_last,
                    const acc_t* a, const acc_t* b, const acc_t* d) {
  const auto pass = [&]<bool kResidual>() {
    for_each_span(batch, channels, pixels, channels_last, [&](int64_t first, int64_t count, int64_t k) {
      scalar_t* r = kResidual ? grad_residual + first : nullptr;
      if (channels_last) {
        input_gradient_pixels<kResidual>(grad + first, out + first, x + first, grad_x + first, r, count, channels,
                                         a + k, b + k, d + k);
      } else {
        input_gradient_plane<kResidual>(grad + first, out + first, x + first, grad_x + first, r, count, a[k], b[k],
                                        d[k]);
      }
    });
  };
  if (grad_residual != nullptr) {
    pass.template operator()<true>();
  } else {
    pass.template operator()<false>();
  }
}

// The dtype of the statistics (mean and rstd): float32, float64 for float64 x, as ATen's.
inline at::ScalarType statistics_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A per-channel parameter of `op` (weight, bias): (C,) for x's C channels, on x's device.
inline void check_per_channel(const char* op, const char* name, const at::Tensor& param, const at::Tensor& x) {
  checks::check_tensor(op, name, param, 1, "(C,)");
  TORCH_CHECK(param.size(0) == x.size(1), "sfpn::", op, ": ", name, " must have shape (", x.size(1),
              ",) to match x's channels, got ", param.sizes());
  checks::check_same_device(op, name, param, "x", x);
}

}  // namespace sfpn::norm_relu::cpu
