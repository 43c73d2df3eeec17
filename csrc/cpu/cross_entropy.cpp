// sfpn::upsample_cross_entropy on the CPU: the softmax cross-entropy of logits (N, K, h, w),
// bilinearly resized to the labels' size (H, W) (any size; the identity when the sizes agree), and
// its gradient, in one pass over the labelled pixels: no (N, K, H, W) tensor. The schema, the
// Python checks and the reference both backends are tested against are in
// sfpn/ops/cross_entropy.py; the Triton kernel (kernels/cross_entropy.py) serves CUDA.
// sfpn::semantic_cross_entropy (labels on the logits' grid) keeps its reference on the CPU: with
// nothing to resize, ATen's vectorised log-softmax was 4x faster than this kernel's earlier
// per-pixel form (commit 987cdaa); its row form below has not been timed against it.
//
// Plan. Bilinear resizing is separable, so the kernel works a label row at a time and never
// blends a pixel's four taps one by one. The logits are read as (N, h, K, w) in the accumulation
// type (a copy of the small map on the head's grid): at a source row each class is one contiguous
// row. For each label row:
//   1. its two source rows (the vertical taps) are blended into one (K, w) row;
//   2. that row's horizontal taps give the label row's logits, (K, W): a row per class, so that
//      the softmax runs along the pixels, a vector of pixels at a time, whatever K is;
//   3. per pixel, the log-sum-exp, the loss and the gradient (softmax - smoothed one-hot, times the
//      class weight), (K, W), zero at ignored pixels;
//   4. the gradient goes back through the horizontal taps into a (K, w) row (each source column
//      sums the label columns that read it), then through the vertical taps into the run's own
//      buffer.
// The threads split the N * H label rows into contiguous runs, one per thread. The buffers and
// partial sums are then added in run order, so the result depends on the thread count, never on
// timing.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
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

// log(s) for a sum of exps whose largest term is exp(0): s in [1, K], or NaN (which it returns),
// with no libm call and no branch. s = m * 2^e with m in [sqrt(1/2), sqrt(2)); log(m) =
// 2 atanh(z), z = (m - 1) / (m + 1), |z| < 0.172, by its series to z^9. Checked against float64
// over s in [1, 1e6]: within 2.5e-7 relative (above s = 1.01) and 1.1e-6 absolute, float's rounding.
// `Float` is float or a vector of floats (sfpn::cpu::lanes_t), `Int` int32_t or the vector of as
// many int32_t.
template <typename Float, typename Int = int32_t>
[[gnu::always_inline]] inline Float log_sum_of_exps(Float s) {
  Int bits;
  std::memcpy(&bits, &s, sizeof bits);
  Int exponent = ((bits >> 23) & 0xff) - 127;
  bits = (bits & 0x007fffff) | 0x3f800000;  // the mantissa as a float in [1, 2)
  Float m;
  std::memcpy(&m, &bits, sizeof m);
  const auto halve = m > 1.41421356f;
  m = halve ? m * 0.5f : m;
  exponent = halve ? exponent + 1 : exponent;
  const Float z = (m - 1.0f) / (m + 1.0f), z2 = z * z;
  Float p = Float{} + 1.0f / 9;
  p = p * z2 + 1.0f / 7;
  p = p * z2 + 1.0f / 5;
  p = p * z2 + 1.0f / 3;
  p = p * z2 + 1.0f;
  Float e;
  if constexpr (std::is_same_v<Float, float>) {
    e = static_cast<float>(exponent);
  } else {
    e = __builtin_convertvector(exponent, Float);
  }
  const Float result = e * 0.693147181f + 2.0f * z * p;
  return s != s ? s : result;
}

inline double log_sum_of_exps(double s) {
  return std::log(s);
}

// A pixel's loss from its log-sum-exp, its sum of logits over the classes (`total`, read only with
// label smoothing) and its label's logit: `Float` acc_t, or a vector of floats (row_loss_lanes).
template <typename Float, typename Scalar>
[[gnu::always_inline]] inline Float pixel_loss(Float log_sum_exp, Float total, Float label_logit, Scalar hit,
                                               Scalar smoothing, bool smoothed, Scalar classes) {
  const Float smoothing_loss = smoothed ? smoothing * (log_sum_exp - total / classes) : Float{};
  return hit * (log_sum_exp - label_logit) + smoothing_loss;
}

// The row's loss and weight sums over pixels [0, W - W % 16) (the loop below, 16 pixels at a time
// in GCC's vector types): written out, as GCC leaves that loop scalar in the AVX-512 clone (the
// NaN and smoothing selects become branches). Returns the first pixel left for the scalar loop.
[[gnu::always_inline]] inline int64_t row_loss_lanes(int64_t W, int64_t K, float hit, float smoothing,
                                                     const float* top, const float* sum, const float* total,
                                                     const float* picked, const float* pixel_weight,
                                                     const int32_t* counted, float& row_loss, float& row_weight) {
  using Lanes = sfpn::cpu::lanes_t<float>;
  typedef int32_t Words __attribute__((vector_size(64)));
  constexpr int64_t kLanes = sfpn::cpu::Lanes<float>::size;
  const bool smoothed = smoothing != 0.0f;
  const float classes = static_cast<float>(K);
  Lanes loss_sum = {}, weight_sum = {};
  auto load = [](const auto* from, auto& to) { std::memcpy(&to, from, sizeof to); };
  int64_t x = 0;
  for (; x + kLanes <= W; x += kLanes) {
    Lanes s, t, mean, label_logit, weight;
    Words is_counted;
    load(sum + x, s);
    load(top + x, t);
    load(total + x, mean);
    load(picked + x, label_logit);
    load(pixel_weight + x, weight);
    load(counted + x, is_counted);
    const Lanes loss = pixel_loss(t + log_sum_of_exps<Lanes, Words>(s), mean, label_logit, hit, smoothing, smoothed,
                                  classes);
    loss_sum += is_counted != 0 ? weight * loss : Lanes{};  // a select, as in the scalar loop
    weight_sum += weight;
  }
  for (int64_t i = 0; i < kLanes; ++i) {
    row_loss += loss_sum[i];
    row_weight += weight_sum[i];
  }
  return x;
}

// One run's share: its loss and weight sums and its gradient over source rows
// [first_row, first_row + rows) of the flattened (N * h) source rows, (rows, K, w).
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
  const acc_t* logits;  // (N, h, K, w), contiguous
  const acc_t* weight;  // (K,) or nullptr
  int64_t batch, classes, in_h, in_w, height, width;
  int64_t ignore_index;
  acc_t smoothing;
  bool compute_grad;
};

// The horizontal taps of the label columns, one array per field so that loops read them as
// vectors. The label columns whose first tap is source column j are one contiguous range,
// [first[j], first[j] + count[j]) (resize_index.h); their second tap is column j + 1 (j at the
// last column). So every step that crosses the horizontal taps runs over source columns, and over
// each one's range of label columns with the same two taps: contiguous loads, no gathers (which
// the compiler does not emit for Intel CPUs, where the Downfall fix made them slow).
template <typename acc_t>
struct ColumnTaps {
  std::vector<acc_t> weight0, weight1;  // (W,)
  std::vector<int64_t> first, count;    // (w,)

  explicit ColumnTaps(const resize::Axis<acc_t>& axis)
      : weight0(axis.out_size), weight1(axis.out_size), first(axis.in_size), count(axis.in_size) {
    for (int64_t x = 0; x < axis.out_size; ++x) {
      const resize::Taps<acc_t> t = axis.taps_of(x);
      weight0[x] = t.weight0;
      weight1[x] = t.weight1;
    }
    for (int64_t j = 0; j < axis.in_size; ++j) {
      const resize::Range r = axis.tap_range(0, j);
      first[j] = r.begin;
      count[j] = r.end - r.begin;
    }
  }
};

// One thread's working rows, allocated before the vectorised loop runs (a clone must not allocate).
template <typename acc_t>
struct RowScratch {
  std::vector<acc_t> source;   // (K, w): the label row's two source rows blended; then its gradient
  std::vector<acc_t> logits;   // (K, W): the label row's logits; then their gradient
  std::vector<acc_t> exps;     // (K, W): exp(logit - the pixel's largest)
  std::vector<acc_t> top, sum, total, pixel_weight, picked;  // (W,) each; picked: the label's logit
  std::vector<int32_t> label;    // (W,): the pixel's class, 0 where ignored
  std::vector<int32_t> counted;  // (W,): 1 where the label is a class, 0 where it is ignore_index

  RowScratch(int64_t classes, int64_t in_w, int64_t width)
      : source(classes * in_w), logits(classes * width), exps(classes * width), top(width), sum(width),
        total(width), pixel_weight(width), picked(width), label(width), counted(width) {}
};

// Label rows [row_begin, row_end) of the (N * H) rows: their loss and weight into `out`, and,
// with compute_grad, their gradient into out.grad (the source rows from out.first_row on). Stops
// at a label that is neither a class nor ignore_index, recorded in out.bad_label (a clone cannot
// throw: vector_clones.h).
template <typename acc_t, typename label_t>
SFPN_VECTOR_CLONES void loss_and_grad_rows(const Problem<acc_t>& p, const label_t* labels,
                                           const resize::Axis<acc_t>& row_axis, const ColumnTaps<acc_t>& cols,
                                           int64_t row_begin, int64_t row_end, RunResult<acc_t>& out,
                                           RowScratch<acc_t>& s) {
  const int64_t K = p.classes, W = p.width, w = p.in_w;
  const acc_t hit = acc_t(1) - p.smoothing, spread = p.smoothing / static_cast<acc_t>(K);
  const acc_t *weight0 = cols.weight0.data(), *weight1 = cols.weight1.data();
  const int64_t *first = cols.first.data(), *count = cols.count.data();
  acc_t *source = s.source.data(), *logits = s.logits.data(), *exps = s.exps.data();
  acc_t *top = s.top.data(), *sum = s.sum.data(), *total = s.total.data(), *pixel_weight = s.pixel_weight.data();
  acc_t* picked = s.picked.data();
  int32_t* label = s.label.data();
  int32_t* counted = s.counted.data();
  double run_loss = 0, run_weight = 0;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const label_t* label_row = labels + r * W;
    int64_t labelled = 0;
    for (int64_t x = 0; x < W; ++x) {
      const int64_t l = static_cast<int64_t>(label_row[x]);
      if (l == p.ignore_index) {
        label[x] = 0;
        pixel_weight[x] = 0;
        counted[x] = 0;
        continue;
      }
      if (l < 0 || l >= K) {
        out.bad_label = l;
        return;
      }
      label[x] = static_cast<int32_t>(l);
      pixel_weight[x] = p.weight ? p.weight[l] : acc_t(1);
      counted[x] = 1;
      ++labelled;
    }
    if (labelled == 0) continue;

    // 1. The vertical taps: one (K, w) source row.
    const resize::Taps<acc_t> ty = row_axis.taps_of(r % p.height);
    const int64_t upper = (r / p.height) * p.in_h + ty.index0, lower = upper - ty.index0 + ty.index1;
    const acc_t *upper_row = p.logits + upper * K * w, *lower_row = p.logits + lower * K * w;
#pragma omp simd
    for (int64_t i = 0; i < K * w; ++i) source[i] = ty.weight0 * upper_row[i] + ty.weight1 * lower_row[i];

    // 2. The horizontal taps: the label row's (K, W) logits.
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* from = source + k * w;
      acc_t* to = logits + k * W;
      for (int64_t j = 0; j < w; ++j) {
        const acc_t left = from[j], right = from[j + 1 < w ? j + 1 : j];
#pragma omp simd
        for (int64_t x = first[j]; x < first[j] + count[j]; ++x) to[x] = weight0[x] * left + weight1[x] * right;
      }
    }

    // 3. Per pixel: the largest logit and the label's, the exps and their sum, the loss.
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) top[x] = picked[x] = logits[x];
    for (int64_t k = 1; k < K; ++k) {
      const int32_t class_k = static_cast<int32_t>(k);
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        top[x] = std::max(top[x], logits[k * W + x]);
        picked[x] = label[x] == class_k ? logits[k * W + x] : picked[x];
      }
    }
    std::fill(sum, sum + W, acc_t(0));
    for (int64_t k = 0; k < K; ++k) {
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        const acc_t e = exp_nonpositive(logits[k * W + x] - top[x]);
        exps[k * W + x] = e;
        sum[x] += e;
      }
    }
    // The smoothing's term needs the mean logit; without smoothing it is left out, not
    // multiplied by 0 (a logit of -inf is a valid 0 probability).
    const bool smoothed = p.smoothing != acc_t(0);
    std::fill(total, total + W, acc_t(0));
    for (int64_t k = 0; smoothed && k < K; ++k) {
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) total[x] += logits[k * W + x];
    }
    acc_t row_loss = 0, row_weight = 0;
    int64_t x_done = 0;
    if constexpr (std::is_same_v<acc_t, float>) {
      x_done = row_loss_lanes(W, K, hit, p.smoothing, top, sum, total, picked, pixel_weight, counted, row_loss,
                              row_weight);
    }
    for (int64_t x = x_done; x < W; ++x) {
      const acc_t loss = pixel_loss(top[x] + log_sum_of_exps(sum[x]), total[x], picked[x], hit, p.smoothing, smoothed,
                                    static_cast<acc_t>(K));
      // A select, not a product: an ignored pixel's loss may be NaN or infinite. A class of weight
      // 0 still counts, as in F.cross_entropy (0 * NaN is NaN).
      row_loss += counted[x] ? pixel_weight[x] * loss : acc_t(0);
      row_weight += pixel_weight[x];
    }
    run_loss += static_cast<double>(row_loss);
    run_weight += static_cast<double>(row_weight);
    if (!p.compute_grad) continue;

    // ... and the gradient, over the logits (zero at ignored pixels).
    for (int64_t k = 0; k < K; ++k) {
      const int32_t class_k = static_cast<int32_t>(k);
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        const acc_t g = pixel_weight[x] * (exps[k * W + x] / sum[x] - spread - (label[x] == class_k ? hit : acc_t(0)));
        logits[k * W + x] = counted[x] ? g : acc_t(0);
      }
    }

    // 4. Back through the horizontal taps: each source column sums what its range of label
    // columns sends to their two taps ...
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* from = logits + k * W;
      acc_t* to = source + k * w;
      std::fill(to, to + w, acc_t(0));
      for (int64_t j = 0; j < w; ++j) {
        acc_t left = 0, right = 0;  // in order, not as a vector: a range is a few columns long
        for (int64_t x = first[j]; x < first[j] + count[j]; ++x) {
          left += weight0[x] * from[x];
          right += weight1[x] * from[x];
        }
        to[j] += left;
        to[j + 1 < w ? j + 1 : j] += right;
      }
    }
    // ... and the vertical ones (two loops: the taps may be one row).
    acc_t* grad_upper = out.grad.data() + (upper - out.first_row) * K * w;
    acc_t* grad_lower = out.grad.data() + (lower - out.first_row) * K * w;
#pragma omp simd
    for (int64_t i = 0; i < K * w; ++i) grad_upper[i] += ty.weight0 * source[i];
#pragma omp simd
    for (int64_t i = 0; i < K * w; ++i) grad_lower[i] += ty.weight1 * source[i];
  }
  out.loss = run_loss;
  out.weight = run_weight;
}

template <typename acc_t, typename label_t>
void loss_and_grad(const Problem<acc_t>& p, const label_t* labels, acc_t* grad, double& loss, double& weight_sum) {
  const resize::Axis<acc_t> row_axis(p.in_h, p.height, /*linear=*/true, /*align_corners=*/false);
  const ColumnTaps<acc_t> cols(resize::Axis<acc_t>(p.in_w, p.width, /*linear=*/true, /*align_corners=*/false));
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
    RowScratch<acc_t> scratch(K, p.in_w, p.width);
    for (int64_t run = begin; run < end; ++run) {
      const int64_t row_begin = rows * run / runs, row_end = rows * (run + 1) / runs;
      RunResult<acc_t>& out = results[run];
      out.first_row = source_row(row_begin, false);
      if (p.compute_grad) out.grad.assign((source_row(row_end - 1, true) - out.first_row + 1) * K * p.in_w, acc_t(0));
      loss_and_grad_rows(p, labels, row_axis, cols, row_begin, row_end, out, scratch);
    }
  });

  for (const RunResult<acc_t>& run : results) {  // in run order: deterministic
    TORCH_CHECK(!run.bad_label, "sfpn::", kOp, ": labels must be classes in [0, ", K, ") or ignore_index (",
                p.ignore_index, "), got ", run.bad_label.value_or(0));
    loss += run.loss;
    weight_sum += run.weight;
    if (!p.compute_grad) continue;
    acc_t* dst = grad + run.first_row * K * p.in_w;
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
  const at::Tensor source = logits.to(acc_type).permute({0, 2, 1, 3}).contiguous();  // (N, h, K, w)
  const at::Tensor label_map = labels.contiguous();
  const std::optional<at::Tensor> class_weight =
      weight.has_value() ? std::optional<at::Tensor>(weight->to(acc_type).contiguous()) : std::nullopt;
  // (N, h, K, w), as the kernel writes it; the logits' (N, K, h, w) is a view.
  at::Tensor grad = compute_grad ? at::zeros(source.sizes(), source.options()) : at::Tensor();
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
  return {loss_tensor, grad.permute({0, 2, 1, 3}).to(logits.scalar_type()).contiguous(layout)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("upsample_cross_entropy", &upsample_cross_entropy);
}

}  // namespace sfpn::cross_entropy::cpu
