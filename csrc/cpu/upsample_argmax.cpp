// sfpn::upsample_argmax on the CPU: the class map of logits (K, h, w) bilinearly upsampled to
// (H, W), without the (K, H, W) upsampled logits; argument checks and the operator are shared with
// CUDA in upsample_argmax.h.
//
// Plan. An output pixel blends the four source pixels of one cell: rows (i, i + 1) and columns
// (j, j + 1), i and j its taps' first indices, so a blended class value lies between that class's
// smallest and largest value in the cell. A class whose largest value in the cell is below the
// smallest value of some other class there cannot win at any of the cell's pixels; only the
// others, the cell's candidates, are blended. Inside a region of one class (most of a trained
// model's map) that leaves one candidate and nothing to blend; on a boundary, a few of K.
// Exact: a class is dropped only when it falls short by more than the blend's rounding error can
// make up (kDropMargin), so the class map is the argmax of the same float blend over all K, and
// a cell with a NaN or an infinity keeps every class.
//
// The threads split the output rows, each a contiguous run, and take them a band at a time: the
// rows reading the same two source rows, whose cells are worked out once. Output columns reading
// the same source column are a run, the same in every row. A band is blended cell by cell, a
// candidate at a time over the run's columns and the band's rows; or, where its cells leave most
// classes in play (noise, an untrained model: kCandidateCost), every class over whole rows, 256
// columns at a time, as loops over long contiguous rows cost less per class than the short runs
// do. Memory per thread: a row of cells' candidates (K per source column at most) and a band's
// running argmax; never K * H * W.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
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
// by more than kDropMargin * epsilon * (a bound on the cell's magnitudes: the largest sum of a
// class's four). A blended value is within about 3 epsilon of the largest magnitude of the exact
// blend of the cell's values (two rounded products and sums per axis), which lies within the
// class's range in the cell: so a dropped class's blend is below the kept class's by more than
// rounding can reverse, with room to spare.
constexpr double kDropMargin = 16;
// A blend of one class at one pixel costs about this many times more cell by cell (runs of the
// scale factor's width, 8 in the detector) than over whole rows: a band is blended over whole rows
// when its candidates are more than 1 / kCandidateCost of K on average (measured on the model 207
// Xeon: noise leaves 59 of 81 classes in a cell, and cell by cell was then 1.6x slower).
constexpr int64_t kCandidateCost = 3;
// Output pixels (a few nanoseconds each) per parallel task at least: small maps run on one
// thread, as waking a second one costs more (on a loaded machine, milliseconds).
constexpr int64_t kMinTaskWork = int64_t(1) << 18;
// Output rows in a band at most (the rows reading the same two source rows: the scale factor).
constexpr int64_t kMaxBand = 16;
// Output columns a band blended over whole rows takes at a time: its running argmax, kMaxBand
// rows of them, stays in L1 (32 KiB in float32).
constexpr int64_t kTileWidth = 256;

// Output columns [begin, end) read source columns (j0, j1): their run, the same in every row.
struct Run {
  int64_t begin, end, j0, j1;
};

// What the threads share: the logits (K, h, w), the row axis, the output columns' two tap weights
// (apart, so that loops read them contiguously), their source columns and runs, the output
// (crop_h, crop_w).
template <typename scalar_t, typename acc_t>
struct Plan {
  const scalar_t* logits;
  int64_t classes, in_w, plane, crop_w;
  resize::Axis<acc_t> rows;
  const acc_t* col_weight0;
  const acc_t* col_weight1;
  const int64_t* col_index0;
  const int64_t* col_index1;
  const Run* runs;
  int64_t num_runs;
  int64_t* out;
};

// A thread's scratch, allocated before its rows (a vector clone must not allocate). Cells are
// indexed by their first source column j.
template <typename acc_t>
struct Scratch {
  std::vector<int32_t> candidates;              // (w, K): each cell's candidates, ascending
  std::vector<int32_t> counts;                  // (w,)
  std::vector<acc_t> best_low, scale, highest;  // (w,)
  std::vector<uint8_t> finite;                  // (w,)
  std::vector<acc_t> row_weight0, row_weight1;  // (kMaxBand,): the band's rows' taps
  std::vector<acc_t> upper_blend, lower_blend;  // (W',): a class's blends along W
  std::vector<acc_t> best;                      // (kMaxBand, W'): the band's running argmax
  std::vector<int32_t> best_class;

  Scratch(int64_t classes, int64_t in_w, int64_t crop_w)
      : candidates(in_w * classes), counts(in_w), best_low(in_w), scale(in_w), highest(in_w), finite(in_w),
        row_weight0(kMaxBand), row_weight1(kMaxBand), upper_blend(crop_w), lower_blend(crop_w),
        best(kMaxBand * crop_w), best_class(kMaxBand * crop_w) {}
};

// The cells of source rows (i0, i1) for class k: at each j, over columns (j, j + 1) (the last
// column paired with itself), the class's smallest value, its largest, and the sum of their
// magnitudes (NaN or inf where one is: min and max may pass over a NaN). Contiguous loads of two
// neighbours, so that it vectorises.
template <typename scalar_t, typename acc_t, typename Visit>
C10_ALWAYS_INLINE void for_each_cell(const scalar_t* upper, const scalar_t* lower, int64_t in_w, const Visit& visit) {
  auto at = [&](int64_t j, int64_t j1) {
    const acc_t a = upper[j], b = upper[j1], c = lower[j], d = lower[j1];
    visit(j, std::min(std::min(a, b), std::min(c, d)), std::max(std::max(a, b), std::max(c, d)),
          std::abs(a) + std::abs(b) + std::abs(c) + std::abs(d));
  };
  for (int64_t j = 0; j + 1 < in_w; ++j) at(j, j + 1);
  at(in_w - 1, in_w - 1);
}

// Every cell's candidates in source rows (i0, i1): two passes over the classes, the first for each
// cell's best smallest value and a bound on its magnitudes, the second keeping the classes that
// can reach it.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void cell_candidates(const Plan<scalar_t, acc_t>& plan, int64_t i0, int64_t i1, Scratch<acc_t>& scratch) {
  const int64_t classes = plan.classes, in_w = plan.in_w;
  acc_t* __restrict__ best_low = scratch.best_low.data();
  acc_t* __restrict__ scale = scratch.scale.data();
  acc_t* __restrict__ highest = scratch.highest.data();
  uint8_t* __restrict__ finite = scratch.finite.data();
  std::fill_n(best_low, in_w, -std::numeric_limits<acc_t>::infinity());
  std::fill_n(scale, in_w, acc_t(0));
  std::fill_n(finite, in_w, uint8_t(1));
  for (int64_t k = 0; k < classes; ++k) {
    const scalar_t* row = plan.logits + k * plan.plane;
    for_each_cell<scalar_t, acc_t>(row + i0 * in_w, row + i1 * in_w, in_w,
                                   [&](int64_t j, acc_t low, acc_t, acc_t magnitudes) {
                                     best_low[j] = std::max(best_low[j], low);
                                     scale[j] = std::max(scale[j], magnitudes);
                                     finite[j] &= magnitudes <= std::numeric_limits<acc_t>::max();
                                   });
  }
  const acc_t margin = static_cast<acc_t>(kDropMargin) * std::numeric_limits<acc_t>::epsilon();
  for (int64_t j = 0; j < in_w; ++j) {
    // Below this a class cannot win; a cell that is not finite keeps every class.
    best_low[j] = finite[j] ? best_low[j] - margin * scale[j] : -std::numeric_limits<acc_t>::infinity();
  }
  int32_t* __restrict__ counts = scratch.counts.data();
  int32_t* __restrict__ candidates = scratch.candidates.data();
  std::fill_n(counts, in_w, 0);
  for (int64_t k = 0; k < classes; ++k) {
    const scalar_t* row = plan.logits + k * plan.plane;
    for_each_cell<scalar_t, acc_t>(row + i0 * in_w, row + i1 * in_w, in_w,
                                   [&](int64_t j, acc_t, acc_t high, acc_t) { highest[j] = high; });
    // Branch-free: the slot after the last candidate is written over until a candidate keeps it.
    for (int64_t j = 0; j < in_w; ++j) {
      candidates[j * classes + counts[j]] = static_cast<int32_t>(k);
      counts[j] += !(highest[j] < best_low[j]);
    }
  }
}

// Class k's value at `width` output pixels in `rows` rows (weights (row_weight0, row_weight1)),
// from its blends along W (upper, lower), folded into the running argmax (best, best_class), rows
// `stride` apart. Blended along W, then along H, as F.interpolate does. The first class (`first`)
// starts the argmax; later ones take over only where they beat it, so of equal values the first
// class stays, as in argmax. Branch-free inside a row, so that it vectorises; always inlined, so
// that it is compiled for its caller's vector clone.
template <typename acc_t>
C10_ALWAYS_INLINE void fold_class(int32_t k, bool first, const acc_t* __restrict__ upper, const acc_t* __restrict__ lower,
                       int64_t width, const acc_t* row_weight0, const acc_t* row_weight1, int64_t rows,
                       acc_t* __restrict__ best, int32_t* __restrict__ best_class, int64_t stride) {
  for (int64_t t = 0; t < rows; ++t) {
    const acc_t wu = row_weight0[t], wl = row_weight1[t];
    acc_t* __restrict__ top = best + t * stride;
    int32_t* __restrict__ top_class = best_class + t * stride;
    if (first) {
      for (int64_t x = 0; x < width; ++x) {
        top[x] = wu * upper[x] + wl * lower[x];
        top_class[x] = k;
      }
      continue;
    }
    for (int64_t x = 0; x < width; ++x) {
      const acc_t value = wu * upper[x] + wl * lower[x];
      const bool wins = beats(value, top[x]);
      top[x] = wins ? value : top[x];
      top_class[x] = wins ? k : top_class[x];
    }
  }
}

// A band of `rows` output rows from `y`, reading source rows (i0, i1), cell by cell: each run's
// candidates only, a run and its band's rows at a time.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void band_by_cells(const Plan<scalar_t, acc_t>& plan, int64_t y, int64_t rows, int64_t i0, int64_t i1,
                   Scratch<acc_t>& scratch) {
  const int64_t classes = plan.classes, crop_w = plan.crop_w;
  int64_t* out = plan.out + y * crop_w;
  for (int64_t r = 0; r < plan.num_runs; ++r) {
    const Run run = plan.runs[r];
    const int32_t* candidates = scratch.candidates.data() + run.j0 * classes;
    const int32_t count = scratch.counts[run.j0];
    if (count == 1) {
      for (int64_t t = 0; t < rows; ++t) std::fill(out + t * crop_w + run.begin, out + t * crop_w + run.end, int64_t(candidates[0]));
      continue;
    }
    const acc_t* __restrict__ w0 = plan.col_weight0 + run.begin;
    const acc_t* __restrict__ w1 = plan.col_weight1 + run.begin;
    acc_t* __restrict__ upper_blend = scratch.upper_blend.data();
    acc_t* __restrict__ lower_blend = scratch.lower_blend.data();
    const int64_t width = run.end - run.begin;
    for (int32_t n = 0; n < count; ++n) {
      const int32_t k = candidates[n];
      const scalar_t* upper = plan.logits + k * plan.plane + i0 * plan.in_w;
      const scalar_t* lower = plan.logits + k * plan.plane + i1 * plan.in_w;
      const acc_t a = upper[run.j0], b = upper[run.j1], c = lower[run.j0], d = lower[run.j1];
      for (int64_t x = 0; x < width; ++x) {
        upper_blend[x] = w0[x] * a + w1[x] * b;
        lower_blend[x] = w0[x] * c + w1[x] * d;
      }
      fold_class(k, n == 0, upper_blend, lower_blend, width, scratch.row_weight0.data(), scratch.row_weight1.data(),
                 rows, scratch.best.data(), scratch.best_class.data(), width);
    }
    for (int64_t t = 0; t < rows; ++t) std::copy_n(scratch.best_class.data() + t * width, width, out + t * crop_w + run.begin);
  }
}

// The same band, every class over whole rows, a tile of kTileWidth columns at a time (so that the
// band's running argmax stays in L1 while the classes pass).
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void band_by_rows(const Plan<scalar_t, acc_t>& plan, int64_t y, int64_t rows, int64_t i0,
                                     int64_t i1, Scratch<acc_t>& scratch) {
  const int64_t crop_w = plan.crop_w;
  acc_t* __restrict__ upper_blend = scratch.upper_blend.data();
  acc_t* __restrict__ lower_blend = scratch.lower_blend.data();
  for (int64_t x0 = 0; x0 < crop_w; x0 += kTileWidth) {
    const int64_t width = std::min(kTileWidth, crop_w - x0);
    const acc_t* __restrict__ w0 = plan.col_weight0 + x0;
    const acc_t* __restrict__ w1 = plan.col_weight1 + x0;
    const int64_t* index0 = plan.col_index0 + x0;
    const int64_t* index1 = plan.col_index1 + x0;
    for (int64_t k = 0; k < plan.classes; ++k) {
      const scalar_t* upper = plan.logits + k * plan.plane + i0 * plan.in_w;
      const scalar_t* lower = plan.logits + k * plan.plane + i1 * plan.in_w;
      for (int64_t x = 0; x < width; ++x) {
        upper_blend[x] = w0[x] * static_cast<acc_t>(upper[index0[x]]) + w1[x] * static_cast<acc_t>(upper[index1[x]]);
        lower_blend[x] = w0[x] * static_cast<acc_t>(lower[index0[x]]) + w1[x] * static_cast<acc_t>(lower[index1[x]]);
      }
      fold_class(static_cast<int32_t>(k), k == 0, upper_blend, lower_blend, width, scratch.row_weight0.data(),
                 scratch.row_weight1.data(), rows, scratch.best.data(), scratch.best_class.data(), width);
    }
    for (int64_t t = 0; t < rows; ++t) {
      std::copy_n(scratch.best_class.data() + t * width, width, plan.out + (y + t) * crop_w + x0);
    }
  }
}

// Output rows [begin, end) of the class map, a band at a time.
template <typename scalar_t, typename acc_t>
void argmax_rows(const Plan<scalar_t, acc_t>& plan, int64_t begin, int64_t end, Scratch<acc_t>& scratch) {
  int64_t cells_of = -1;  // the source row whose cells the scratch holds
  bool by_rows = false;   // whether its bands are blended over whole rows
  for (int64_t band_begin = begin, band_end; band_begin < end; band_begin = band_end) {
    const resize::Taps<acc_t> first = plan.rows.taps_of(band_begin);
    for (band_end = band_begin; band_end < end && band_end - band_begin < kMaxBand; ++band_end) {
      const resize::Taps<acc_t> row = plan.rows.taps_of(band_end);
      if (row.index0 != first.index0) break;
      scratch.row_weight0[band_end - band_begin] = row.weight0;
      scratch.row_weight1[band_end - band_begin] = row.weight1;
    }
    if (first.index0 != cells_of) {
      cell_candidates(plan, first.index0, first.index1, scratch);
      cells_of = first.index0;
      int64_t blends = 0;  // per output row, cell by cell
      for (int64_t r = 0; r < plan.num_runs; ++r) {
        blends += scratch.counts[plan.runs[r].j0] * (plan.runs[r].end - plan.runs[r].begin);
      }
      by_rows = blends * kCandidateCost > plan.classes * plan.crop_w;
    }
    if (by_rows) {
      band_by_rows(plan, band_begin, band_end - band_begin, first.index0, first.index1, scratch);
    } else {
      band_by_cells(plan, band_begin, band_end - band_begin, first.index0, first.index1, scratch);
    }
  }
}

template <typename scalar_t, typename acc_t>
void upsample_argmax_kernel(const scalar_t* logits, int64_t classes, int64_t in_h, int64_t in_w, int64_t height,
                            int64_t width, int64_t* out, int64_t crop_h, int64_t crop_w) {
  const resize::Axis<acc_t> col_axis(in_w, width, /*linear=*/true, /*align_corners=*/false);
  // Read by every class of every band: tabulated.
  std::vector<acc_t> weight0(crop_w), weight1(crop_w);
  std::vector<int64_t> index0(crop_w), index1(crop_w);
  std::vector<Run> runs;
  for (int64_t x = 0; x < crop_w; ++x) {
    const resize::Taps<acc_t> taps = col_axis.taps_of(x);
    weight0[x] = taps.weight0;
    weight1[x] = taps.weight1;
    index0[x] = taps.index0;
    index1[x] = taps.index1;
    if (runs.empty() || runs.back().j0 != taps.index0) runs.push_back({x, x, taps.index0, taps.index1});
    ++runs.back().end;
  }
  const Plan<scalar_t, acc_t> plan{logits, classes, in_w, in_h * in_w, crop_w,
                                   resize::Axis<acc_t>(in_h, height, /*linear=*/true, /*align_corners=*/false),
                                   weight0.data(), weight1.data(), index0.data(), index1.data(), runs.data(),
                                   static_cast<int64_t>(runs.size()), out};
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / crop_w);
  at::parallel_for(0, crop_h, grain, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> scratch(classes, in_w, crop_w);
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
