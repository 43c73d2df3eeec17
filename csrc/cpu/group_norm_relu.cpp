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
// sums of g' and g' x (g' the gradient the ReLU passed), all in double, in an order that does not
// depend on the thread count (cpu/norm_relu_kernels.h, shared with batch_norm_relu). A group's
// mean is E[x] and its variance E[x^2] - E[x]^2, both over its channels and pixels, in double: the
// cancellation costs ~1e-16 * mean^2 / variance, exact in float32 unless |mean| > ~1e4 std. The
// outputs mean and rstd (N, G) are float32 (float64 for float64 x), as ATen's, and feed the
// backward.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
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
#include "cpu/norm_relu_kernels.h"

namespace sfpn::group_norm_relu::cpu {
namespace {

using namespace sfpn::norm_relu::cpu;

constexpr const char* kOp = "group_norm_relu";

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

template <typename scalar_t>
void group_norm_relu_kernel(const at::Tensor& x, int64_t num_groups, const at::Tensor& weight, const at::Tensor& bias,
                            double eps, bool channels_last, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  const int64_t group_channels = channels / num_groups;
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  at::Tensor sum, squares;
  std::tie(sum, squares) = moments(in, batch, channels, pixels, channels_last, x.options());
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
  normalise_relu<scalar_t, acc_t>(in, nullptr, out.mutable_data_ptr<scalar_t>(), batch, channels, pixels,
                                  channels_last, scale, shift);
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
  std::tie(sum, products) = gradient_moments(g, y, v, batch, channels, pixels, channels_last, x.options());
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
  input_gradient<scalar_t, acc_t>(g, y, v, grad_x.mutable_data_ptr<scalar_t>(), nullptr, batch, channels, pixels,
                                  channels_last, a, b, d);
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
