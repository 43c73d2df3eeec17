// sfpn::group_norm_relu and its backward on the CPU, for x (N, C, H, W) channels_last or NCHW as it
// is laid out. The forward makes two passes over x: the statistics, then one that normalises,
// applies the affine parameters and the ReLU as it writes the output; the reference (ATen's
// GroupNorm, then a ReLU) makes a third, which in bf16 cost about as much as the GroupNorm itself.
// The backward makes one pass over (grad, out, x) for two sums per channel and one that writes
// the input's gradient; in bf16 channels_last ATen's GroupNorm backward (the reference's, after
// threshold_backward) was 8-10x slower (benchmarks/RESULTS.md, 2026-12-04 (late night)). NCHW
// float32 and float64 keep ATen's GroupNorm forward (see group_norm_relu below). The schema, the
// Python checks and the reference are in sfpn/ops/group_norm_relu.py; Triton kernels serve CUDA.
//
// Sums. The forward's statistics take every channel's sum and sum of squares, the backward the
// sums of g' and g' x (g' the gradient the ReLU passed), all in double: NCHW a plane at a time,
// NHWC a fixed run of pixels at a time (a vector of channels per pixel) into per-run partial sums
// that are then added in run order, so that the bits never depend on the thread count. A group's
// mean is E[x] and its variance E[x^2] - E[x]^2, both over its channels and pixels, in double: the
// cancellation costs ~1e-16 * mean^2 / variance, exact in float32 unless |mean| > ~1e4 std. The
// outputs mean and rstd (N, G) are float32 (float64 for float64 x), as ATen's, and feed the
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
#include <bit>
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

// Items per parallel task, for items of `values` values each (planes, pixels, runs).
inline int64_t grain_of(int64_t values) {
  return std::max<int64_t>(1, kMinTaskValues / values);
}

// Whether the ReLU passed the gradient at an output value: out > 0 (a NaN passes none, as ATen's
// threshold_backward, the reference's, passes none).
template <typename scalar_t>
inline bool relu_passes(scalar_t out) {
  return static_cast<at::opmath_type<scalar_t>>(out) > 0;
}

// The two per-channel sums of the statistics, added over `rows` rows of `width` contiguous values
// (NHWC: pixels of C channels; NCHW: a plane read as rows of kPlaneWidth) into sum[i], squares[i]:
// the forward's x and x^2.
template <typename scalar_t>
SFPN_VECTOR_CLONES void add_moments(const scalar_t* x, int64_t rows, int64_t width, double* sum, double* squares) {
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

// The backward's: g' and g' x, where g' is the incoming gradient passed by the ReLU (out > 0).
template <typename scalar_t>
SFPN_VECTOR_CLONES void add_gradient_moments(const scalar_t* grad, const scalar_t* out, const scalar_t* x, int64_t rows,
                                             int64_t width, double* sum, double* products) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* __restrict__ g = grad + r * width;
    const scalar_t* __restrict__ y = out + r * width;
    const scalar_t* __restrict__ v = x + r * width;
    double* __restrict__ s = sum;
    double* __restrict__ q = products;
    for (int64_t i = 0; i < width; ++i) {
      // A select by bit mask: GCC turns `y > 0 ? g : 0` added into s[i] into a conditional add,
      // which it does not vectorise; g * (y > 0) would make NaN of a NaN gradient the ReLU drops.
      const uint64_t keep = -static_cast<uint64_t>(relu_passes(y[i]));
      const double passed = std::bit_cast<double>(std::bit_cast<uint64_t>(static_cast<double>(g[i])) & keep);
      s[i] += passed;
      q[i] += passed * static_cast<double>(v[i]);
    }
  }
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
    for (int64_t c = 0; c < channels; ++c) {
      to[c] = static_cast<scalar_t>(affine_relu(static_cast<acc_t>(in[c]), scale[c], shift[c]));
    }
  }
}

// NCHW: one plane of `count` values, one scale and shift.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void normalise_plane(const scalar_t* x, scalar_t* out, int64_t count, acc_t scale, acc_t shift) {
  const scalar_t* __restrict__ in = x;
  scalar_t* __restrict__ to = out;
  for (int64_t i = 0; i < count; ++i) {
    to[i] = static_cast<scalar_t>(affine_relu(static_cast<acc_t>(in[i]), scale, shift));
  }
}

// The input's gradient, dx = a g' + b x + d (see group_norm_relu_backward_kernel). NHWC: `pixels`
// pixels of `channels` values, a, b and d per channel.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void input_gradient_pixels(const scalar_t* grad, const scalar_t* out, const scalar_t* x,
                                              scalar_t* grad_x, int64_t pixels, int64_t channels, const acc_t* a,
                                              const acc_t* b, const acc_t* d) {
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
    }
  }
}

// NCHW: one plane of `count` values, one a, b and d.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void input_gradient_plane(const scalar_t* grad, const scalar_t* out, const scalar_t* x,
                                             scalar_t* grad_x, int64_t count, acc_t a, acc_t b, acc_t d) {
  const scalar_t* __restrict__ g = grad;
  const scalar_t* __restrict__ y = out;
  const scalar_t* __restrict__ v = x;
  scalar_t* __restrict__ to = grad_x;
  for (int64_t i = 0; i < count; ++i) {
    const acc_t incoming = static_cast<acc_t>(g[i]);
    const acc_t passed = relu_passes(y[i]) ? incoming : acc_t(0);
    to[i] = static_cast<scalar_t>(a * passed + b * static_cast<acc_t>(v[i]) + d);
  }
}

// The dtype of the statistics mean and rstd (N, G): float32, float64 for float64 x, as ATen's.
inline at::ScalarType statistics_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A per-channel parameter of `op` (weight, bias): (C,) for x's C channels, on x's device.
void check_per_channel(const char* op, const char* name, const at::Tensor& param, const at::Tensor& x) {
  checks::check_tensor(op, name, param, 1, "(C,)");
  TORCH_CHECK(param.size(0) == x.size(1), "sfpn::", op, ": ", name, " must have shape (", x.size(1),
              ",) to match x's channels, got ", param.sizes());
  checks::check_same_device(op, name, param, "x", x);
}

void check_group_norm_relu(const at::Tensor& x, int64_t num_groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps) {
  checks::check_tensor(kOp, "x", x, 4, "(N, C, H, W)");
  TORCH_CHECK(num_groups > 0, "sfpn::group_norm_relu: num_groups must be positive, got ", num_groups);
  TORCH_CHECK(x.size(1) > 0 && x.size(1) % num_groups == 0, "sfpn::group_norm_relu: x's channels (", x.size(1),
              ") must be a positive multiple of num_groups (", num_groups, ")");
  TORCH_CHECK(x.size(0) == 0 || x.size(2) * x.size(3) > 0,
              "sfpn::group_norm_relu: x must have at least one pixel (H, W >= 1), got shape ", x.sizes());
  check_per_channel(kOp, "weight", weight, x);
  check_per_channel(kOp, "bias", bias, x);
  TORCH_CHECK(eps >= 0, "sfpn::group_norm_relu: eps must be non-negative, got ", eps);
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

template <typename scalar_t>
void group_norm_relu_kernel(const at::Tensor& x, int64_t num_groups, const at::Tensor& weight, const at::Tensor& bias,
                            double eps, bool channels_last, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  const int64_t group_channels = channels / num_groups;
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  at::Tensor sum, squares;
  std::tie(sum, squares) = per_channel_sums(
      batch, channels, pixels, channels_last, x.options(),
      [in](int64_t first, int64_t rows, int64_t width, double* s, double* q) {
        add_moments(in + first, rows, width, s, q);
      });
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
  scalar_t* to = out.mutable_data_ptr<scalar_t>();
  for_each_span(batch, channels, pixels, channels_last, [&](int64_t first, int64_t count, int64_t k) {
    if (channels_last) {
      normalise_pixels(in + first, to + first, count, channels, scale + k, shift + k);
    } else {
      normalise_plane(in + first, to + first, count, scale[k], shift[k]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_relu(const at::Tensor& x, int64_t num_groups,
                                                               const at::Tensor& weight, const at::Tensor& bias,
                                                               double eps) {
  check_group_norm_relu(x, num_groups, weight, bias, eps);
  const bool channels_last = checks::is_channels_last(x);
  const at::Tensor input = channels_last ? x : x.contiguous();
  const at::ScalarType stats_type = statistics_type(x);
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

// The backward of relu(group_norm(x)). With g' the incoming gradient where out > 0 (else 0),
// xhat = (x - mean) rstd and, per (n, group), M1 = mean(w g') and M2 = mean(w g' xhat) over the
// group's channels and pixels:
//   dx = rstd (w g' - M1 - xhat M2) = a g' + b x + d,
//   a = rstd w, b = -rstd^2 M2, d = rstd^2 M2 mean - rstd M1;
//   d weight = sum over n and pixels of g' xhat, d bias = sum of g'.
// All of which need, per (n, c), sum(g') and sum(g' x): one pass over (grad, out, x) for those,
// one for dx.
template <typename scalar_t>
void group_norm_relu_backward_kernel(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x,
                                     const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight,
                                     bool channels_last, at::Tensor& grad_x, at::Tensor& grad_weight,
                                     at::Tensor& grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  const int64_t groups = mean.size(1), group_channels = channels / groups;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* y = out.const_data_ptr<scalar_t>();
  const scalar_t* v = x.const_data_ptr<scalar_t>();
  at::Tensor sum, products;
  std::tie(sum, products) = per_channel_sums(
      batch, channels, pixels, channels_last, x.options(),
      [g, y, v](int64_t first, int64_t rows, int64_t width, double* s, double* q) {
        add_gradient_moments(g + first, y + first, v + first, rows, width, s, q);
      });
  const double* sum_data = sum.const_data_ptr<double>();
  const double* products_data = products.const_data_ptr<double>();
  const at::Tensor mean_d = mean.to(at::kDouble).contiguous(), rstd_d = rstd.to(at::kDouble).contiguous();
  const at::Tensor weight_d = weight.to(at::kDouble).contiguous();
  const double* mu = mean_d.const_data_ptr<double>();
  const double* inv = rstd_d.const_data_ptr<double>();
  const double* w = weight_d.const_data_ptr<double>();
  at::Tensor coefficients = at::empty({3, batch, channels}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* a = coefficients.mutable_data_ptr<acc_t>();
  acc_t* b = a + batch * channels;
  acc_t* d = b + batch * channels;
  at::Tensor parameter_grads = at::zeros({2, channels}, x.options().dtype(at::kDouble));  // (weight, bias)
  double* dw = parameter_grads.mutable_data_ptr<double>();
  double* db = dw + channels;
  const double count = static_cast<double>(group_channels * pixels);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t group = 0; group < groups; ++group) {
      const double m = mu[n * groups + group], r = inv[n * groups + group];
      const int64_t begin = group * group_channels, end = begin + group_channels;
      double m1 = 0, m2 = 0;
      for (int64_t c = begin; c < end; ++c) {
        const double passed = sum_data[n * channels + c];
        const double passed_xhat = r * (products_data[n * channels + c] - m * passed);  // sum of g' xhat
        m1 += w[c] * passed;
        m2 += w[c] * passed_xhat;
        dw[c] += passed_xhat;
        db[c] += passed;
      }
      m1 /= count;
      m2 /= count;
      for (int64_t c = begin; c < end; ++c) {
        a[n * channels + c] = static_cast<acc_t>(r * w[c]);
        b[n * channels + c] = static_cast<acc_t>(-r * r * m2);
        d[n * channels + c] = static_cast<acc_t>(r * r * m2 * m - r * m1);
      }
    }
  }
  grad_weight.copy_(parameter_grads[0]);
  grad_bias.copy_(parameter_grads[1]);
  scalar_t* to = grad_x.mutable_data_ptr<scalar_t>();
  for_each_span(batch, channels, pixels, channels_last, [&](int64_t first, int64_t count, int64_t k) {
    if (channels_last) {
      input_gradient_pixels(g + first, y + first, v + first, to + first, count, channels, a + k, b + k, d + k);
    } else {
      input_gradient_plane(g + first, y + first, v + first, to + first, count, a[k], b[k], d[k]);
    }
  });
}

void check_group_norm_relu_backward(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x,
                                    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight,
                                    const at::Tensor& bias) {
  constexpr const char* op = "group_norm_relu_backward";
  checks::check_tensor(op, "x", x, 4, "(N, C, H, W)");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad", &grad}, {"out", &out}}) {
    checks::check_like(op, name, *t, "x", x);
    TORCH_CHECK(t->sizes() == x.sizes(), "sfpn::group_norm_relu_backward: ", name, " must have x's shape ", x.sizes(),
                ", got ", t->sizes());
  }
  const at::ScalarType stats_type = statistics_type(x);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"mean", &mean}, {"rstd", &rstd}}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) > 0 && x.size(1) % t->size(1) == 0,
                "sfpn::group_norm_relu_backward: ", name, " must be (N, G) with G dividing x's channels ", x.size(1),
                ", got shape ", t->sizes());
    TORCH_CHECK(t->scalar_type() == stats_type, "sfpn::group_norm_relu_backward: ", name, " must be ", stats_type,
                " for ", x.scalar_type(), " x, got ", t->scalar_type());
    checks::check_same_device(op, name, *t, "x", x);
  }
  TORCH_CHECK(rstd.sizes() == mean.sizes(), "sfpn::group_norm_relu_backward: rstd must have mean's shape ",
              mean.sizes(), ", got ", rstd.sizes());
  check_per_channel(op, "weight", weight, x);
  check_per_channel(op, "bias", bias, x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_relu_backward(
    const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, const at::Tensor& bias) {
  check_group_norm_relu_backward(grad, out, x, mean, rstd, weight, bias);
  const bool channels_last = checks::is_channels_last(x);
  const at::MemoryFormat layout = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(layout));
  at::Tensor grad_weight = at::zeros({x.size(1)}, weight.options());
  at::Tensor grad_bias = at::zeros({x.size(1)}, bias.options());
  if (x.numel() == 0) return {grad_x, grad_weight, grad_bias};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sfpn::group_norm_relu_backward", [&] {
    group_norm_relu_backward_kernel<scalar_t>(grad.contiguous(layout), out.contiguous(layout), x.contiguous(layout),
                                              mean, rstd, weight, channels_last, grad_x, grad_weight, grad_bias);
  });
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("group_norm_relu", &group_norm_relu);
  m.impl("group_norm_relu_backward", &group_norm_relu_backward);
}

}  // namespace sfpn::group_norm_relu::cpu
