// sfpn::group_norm_relu on the CPU: relu(group_norm(x)) for x (N, C, H, W), channels_last or NCHW
// as it is laid out, in two passes over x: the statistics, then one pass that normalises, applies
// the affine parameters and the ReLU as it writes the output. The reference (ATen's GroupNorm,
// then a ReLU) makes a third pass, which in bf16 cost about as much as the GroupNorm itself
// (benchmarks/RESULTS.md, 2026-12-04 (late night)). NCHW float32 and float64 keep ATen's
// GroupNorm with the ReLU in place after it (see group_norm_relu below). The schema, the Python
// checks, the reference and the backward (the reference's, on the saved output) are in
// sfpn/ops/group_norm_relu.py; the Triton kernel serves CUDA.
//
// Statistics. Every channel's sum and sum of squares, in double: NCHW a plane at a time, NHWC a
// fixed run of pixels at a time (a vector of channels per pixel) into per-run partial sums that
// are then added in run order, so that the bits never depend on the thread count. A group's mean
// is E[x] and its variance E[x^2] - E[x]^2, both over its channels and pixels, in double: the
// cancellation costs ~1e-16 * mean^2 / variance, exact in float32 unless |mean| > ~1e4 std.
// The outputs mean and rstd (N, G) are float32 (float64 for float64 x), as ATen's, and feed the
// backward.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/native_group_norm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "checks.h"
#include "cpu/vector_clones.h"

namespace sfpn::group_norm_relu::cpu {
namespace {

constexpr const char* kOp = "group_norm_relu";
// NHWC pixels per partial sum: a fixed run, so the order of the additions is the same at any
// thread count.
constexpr int64_t kRunPixels = 256;
// Values per parallel task at least: small maps run on one thread.
constexpr int64_t kMinTaskValues = int64_t(1) << 16;

// NHWC: `pixels` pixels of `channels` contiguous values each, every channel's sum and sum of
// squares added into sum[c] and squares[c].
template <typename scalar_t>
SFPN_VECTOR_CLONES void add_channel_sums(const scalar_t* x, int64_t pixels, int64_t channels, double* sum,
                                         double* squares) {
  for (int64_t p = 0; p < pixels; ++p) {
    const scalar_t* __restrict__ pixel = x + p * channels;
    double* __restrict__ s = sum;
    double* __restrict__ q = squares;
    for (int64_t c = 0; c < channels; ++c) {
      const double v = static_cast<double>(pixel[c]);
      s[c] += v;
      q[c] += v * v;
    }
  }
}

// NCHW: the sum and sum of squares of one plane of `count` values, read as rows of kWidth
// "channels" whose per-column sums add_channel_sums keeps (a fixed order, vectorised as the NHWC
// sums are), then added up.
template <typename scalar_t>
void plane_sums(const scalar_t* x, int64_t count, double* sum, double* squares) {
  constexpr int64_t kWidth = 64;
  double s[kWidth] = {}, q[kWidth] = {};
  const int64_t rows = count / kWidth;
  add_channel_sums(x, rows, kWidth, s, q);
  add_channel_sums(x + rows * kWidth, 1, count - rows * kWidth, s, q);
  double total = 0, total_squares = 0;
  for (int64_t c = 0; c < kWidth; ++c) {
    total += s[c];
    total_squares += q[c];
  }
  *sum = total;
  *squares = total_squares;
}

// max(v * scale + shift, 0), NaN staying NaN as ATen's ReLU leaves it.
template <typename acc_t>
inline acc_t affine_relu(acc_t v, acc_t scale, acc_t shift) {
  const acc_t y = v * scale + shift;
  return y < acc_t(0) ? acc_t(0) : y;
}

// NHWC: `pixels` pixels of `channels` values, each channel with its own scale and shift.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void normalise_pixels(const scalar_t* x, scalar_t* out, int64_t pixels, int64_t channels,
                                         const acc_t* scale, const acc_t* shift) {
  for (int64_t p = 0; p < pixels; ++p) {
    const scalar_t* __restrict__ in = x + p * channels;
    scalar_t* __restrict__ to = out + p * channels;
    for (int64_t c = 0; c < channels; ++c) to[c] = static_cast<scalar_t>(affine_relu(static_cast<acc_t>(in[c]), scale[c], shift[c]));
  }
}

// NCHW: one plane of `count` values, one scale and shift.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void normalise_plane(const scalar_t* x, scalar_t* out, int64_t count, acc_t scale, acc_t shift) {
  const scalar_t* __restrict__ in = x;
  scalar_t* __restrict__ to = out;
  for (int64_t i = 0; i < count; ++i) to[i] = static_cast<scalar_t>(affine_relu(static_cast<acc_t>(in[i]), scale, shift));
}

void check_group_norm_relu(const at::Tensor& x, int64_t num_groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps) {
  checks::check_tensor(kOp, "x", x, 4, "(N, C, H, W)");
  TORCH_CHECK(num_groups > 0, "sfpn::group_norm_relu: num_groups must be positive, got ", num_groups);
  TORCH_CHECK(x.size(1) > 0 && x.size(1) % num_groups == 0, "sfpn::group_norm_relu: x's channels (", x.size(1),
              ") must be a positive multiple of num_groups (", num_groups, ")");
  TORCH_CHECK(x.size(0) == 0 || x.size(2) * x.size(3) > 0,
              "sfpn::group_norm_relu: x must have at least one pixel (H, W >= 1), got shape ", x.sizes());
  const auto check_affine = [&](const char* name, const at::Tensor& param) {
    checks::check_tensor(kOp, name, param, 1, "(C,)");
    TORCH_CHECK(param.size(0) == x.size(1), "sfpn::group_norm_relu: ", name, " must have shape (", x.size(1),
                ",) to match x's channels, got ", param.sizes());
    checks::check_same_device(kOp, name, param, "x", x);
  };
  check_affine("weight", weight);
  check_affine("bias", bias);
  TORCH_CHECK(eps >= 0, "sfpn::group_norm_relu: eps must be non-negative, got ", eps);
}

// Every channel's sum and sum of squares, (N, C) each, in double.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> channel_statistics(const at::Tensor& x, bool channels_last) {
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  const scalar_t* data = x.const_data_ptr<scalar_t>();
  const auto options = x.options().dtype(at::kDouble);
  at::Tensor sum = at::empty({batch, channels}, options), squares = at::empty({batch, channels}, options);
  double* sum_data = sum.mutable_data_ptr<double>();
  double* squares_data = squares.mutable_data_ptr<double>();
  if (!channels_last) {
    at::parallel_for(0, batch * channels, std::max<int64_t>(1, kMinTaskValues / pixels), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        plane_sums(data + plane * pixels, pixels, sum_data + plane, squares_data + plane);
      }
    });
    return {sum, squares};
  }
  const int64_t runs = (pixels + kRunPixels - 1) / kRunPixels;
  at::Tensor partial = at::zeros({batch * runs, 2, channels}, options);  // (sum, squares) per run
  double* partial_data = partial.mutable_data_ptr<double>();
  const int64_t grain = std::max<int64_t>(1, kMinTaskValues / (kRunPixels * channels));
  at::parallel_for(0, batch * runs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / runs, first = (task % runs) * kRunPixels;
      double* run_sums = partial_data + task * 2 * channels;
      add_channel_sums(data + (n * pixels + first) * channels, std::min(kRunPixels, pixels - first), channels,
                       run_sums, run_sums + channels);
    }
  });
  for (int64_t n = 0; n < batch; ++n) {
    double* s = sum_data + n * channels;
    double* q = squares_data + n * channels;
    std::fill(s, s + channels, 0.0);
    std::fill(q, q + channels, 0.0);
    for (int64_t run = 0; run < runs; ++run) {
      const double* run_sums = partial_data + (n * runs + run) * 2 * channels;
      for (int64_t c = 0; c < channels; ++c) {
        s[c] += run_sums[c];
        q[c] += run_sums[channels + c];
      }
    }
  }
  return {sum, squares};
}

template <typename scalar_t>
void group_norm_relu_kernel(const at::Tensor& x, int64_t num_groups, const at::Tensor& weight, const at::Tensor& bias,
                            double eps, bool channels_last, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  const int64_t group_channels = channels / num_groups;
  at::Tensor sum, squares;
  std::tie(sum, squares) = channel_statistics<scalar_t>(x, channels_last);
  const double* sum_data = sum.const_data_ptr<double>();
  const double* squares_data = squares.const_data_ptr<double>();
  const at::Tensor weight_acc = weight.to(mean.scalar_type()).contiguous();
  const at::Tensor bias_acc = bias.to(mean.scalar_type()).contiguous();
  const acc_t* w = weight_acc.const_data_ptr<acc_t>();
  const acc_t* b = bias_acc.const_data_ptr<acc_t>();
  // Per (n, c): out = x * scale + shift, scale = rstd * weight, shift = bias - mean * scale.
  at::Tensor affine = at::empty({2, batch, channels}, mean.options());
  acc_t* scale = affine.mutable_data_ptr<acc_t>();
  acc_t* shift = scale + batch * channels;
  acc_t* mean_data = mean.mutable_data_ptr<acc_t>();
  acc_t* rstd_data = rstd.mutable_data_ptr<acc_t>();
  const double count = static_cast<double>(group_channels * pixels);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t g = 0; g < num_groups; ++g) {
      double s = 0, q = 0;
      for (int64_t c = g * group_channels; c < (g + 1) * group_channels; ++c) {
        s += sum_data[n * channels + c];
        q += squares_data[n * channels + c];
      }
      const double mu = s / count;
      const double inverse_std = 1.0 / std::sqrt(std::max(q / count - mu * mu, 0.0) + eps);
      mean_data[n * num_groups + g] = static_cast<acc_t>(mu);
      rstd_data[n * num_groups + g] = static_cast<acc_t>(inverse_std);
      for (int64_t c = g * group_channels; c < (g + 1) * group_channels; ++c) {
        const double a = inverse_std * static_cast<double>(w[c]);
        scale[n * channels + c] = static_cast<acc_t>(a);
        shift[n * channels + c] = static_cast<acc_t>(static_cast<double>(b[c]) - mu * a);
      }
    }
  }
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* to = out.mutable_data_ptr<scalar_t>();
  if (channels_last) {
    const int64_t grain = std::max<int64_t>(1, kMinTaskValues / channels);
    at::parallel_for(0, batch * pixels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end;) {  // a task's pixels, an image at a time
        const int64_t n = p / pixels, stop = std::min(end, (n + 1) * pixels);
        normalise_pixels(in + p * channels, to + p * channels, stop - p, channels, scale + n * channels,
                         shift + n * channels);
        p = stop;
      }
    });
  } else {
    at::parallel_for(0, batch * channels, std::max<int64_t>(1, kMinTaskValues / pixels), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        normalise_plane(in + plane * pixels, to + plane * pixels, pixels, scale[plane], shift[plane]);
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_relu(const at::Tensor& x, int64_t num_groups,
                                                               const at::Tensor& weight, const at::Tensor& bias,
                                                               double eps) {
  check_group_norm_relu(x, num_groups, weight, bias, eps);
  const bool channels_last = checks::is_channels_last(x);
  const at::Tensor input = channels_last ? x : x.contiguous();
  const at::ScalarType stats_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (!channels_last && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) {
    // ATen's planar GroupNorm in float32 is a vectorised float kernel that this one's double sums
    // did not beat (0.6-0.8x at the default run's shapes); its ReLU pass costs little in float32.
    auto [out, mean, rstd] = at::native_group_norm(input, weight.to(stats_type), bias.to(stats_type), x.size(0),
                                                   x.size(1), x.size(2) * x.size(3), num_groups, eps);
    return {out.relu_(), mean, rstd};
  }
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous));
  at::Tensor mean = at::empty({x.size(0), num_groups}, x.options().dtype(stats_type));
  at::Tensor rstd = at::empty_like(mean);
  if (x.numel() == 0) return {out, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sfpn::group_norm_relu", [&] {
    group_norm_relu_kernel<scalar_t>(input, num_groups, weight, bias, eps, channels_last, out, mean, rstd);
  });
  return {out, mean, rstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("group_norm_relu", &group_norm_relu);
}

}  // namespace sfpn::group_norm_relu::cpu
