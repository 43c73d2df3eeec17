// sfpn::upsample_argmax on the CPU: the class map of logits (K, h, w) bilinearly upsampled to
// (H, W), without the (K, H, W) upsampled logits; argument checks and the operator are shared with
// CUDA in upsample_argmax.h.
//
// Plan. An output pixel blends the four source pixels of one cell: rows (i, i + 1) and columns
// (j, j + 1), i and j its taps' first indices, so a blended class value lies between that class's
// smallest and largest value in the cell. A class whose largest value in the cell is below the
// smallest value of some other class there cannot win at any of the cell's pixels; only the
// others, the cell's candidates, are blended. Inside a region of one class (most of a trained
// model's map) that leaves one candidate and nothing to blend; on a boundary, two or three of K.
// Exact: a class is dropped only when it falls short by more than the blend's rounding error can
// make up (kDropMargin), so the class map is the argmax of the same float blend over all K, and
// a cell with a NaN or an infinity keeps every class.
//
// Output columns reading the same source column j are a contiguous run, the same in every output
// row; a row of cells (a source row i) is worked out when the first output row reading it comes.
// The threads split the output rows, each a contiguous run. Memory per thread: a row of cells'
// candidates, K per run at most; never K * H * W.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/vector_clones.h"
#include "resize_index.h"
#include "upsample_argmax.h"

namespace sfpn::upsample_argmax::cpu {
namespace {

// A class is dropped from a cell when its largest value there is below the best smallest value
// by more than kDropMargin * epsilon * (the cell's largest magnitude). A blended value is within
// about 3 epsilon of the exact blend of the cell's values (two rounded products and sums per
// axis), which lies within the class's range in the cell: so a dropped class's blend is below
// the kept class's by more than rounding can reverse, with room to spare.
constexpr double kDropMargin = 16;
// Output pixels (a few nanoseconds each: one candidate, or a few blended) per parallel task at
// least: small maps run on one thread, as waking a second one costs more (on a loaded machine,
// milliseconds).
constexpr int64_t kMinTaskWork = int64_t(1) << 18;

// Output columns [begin, end) read source columns (j0, j1): their run, the same in every row.
struct Run {
  int64_t begin, end, j0, j1;
};

// What the threads share: the logits (K, h, w), the row axis, the output columns' two tap weights
// (apart, so that a run's loop reads them contiguously) and runs, the output (crop_h, crop_w).
template <typename scalar_t, typename acc_t>
struct Plan {
  const scalar_t* logits;
  int64_t classes, in_w, plane, crop_w;
  resize::Axis<acc_t> rows;
  const acc_t* col_weight0;
  const acc_t* col_weight1;
  const Run* runs;
  int64_t num_runs;
  int64_t* out;
};

// A thread's scratch, allocated before its rows (a vector clone must not allocate).
template <typename acc_t>
struct Scratch {
  std::vector<int32_t> candidates;  // (runs, K): the candidates of each run's cell, ascending
  std::vector<int32_t> counts;      // (runs,)
  std::vector<acc_t> best_low, scale;
  std::vector<uint8_t> finite;
  std::vector<acc_t> best;          // (longest run,)
  std::vector<int32_t> best_class;

  Scratch(int64_t classes, int64_t num_runs, int64_t longest_run)
      : candidates(num_runs * classes), counts(num_runs), best_low(num_runs), scale(num_runs), finite(num_runs),
        best(longest_run), best_class(longest_run) {}
};

template <typename acc_t>
inline acc_t min4(acc_t a, acc_t b, acc_t c, acc_t d) { return std::min(std::min(a, b), std::min(c, d)); }
template <typename acc_t>
inline acc_t max4(acc_t a, acc_t b, acc_t c, acc_t d) { return std::max(std::max(a, b), std::max(c, d)); }

// The candidates of every run's cell in source rows (i0, i1): two passes over the classes, the
// first for each cell's best smallest value and largest magnitude, the second keeping the
// classes that can reach it.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void cell_candidates(const Plan<scalar_t, acc_t>& plan, int64_t i0, int64_t i1, Scratch<acc_t>& scratch) {
  const int64_t classes = plan.classes, num_runs = plan.num_runs;
  const Run* runs = plan.runs;
  acc_t* best_low = scratch.best_low.data();
  acc_t* scale = scratch.scale.data();
  uint8_t* finite = scratch.finite.data();
  std::fill_n(best_low, num_runs, -std::numeric_limits<acc_t>::infinity());
  std::fill_n(scale, num_runs, acc_t(0));
  std::fill_n(finite, num_runs, uint8_t(1));
  for (int64_t k = 0; k < classes; ++k) {
    const scalar_t* upper = plan.logits + k * plan.plane + i0 * plan.in_w;
    const scalar_t* lower = plan.logits + k * plan.plane + i1 * plan.in_w;
    for (int64_t r = 0; r < num_runs; ++r) {
      const acc_t a = upper[runs[r].j0], b = upper[runs[r].j1], c = lower[runs[r].j0], d = lower[runs[r].j1];
      const acc_t magnitude = std::abs(a) + std::abs(b) + std::abs(c) + std::abs(d);  // NaN, inf: not finite
      finite[r] &= magnitude <= std::numeric_limits<acc_t>::max();
      best_low[r] = std::max(best_low[r], min4(a, b, c, d));
      scale[r] = std::max(scale[r], max4(std::abs(a), std::abs(b), std::abs(c), std::abs(d)));
    }
  }
  const acc_t margin = static_cast<acc_t>(kDropMargin) * std::numeric_limits<acc_t>::epsilon();
  for (int64_t r = 0; r < num_runs; ++r) {
    // Below this a class cannot win; a cell that is not finite keeps every class.
    best_low[r] = finite[r] ? best_low[r] - margin * scale[r] : -std::numeric_limits<acc_t>::infinity();
  }
  int32_t* counts = scratch.counts.data();
  int32_t* candidates = scratch.candidates.data();
  std::fill_n(counts, num_runs, 0);
  for (int64_t k = 0; k < classes; ++k) {
    const scalar_t* upper = plan.logits + k * plan.plane + i0 * plan.in_w;
    const scalar_t* lower = plan.logits + k * plan.plane + i1 * plan.in_w;
    for (int64_t r = 0; r < num_runs; ++r) {
      const acc_t a = upper[runs[r].j0], b = upper[runs[r].j1], c = lower[runs[r].j0], d = lower[runs[r].j1];
      if (!(max4(a, b, c, d) < best_low[r])) candidates[r * classes + counts[r]++] = static_cast<int32_t>(k);
    }
  }
}

// Output rows [begin, end) of the class map.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void argmax_rows(const Plan<scalar_t, acc_t>& plan, int64_t begin, int64_t end,
                                    Scratch<acc_t>& scratch) {
  const int64_t classes = plan.classes;
  int64_t cells_of = -1;  // the source row whose cells the scratch holds
  for (int64_t y = begin; y < end; ++y) {
    const resize::Taps<acc_t> row = plan.rows.taps_of(y);
    if (row.index0 != cells_of) {
      cell_candidates(plan, row.index0, row.index1, scratch);
      cells_of = row.index0;
    }
    const acc_t wu = row.weight0, wl = row.weight1;
    int64_t* out = plan.out + y * plan.crop_w;
    for (int64_t r = 0; r < plan.num_runs; ++r) {
      const Run run = plan.runs[r];
      const int32_t* candidates = scratch.candidates.data() + r * classes;
      const int32_t count = scratch.counts[r];
      if (count == 1) {
        std::fill(out + run.begin, out + run.end, static_cast<int64_t>(candidates[0]));
        continue;
      }
      acc_t* __restrict__ top = scratch.best.data();
      int32_t* __restrict__ top_class = scratch.best_class.data();
      const acc_t* __restrict__ w0 = plan.col_weight0 + run.begin;
      const acc_t* __restrict__ w1 = plan.col_weight1 + run.begin;
      const int64_t width = run.end - run.begin;
      // Blended along W, then along H, as F.interpolate does. The first candidate starts the
      // running argmax (the dropped classes are below it); later ones take over only if they beat
      // it, so of equal values the first class stays, as in argmax. Branch-free, so that it
      // vectorises.
      for (int32_t n = 0; n < count; ++n) {
        const int32_t k = candidates[n];
        const scalar_t* upper = plan.logits + k * plan.plane + row.index0 * plan.in_w;
        const scalar_t* lower = plan.logits + k * plan.plane + row.index1 * plan.in_w;
        const acc_t a = upper[run.j0], b = upper[run.j1], c = lower[run.j0], d = lower[run.j1];
        if (n == 0) {
          for (int64_t x = 0; x < width; ++x) {
            top[x] = wu * (w0[x] * a + w1[x] * b) + wl * (w0[x] * c + w1[x] * d);
            top_class[x] = k;
          }
          continue;
        }
        for (int64_t x = 0; x < width; ++x) {
          const acc_t value = wu * (w0[x] * a + w1[x] * b) + wl * (w0[x] * c + w1[x] * d);
          const bool wins = beats(value, top[x]);
          top[x] = wins ? value : top[x];
          top_class[x] = wins ? k : top_class[x];
        }
      }
      for (int64_t x = 0; x < width; ++x) out[run.begin + x] = top_class[x];
    }
  }
}

template <typename scalar_t, typename acc_t>
void upsample_argmax_kernel(const scalar_t* logits, int64_t classes, int64_t in_h, int64_t in_w, int64_t height,
                            int64_t width, int64_t* out, int64_t crop_h, int64_t crop_w) {
  const resize::Axis<acc_t> col_axis(in_w, width, /*linear=*/true, /*align_corners=*/false);
  std::vector<acc_t> weight0(crop_w), weight1(crop_w);  // read by every candidate of every row: tabulated
  std::vector<Run> runs;
  int64_t longest_run = 0;
  for (int64_t x = 0; x < crop_w; ++x) {
    const resize::Taps<acc_t> taps = col_axis.taps_of(x);
    weight0[x] = taps.weight0;
    weight1[x] = taps.weight1;
    if (runs.empty() || runs.back().j0 != taps.index0) runs.push_back({x, x, taps.index0, taps.index1});
    longest_run = std::max(longest_run, ++runs.back().end - runs.back().begin);
  }
  const Plan<scalar_t, acc_t> plan{logits, classes, in_w, in_h * in_w, crop_w,
                                   resize::Axis<acc_t>(in_h, height, /*linear=*/true, /*align_corners=*/false),
                                   weight0.data(), weight1.data(), runs.data(), static_cast<int64_t>(runs.size()), out};
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / crop_w);
  at::parallel_for(0, crop_h, grain, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> scratch(classes, plan.num_runs, longest_run);
    argmax_rows(plan, begin, end, scratch);
  });
}

void upsample_argmax_cpu(const at::Tensor& logits, int64_t height, int64_t width, at::Tensor& out) {
  TORCH_CHECK(logits.size(0) <= std::numeric_limits<int32_t>::max(), "sfpn::upsample_argmax: logits must have at most 2^31 - 1 classes, got ",
              logits.size(0));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sfpn::upsample_argmax", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    upsample_argmax_kernel<scalar_t, acc_t>(logits.const_data_ptr<scalar_t>(), logits.size(0), logits.size(1),
                                            logits.size(2), height, width, out.mutable_data_ptr<int64_t>(),
                                            out.size(0), out.size(1));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  register_upsample_argmax_ops<upsample_argmax_cpu>(m);
}

}  // namespace sfpn::upsample_argmax::cpu
