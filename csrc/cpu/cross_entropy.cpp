// sfpn::upsample_cross_entropy on the CPU: the softmax cross-entropy of logits (N, K, h, w),
// bilinearly resized to the labels' size (H, W) (any size; the identity when the sizes agree), and
// its gradient, in one pass over the labelled pixels: no (N, K, H, W) tensor. The schema, the
// Python checks and the reference both backends are tested against are in
// sfpn/ops/cross_entropy.py; the Triton kernel (kernels/cross_entropy.py) serves CUDA.
// sfpn::semantic_cross_entropy (labels on the logits' grid) keeps its reference on the CPU: with
// nothing to resize, ATen's vectorised log-softmax over NCHW beats this kernel's NHWC round trip.
//
// Plan. The logits are read as (N, h, w, K) in the accumulation type (a copy of the small map on
// the head's grid), so each of a pixel's four bilinear taps is one contiguous K-vector. The threads
// split the N * H label rows into contiguous runs, one per thread. At each labelled pixel a run
// blends its taps' logits, takes the log-sum-exp, adds the pixel's loss, and adds the pixel's
// gradient (softmax - smoothed one-hot, times the class weight) to its four taps in a buffer of its
// own over the source rows it reads. The buffers and partial sums are then added in run order, so
// the result depends on the thread count, never on timing.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/vector_clones.h"
#include "resize_index.h"

namespace sfpn::cross_entropy::cpu {
namespace {

// Class-pixel evaluations (a few ns each) per run at least: small maps run on one thread.
constexpr int64_t kMinRunWork = int64_t(1) << 18;
// The one op this file serves, as its error messages name it.
constexpr const char* kOp = "upsample_cross_entropy";

// exp(x) for x <= 0 (a logit minus the pixel's largest), in a form the compiler vectorises, as
// the libm call is not: exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in
// [-ln 2 / 2, ln 2 / 2], exp(r) by its Taylor series to r^7 (relative error < 1e-8, below float's
// rounding), 2^n written into the exponent bits. Below -87 (exp < 2^-125) it returns ~1e-38
// instead of 0 or a subnormal. double keeps std::exp.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;                      // NaN passes and stays NaN
  constexpr float kRound = 12582912.0f;             // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504f + kRound) - kRound;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln 2 in two parts: r is exact
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double exp_nonpositive(double x) {
  return std::exp(x);
}

// One run's share: its loss and weight sums and its gradient over source rows
// [first_row, first_row + rows) of the flattened (N * h) source rows, (rows, w, K).
template <typename acc_t>
struct RunResult {
  int64_t first_row = 0;
  std::vector<acc_t> grad;
  double loss = 0, weight = 0;
  std::optional<int64_t> bad_label;  // the first label neither a class nor ignore_index: the run stopped there
};

// What one call computes, in the accumulation type acc_t (float, or double for double logits).
template <typename acc_t>
struct Problem {
  const acc_t* logits;  // (N, h, w, K), contiguous
  const acc_t* weight;  // (K,) or nullptr
  int64_t batch, classes, in_h, in_w, height, width;
  int64_t ignore_index;
  acc_t smoothing;
  bool compute_grad;
};

// Label rows [row_begin, row_end) of the (N * H) rows: their loss and weight into `out`, and,
// with compute_grad, their gradient scattered into out.grad (the source rows from out.first_row
// on). `blended` and `probs` are K-long scratch rows. Stops at a label that is neither a class
// nor ignore_index, recorded in out.bad_label (a clone cannot throw: vector_clones.h).
template <typename acc_t, typename label_t>
SFPN_VECTOR_CLONES void loss_and_grad_rows(const Problem<acc_t>& p, const label_t* labels,
                                           const resize::Axis<acc_t>& row_axis, const resize::Taps<acc_t>* cols,
                                           int64_t row_begin, int64_t row_end, RunResult<acc_t>& out,
                                           acc_t* blended, acc_t* probs) {
  const int64_t K = p.classes;
  const acc_t hit = acc_t(1) - p.smoothing, spread = p.smoothing / static_cast<acc_t>(K);
  double run_loss = 0, run_weight = 0;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const resize::Taps<acc_t> ty = row_axis.taps_of(r % p.height);
    const int64_t upper = (r / p.height) * p.in_h + ty.index0, lower = upper - ty.index0 + ty.index1;
    const label_t* label_row = labels + r * p.width;
    for (int64_t x = 0; x < p.width; ++x) {
      const int64_t label = static_cast<int64_t>(label_row[x]);
      if (label == p.ignore_index) continue;
      if (label < 0 || label >= K) {
        out.bad_label = label;
        return;
      }
      const resize::Taps<acc_t>& tx = cols[x];
      const acc_t w00 = ty.weight0 * tx.weight0, w01 = ty.weight0 * tx.weight1;
      const acc_t w10 = ty.weight1 * tx.weight0, w11 = ty.weight1 * tx.weight1;
      const acc_t* l00 = p.logits + (upper * p.in_w + tx.index0) * K;
      const acc_t* l01 = p.logits + (upper * p.in_w + tx.index1) * K;
      const acc_t* l10 = p.logits + (lower * p.in_w + tx.index0) * K;
      const acc_t* l11 = p.logits + (lower * p.in_w + tx.index1) * K;
      acc_t top = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : top)
      for (int64_t k = 0; k < K; ++k) {
        blended[k] = w00 * l00[k] + w01 * l01[k] + w10 * l10[k] + w11 * l11[k];
        top = std::max(top, blended[k]);
      }
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < K; ++k) {
        probs[k] = exp_nonpositive(blended[k] - top);
        sum += probs[k];
      }
      const acc_t log_sum_exp = top + std::log(sum);
      const acc_t pixel_weight = p.weight ? p.weight[label] : acc_t(1);
      acc_t pixel_loss = hit * (log_sum_exp - blended[label]);
      if (p.smoothing != acc_t(0)) {
        acc_t total = 0;
#pragma omp simd reduction(+ : total)
        for (int64_t k = 0; k < K; ++k) total += blended[k];
        pixel_loss += p.smoothing * (log_sum_exp - total / static_cast<acc_t>(K));
      }
      run_loss += static_cast<double>(pixel_weight * pixel_loss);
      run_weight += static_cast<double>(pixel_weight);
      if (!p.compute_grad) continue;
      const acc_t scale = pixel_weight / sum, shift = pixel_weight * spread;
      for (int64_t k = 0; k < K; ++k) probs[k] = probs[k] * scale - shift;
      probs[label] -= pixel_weight * hit;
      acc_t* g00 = out.grad.data() + ((upper - out.first_row) * p.in_w + tx.index0) * K;
      acc_t* g01 = out.grad.data() + ((upper - out.first_row) * p.in_w + tx.index1) * K;
      acc_t* g10 = out.grad.data() + ((lower - out.first_row) * p.in_w + tx.index0) * K;
      acc_t* g11 = out.grad.data() + ((lower - out.first_row) * p.in_w + tx.index1) * K;
      for (int64_t k = 0; k < K; ++k) g00[k] += w00 * probs[k];
      if (w01 != acc_t(0)) for (int64_t k = 0; k < K; ++k) g01[k] += w01 * probs[k];
      if (w10 != acc_t(0)) for (int64_t k = 0; k < K; ++k) g10[k] += w10 * probs[k];
      if (w11 != acc_t(0)) for (int64_t k = 0; k < K; ++k) g11[k] += w11 * probs[k];
    }
  }
  out.loss = run_loss;
  out.weight = run_weight;
}

template <typename acc_t, typename label_t>
void loss_and_grad(const Problem<acc_t>& p, const label_t* labels, acc_t* grad, double& loss, double& weight_sum) {
  const resize::Axis<acc_t> row_axis(p.in_h, p.height, /*linear=*/true, /*align_corners=*/false);
  const resize::Axis<acc_t> col_axis(p.in_w, p.width, /*linear=*/true, /*align_corners=*/false);
  std::vector<resize::Taps<acc_t>> cols(p.width);  // read at every label row: tabulated
  for (int64_t x = 0; x < p.width; ++x) cols[x] = col_axis.taps_of(x);
  const int64_t rows = p.batch * p.height, K = p.classes;
  if (rows == 0) return;
  const int64_t runs = std::clamp<int64_t>(rows * p.width * K / kMinRunWork, 1, std::min<int64_t>(at::get_num_threads(), rows));
  // The flattened source row (n * h + i) that label row r reads with its upper or lower tap.
  auto source_row = [&](int64_t r, bool lower) {
    const resize::Taps<acc_t> t = row_axis.taps_of(r % p.height);
    return (r / p.height) * p.in_h + (lower ? t.index1 : t.index0);
  };
  std::vector<RunResult<acc_t>> results(runs);

  at::parallel_for(0, runs, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> blended(K), probs(K);
    for (int64_t run = begin; run < end; ++run) {
      const int64_t row_begin = rows * run / runs, row_end = rows * (run + 1) / runs;
      RunResult<acc_t>& out = results[run];
      out.first_row = source_row(row_begin, false);
      if (p.compute_grad) out.grad.assign((source_row(row_end - 1, true) - out.first_row + 1) * p.in_w * K, acc_t(0));
      loss_and_grad_rows(p, labels, row_axis, cols.data(), row_begin, row_end, out, blended.data(), probs.data());
    }
  });

  for (const RunResult<acc_t>& run : results) {  // in run order: deterministic
    TORCH_CHECK(!run.bad_label, "sfpn::", kOp, ": labels must be classes in [0, ", K, ") or ignore_index (",
                p.ignore_index, "), got ", run.bad_label.value_or(0));
    loss += run.loss;
    weight_sum += run.weight;
    if (!p.compute_grad) continue;
    acc_t* dst = grad + run.first_row * p.in_w * K;
    for (size_t i = 0; i < run.grad.size(); ++i) dst[i] += run.grad[i];
  }
}

void check_arguments(const at::Tensor& logits, const at::Tensor& labels,
                     const std::optional<at::Tensor>& weight, std::string_view reduction, double smoothing) {
  checks::check_tensor(kOp, "logits", logits, 4, "(N, K, h, w)");
  TORCH_CHECK(logits.size(1) > 0 && logits.size(2) > 0 && logits.size(3) > 0, "sfpn::", kOp,
              ": logits must have at least one class and one pixel, got shape ", logits.sizes());
  TORCH_CHECK(labels.dim() == 3 && at::isIntegralType(labels.scalar_type(), /*includeBool=*/false), "sfpn::", kOp,
              ": labels must be integer classes (N, H, W), got ", labels.scalar_type(), " of shape ", labels.sizes());
  checks::check_same_device(kOp, "labels", labels, "logits", logits);
  TORCH_CHECK(labels.size(0) == logits.size(0), "sfpn::", kOp, ": labels must have logits' batch size ", logits.size(0),
              ", got shape ", labels.sizes());
  TORCH_CHECK(reduction == "mean" || reduction == "sum", "sfpn::", kOp, ": reduction must be 'mean' or 'sum', got '",
              reduction, "'");
  TORCH_CHECK(smoothing >= 0 && smoothing <= 1, "sfpn::", kOp, ": label_smoothing must be in [0, 1], got ", smoothing);
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == logits.size(1) && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
                "sfpn::", kOp, ": weight must be float32 or float64 (K,) with K = ", logits.size(1), ", got ",
                w.scalar_type(), " of shape ", w.sizes());
    checks::check_same_device(kOp, "weight", w, "logits", logits);
    TORCH_CHECK(smoothing == 0, "sfpn::", kOp, ": weight and label_smoothing (", smoothing, ") cannot be combined");
  }
}

// (loss, gradient): the loss float32 (float64 for float64 logits), the gradient d loss / d logits
// in the logits' dtype and layout when compute_grad, else an empty tensor.
std::tuple<at::Tensor, at::Tensor> upsample_cross_entropy(const at::Tensor& logits, const at::Tensor& labels,
                                                          const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                                          c10::string_view reduction_name, double smoothing,
                                                          bool compute_grad) {
  const std::string_view reduction(reduction_name.data(), reduction_name.size());
  check_arguments(logits, labels, weight, reduction, smoothing);
  const at::ScalarType acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor source = logits.to(acc_type).permute({0, 2, 3, 1}).contiguous();  // (N, h, w, K)
  const at::Tensor label_map = labels.contiguous();
  const std::optional<at::Tensor> class_weight =
      weight.has_value() ? std::optional<at::Tensor>(weight->to(acc_type).contiguous()) : std::nullopt;
  // (N, K, h, w) channels_last: in memory the (N, h, w, K) the kernel writes, and not a view.
  at::Tensor grad =
      compute_grad ? at::empty(logits.sizes(), source.options(), at::MemoryFormat::ChannelsLast).zero_() : at::Tensor();
  double loss = 0, weight_sum = 0;
  AT_DISPATCH_FLOATING_TYPES(acc_type, "sfpn::cross_entropy", [&] {
    using acc_t = scalar_t;
    const Problem<acc_t> problem{source.const_data_ptr<acc_t>(),
                                 class_weight ? class_weight->const_data_ptr<acc_t>() : nullptr,
                                 logits.size(0), logits.size(1), logits.size(2), logits.size(3), labels.size(1),
                                 labels.size(2), ignore_index, static_cast<acc_t>(smoothing), compute_grad};
    acc_t* grad_data = compute_grad ? grad.mutable_data_ptr<acc_t>() : nullptr;
    AT_DISPATCH_INTEGRAL_TYPES(label_map.scalar_type(), "sfpn::cross_entropy labels", [&] {
      loss_and_grad<acc_t, scalar_t>(problem, label_map.const_data_ptr<scalar_t>(), grad_data, loss, weight_sum);
    });
  });
  if (reduction == "mean") {
    loss /= weight_sum;  // no labelled pixel: 0 / 0 = NaN, as F.cross_entropy (whose gradient is 0 then)
    if (compute_grad && weight_sum != 0) grad.mul_(1.0 / weight_sum);
  }
  const at::Tensor loss_tensor = at::scalar_tensor(loss, logits.options().dtype(acc_type));
  if (!compute_grad) return {loss_tensor, at::empty({0}, logits.options())};
  const at::MemoryFormat layout =  // the logits' layout: kept for channels_last logits, else made NCHW
      checks::is_channels_last(logits) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return {loss_tensor, grad.to(logits.scalar_type()).contiguous(layout)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("upsample_cross_entropy", &upsample_cross_entropy);
}

}  // namespace sfpn::cross_entropy::cpu
