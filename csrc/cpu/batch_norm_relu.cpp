// sfpn::batch_norm_relu and its backward on the CPU: relu(batch_norm(x) + residual) with the
// batch's statistics (a BatchNorm training), for x (N, C, H, W) channels_last or NCHW as it is
// laid out. The forward makes two passes over x: the statistics, then one that normalises,
// applies the affine parameters, adds the residual and applies the ReLU as it writes the output;
// ATen's BatchNorm, an in-place sum and an in-place ReLU (the reference) make four, and in bf16
// the sum and the ReLU run at about half their float32 speed on the CPUs measured. The backward
// makes one pass over (grad, out, x) for two sums per channel and one that writes the input's
// gradient (and the residual's, the gradient the ReLU passed); the reference's threshold_backward
// is a pass of its own. The schema, the Python checks and the reference are in
// sfpn/ops/batch_norm_relu.py; the building blocks are GroupNorm's (cpu/norm_relu_kernels.h).
//
// Statistics: per channel over the batch and the pixels, mean E[x] and biased variance
// E[x^2] - E[x]^2 from sums in double (cancellation ~1e-16 * mean^2 / variance), in an order that
// does not depend on the thread count. An NHWC map is walked as one image of N * H * W pixels,
// its coefficients being the same for every image; an NCHW map a plane at a time, its per-image
// sums added in image order. The outputs mean and rstd (C,) are float32 (float64 for float64 x),
// as ATen's save_mean and save_invstd, and feed the backward; with the unbiased variance (C,),
// the mean also feeds the running statistics, which the Python module updates.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/norm_relu_kernels.h"

namespace sfpn::batch_norm_relu::cpu {
namespace {

using namespace sfpn::norm_relu::cpu;

// How the passes walk x: `images` rows of per-channel sums and coefficients, `pixels` pixels each.
struct Walk {
  int64_t images, channels, pixels;
  bool channels_last;

  explicit Walk(const at::Tensor& x)
      : images(x.size(0)),
        channels(x.size(1)),
        pixels(x.size(2) * x.size(3)),
        channels_last(checks::is_channels_last(x)) {
    if (channels_last) {  // one image of N * H * W pixels: the same coefficients for all
      pixels *= images;
      images = 1;
    }
  }
};

// Per channel, the sum over the walk's rows of a (images, C) double tensor, added in row order.
std::vector<double> over_images(const at::Tensor& per_image, const Walk& walk) {
  std::vector<double> total(walk.channels, 0.0);
  const double* data = per_image.const_data_ptr<double>();
  for (int64_t n = 0; n < walk.images; ++n) {
    for (int64_t c = 0; c < walk.channels; ++c) total[c] += data[n * walk.channels + c];
  }
  return total;
}

// The per-channel coefficients `rows` (C values each) copied into every image's row of a
// (rows, images, C) tensor of acc_t: the layout normalise_relu and input_gradient read.
template <typename acc_t>
at::Tensor per_image(const std::vector<std::vector<double>>& rows, const Walk& walk, const at::TensorOptions& options) {
  at::Tensor table = at::empty({static_cast<int64_t>(rows.size()), walk.images, walk.channels},
                               options.dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* data = table.mutable_data_ptr<acc_t>();
  for (const auto& row : rows) {
    for (int64_t n = 0; n < walk.images; ++n) {
      for (int64_t c = 0; c < walk.channels; ++c) *data++ = static_cast<acc_t>(row[c]);
    }
  }
  return table;
}

template <typename scalar_t>
void batch_norm_relu_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor* residual, double eps, const Walk& walk, at::Tensor& out, at::Tensor& mean,
                            at::Tensor& rstd, at::Tensor& variance) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  auto [sum, squares] = moments(in, walk.images, walk.channels, walk.pixels, walk.channels_last, x.options());
  const std::vector<double> s = over_images(sum, walk), q = over_images(squares, walk);
  const at::Tensor weight_d = weight.to(at::kDouble).contiguous(), bias_d = bias.to(at::kDouble).contiguous();
  const double* w = weight_d.const_data_ptr<double>();
  const double* b = bias_d.const_data_ptr<double>();
  acc_t* mean_data = mean.mutable_data_ptr<acc_t>();
  acc_t* rstd_data = rstd.mutable_data_ptr<acc_t>();
  acc_t* variance_data = variance.mutable_data_ptr<acc_t>();
  // out = relu(x * scale + shift + residual), scale = rstd * weight, shift = bias - mean * scale.
  std::vector<double> scale(walk.channels), shift(walk.channels);
  const double count = static_cast<double>(walk.images * walk.pixels);
  for (int64_t c = 0; c < walk.channels; ++c) {
    const double mu = s[c] / count, biased = std::max(q[c] / count - mu * mu, 0.0);
    const double inverse_std = 1.0 / std::sqrt(biased + eps);
    mean_data[c] = static_cast<acc_t>(mu);
    rstd_data[c] = static_cast<acc_t>(inverse_std);
    variance_data[c] = static_cast<acc_t>(count > 1 ? biased * count / (count - 1) : biased);
    scale[c] = inverse_std * w[c];
    shift[c] = b[c] - mu * scale[c];
  }
  const at::Tensor affine = per_image<acc_t>({scale, shift}, walk, x.options());
  const acc_t* table = affine.const_data_ptr<acc_t>();
  const int64_t row = walk.images * walk.channels;
  normalise_relu<scalar_t, acc_t>(in, residual ? residual->const_data_ptr<scalar_t>() : nullptr,
                                  out.mutable_data_ptr<scalar_t>(), walk.images, walk.channels, walk.pixels,
                                  walk.channels_last, table, table + row);
}

void check_batch_norm_relu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const std::optional<at::Tensor>& residual, double eps) {
  constexpr const char* op = "batch_norm_relu";
  checks::check_tensor(op, "x", x, 4, "(N, C, H, W)");
  TORCH_CHECK(x.numel() > 0, "sfpn::batch_norm_relu: x must hold at least one value per channel, got shape ",
              x.sizes());
  check_per_channel(op, "weight", weight, x);
  check_per_channel(op, "bias", bias, x);
  if (residual) {
    checks::check_like(op, "residual", *residual, "x", x);
    TORCH_CHECK(residual->sizes() == x.sizes(), "sfpn::batch_norm_relu: residual must have x's shape ", x.sizes(),
                ", got ", residual->sizes());
  }
  TORCH_CHECK(eps >= 0, "sfpn::batch_norm_relu: eps must be non-negative, got ", eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu(const at::Tensor& x,
                                                                           const at::Tensor& weight,
                                                                           const at::Tensor& bias,
                                                                           const std::optional<at::Tensor>& residual,
                                                                           double eps) {
  check_batch_norm_relu(x, weight, bias, residual, eps);
  const Walk walk(x);
  const at::MemoryFormat layout = walk.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor input = x.contiguous(layout);
  const std::optional<at::Tensor> added = residual ? std::optional(residual->contiguous(layout)) : std::nullopt;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(layout));
  at::Tensor mean = at::empty({x.size(1)}, x.options().dtype(statistics_type(x)));
  at::Tensor rstd = at::empty_like(mean), variance = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sfpn::batch_norm_relu", [&] {
    batch_norm_relu_kernel<scalar_t>(input, weight, bias, added ? &*added : nullptr, eps, walk, out, mean, rstd,
                                     variance);
  });
  return {out, mean, rstd, variance};
}

// The backward of relu(batch_norm(x) + residual). With g' the incoming gradient where out > 0
// (else 0), xhat = (x - mean) rstd and, per channel over the batch and the pixels (count values),
// S1 = sum(g') and S2 = sum(g' xhat):
//   dx = rstd w (g' - S1 / count - xhat S2 / count) = a g' + b x + d,
//   a = rstd w, b = -rstd^2 w S2 / count, d = rstd w (rstd mean S2 - S1) / count;
//   d weight = S2, d bias = S1, d residual = g'.
// S2 = rstd (sum(g' x) - mean S1): one pass over (grad, out, x) for the sums, one for dx.
template <typename scalar_t>
void batch_norm_relu_backward_kernel(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x,
                                     const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight,
                                     const Walk& walk, at::Tensor& grad_x, at::Tensor* grad_residual,
                                     at::Tensor& grad_weight, at::Tensor& grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* y = out.const_data_ptr<scalar_t>();
  const scalar_t* v = x.const_data_ptr<scalar_t>();
  auto [sum, products] =
      gradient_moments(g, y, v, walk.images, walk.channels, walk.pixels, walk.channels_last, x.options());
  const std::vector<double> passed = over_images(sum, walk), passed_x = over_images(products, walk);
  const at::Tensor mean_d = mean.to(at::kDouble).contiguous(), rstd_d = rstd.to(at::kDouble).contiguous();
  const at::Tensor weight_d = weight.to(at::kDouble).contiguous();
  const double* mu = mean_d.const_data_ptr<double>();
  const double* inv = rstd_d.const_data_ptr<double>();
  const double* w = weight_d.const_data_ptr<double>();
  std::vector<double> a(walk.channels), b(walk.channels), d(walk.channels);
  at::Tensor parameter_grads = at::empty({2, walk.channels}, x.options().dtype(at::kDouble));  // (weight, bias)
  double* dw = parameter_grads.mutable_data_ptr<double>();
  double* db = dw + walk.channels;
  const double count = static_cast<double>(walk.images * walk.pixels);
  for (int64_t c = 0; c < walk.channels; ++c) {
    const double r = inv[c], passed_xhat = r * (passed_x[c] - mu[c] * passed[c]);
    a[c] = r * w[c];
    b[c] = -r * r * w[c] * passed_xhat / count;
    d[c] = r * w[c] * (r * mu[c] * passed_xhat - passed[c]) / count;
    dw[c] = passed_xhat;
    db[c] = passed[c];
  }
  grad_weight.copy_(parameter_grads[0]);
  grad_bias.copy_(parameter_grads[1]);
  const at::Tensor coefficients = per_image<acc_t>({a, b, d}, walk, x.options());
  const acc_t* table = coefficients.const_data_ptr<acc_t>();
  const int64_t row = walk.images * walk.channels;
  input_gradient<scalar_t, acc_t>(g, y, v, grad_x.mutable_data_ptr<scalar_t>(),
                                  grad_residual ? grad_residual->mutable_data_ptr<scalar_t>() : nullptr, walk.images,
                                  walk.channels, walk.pixels, walk.channels_last, table, table + row, table + 2 * row);
}

void check_batch_norm_relu_backward(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x,
                                    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight) {
  constexpr const char* op = "batch_norm_relu_backward";
  checks::check_tensor(op, "x", x, 4, "(N, C, H, W)");
  TORCH_CHECK(x.numel() > 0, "sfpn::batch_norm_relu_backward: x must hold at least one value per channel, got shape ",
              x.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad", &grad}, {"out", &out}}) {
    checks::check_like(op, name, *t, "x", x);
    TORCH_CHECK(t->sizes() == x.sizes(), "sfpn::batch_norm_relu_backward: ", name, " must have x's shape ", x.sizes(),
                ", got ", t->sizes());
  }
  const at::ScalarType stats_type = statistics_type(x);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"mean", &mean}, {"rstd", &rstd}}) {
    check_per_channel(op, name, *t, x);
    TORCH_CHECK(t->scalar_type() == stats_type, "sfpn::batch_norm_relu_backward: ", name, " must be ", stats_type,
                " for ", x.scalar_type(), " x, got ", t->scalar_type());
  }
  check_per_channel(op, "weight", weight, x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward(
    const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, bool residual) {
  check_batch_norm_relu_backward(grad, out, x, mean, rstd, weight);
  const Walk walk(x);
  const at::MemoryFormat layout = walk.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(layout));
  at::Tensor grad_residual = residual ? at::empty(x.sizes(), x.options().memory_format(layout)) : x.new_empty({0});
  at::Tensor grad_weight = at::empty({x.size(1)}, weight.options());
  at::Tensor grad_bias = at::empty({x.size(1)}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sfpn::batch_norm_relu_backward", [&] {
    batch_norm_relu_backward_kernel<scalar_t>(grad.contiguous(layout), out.contiguous(layout), x.contiguous(layout),
                                              mean, rstd, weight, walk, grad_x, residual ? &grad_residual : nullptr,
                                              grad_weight, grad_bias);
  });
  return {grad_x, grad_residual, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("batch_norm_relu", &batch_norm_relu);
  m.impl("batch_norm_relu_backward", &batch_norm_relu_backward);
}

}  // namespace sfpn::batch_norm_relu::cpu
