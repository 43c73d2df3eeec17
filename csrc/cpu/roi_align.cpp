// RoIAlign on the CPU, forward and backward, for one level (sfpn::roi_align) and for a whole
// pyramid in one pass (sfpn::multilevel_roi_align); argument checks and the operators are
// shared with CUDA in roi_align.h.
//
// Plan. The bilinear weight of a sample is a row weight times a column weight (see
// roi_align_geometry.h), so for every RoI we tabulate once, per output row and per output column,
// the distinct input rows / columns it reads and their summed weights (already divided by the
// sample count). A bin is then sum_y wy * sum_x wx * in[y, x] over a handful of taps, shared by all
// channels; with 2x2 samples a bin reads about 9 pixels instead of torchvision's 16 bilinear taps.
// For RoIs whose taps cover a narrow span of columns (all of them after FPN level mapping) the row
// taps are first blended into one contiguous row, which vectorises (see pool_roi_dense).
// Both passes run in parallel over channels and visit the RoIs grouped by (level, image): one
// channel plane of one image stays in cache while all its RoIs read (or write) it, so the maps
// cross memory once. In the backward each thread owns whole gradient planes and visits RoIs in
// index order: no atomics, no zero-filled allocation, the same bits on every run.
// Channels-last maps (NHWC) are pooled as they are, in parallel over RoIs: every tap reads a
// vector of C contiguous channels (forward_kernel_channels_last). Their gradients are written NHWC
// too (backward_kernel_channels_last), in parallel over blocks of channels: every pixel a RoI reads
// gets the RoI's gradient for a block in one update, and each thread still owns what it writes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "roi_align.h"
#include "cpu/vector_clones.h"

namespace sfpn::roi_align::cpu {
namespace {

// One RoI's taps along one axis: `count` per bin, bin p's at [p * count, (p + 1) * count).
template <typename acc_t>
struct TapView {
  int64_t count;
  const int64_t* index;
  const acc_t* weight;
};

// The taps of every bin along one axis, for every RoI: bin p of RoI k reads pixels
// index[offset[k] + p * count[k] + j] with weights weight[...], j < count[k]. Every bin of a RoI
// has the same count (short bins are padded with zero weights), so the inner loops run a trip
// count that stays fixed over a RoI and branch prediction holds.
template <typename acc_t>
struct AxisTaps {
  std::vector<int64_t> offset, count;  // per RoI
  std::vector<int64_t> lo, hi;         // per RoI: the pixel span its taps cover (hi < lo: none)
  std::vector<int64_t> index;
  std::vector<acc_t> weight;

  TapView<acc_t> of(int64_t k) const {
    return {count[k], &index[offset[k]], &weight[offset[k]]};
  }
};

template <typename acc_t>
struct RoiTaps {
  std::vector<int64_t> level, batch;  // per RoI
  // RoIs grouped by (level, image), in index order within a group:
  // order[group_begin[l * N + n] .. group_begin[l * N + n + 1]).
  std::vector<int64_t> group_begin, order;
  AxisTaps<acc_t> rows, cols;
};

// Taps of the `grid` samples of bin `p` along an axis of `size` pixels, written to index/weight;
// returns their count. Sample positions move monotonically with the sample index, so equal pixels
// are adjacent and merge; zero weights are dropped.
template <typename acc_t>
int64_t bin_taps(acc_t start, acc_t bin, int64_t p, int64_t grid, int64_t size, int64_t* index, acc_t* weight) {
  int64_t count = 0;
  auto push = [&](int64_t pixel, acc_t w) {
    if (w == acc_t(0)) return;
    if (count > 0 && index[count - 1] == pixel) {
      weight[count - 1] += w;
    } else {
      index[count] = pixel;
      weight[count] = w;
      ++count;
    }
  };
  const acc_t inv_grid = acc_t(1) / static_cast<acc_t>(grid > 0 ? grid : 1);
  for (int64_t i = 0; i < grid; ++i) {
    int64_t low, high;
    acc_t w_low, w_high;
    if (!axis_taps(sample_coord(start, bin, p, i, grid), size, low, high, w_low, w_high)) continue;
    push(low, w_low * inv_grid);
    push(high, w_high * inv_grid);
  }
  return count;
}

// Fills RoI k's taps along one axis into its room (2 * grid entries per bin, from taps.offset[k])
// and sets taps.count[k]: each bin is first written at stride 2 * grid, then packed down to the
// stride of the longest bin (destinations never pass their sources) and padded.
template <typename acc_t>
void fill_axis(AxisTaps<acc_t>& taps, int64_t k, acc_t start, acc_t bin, int64_t grid, int64_t pooled, int64_t size) {
  int64_t* index = &taps.index[taps.offset[k]];
  acc_t* weight = &taps.weight[taps.offset[k]];
  const int64_t room = 2 * grid;
  int64_t longest = 0, lo = size, hi = -1;
  std::vector<int64_t> counts(pooled);
  for (int64_t p = 0; p < pooled; ++p) {
    counts[p] = bin_taps(start, bin, p, grid, size, index + p * room, weight + p * room);
    longest = std::max(longest, counts[p]);
    for (int64_t j = 0; j < counts[p]; ++j) {  // (an inverted aligned box samples right to left)
      lo = std::min(lo, index[p * room + j]);
      hi = std::max(hi, index[p * room + j]);
    }
  }
  for (int64_t p = 0; p < pooled; ++p) {
    for (int64_t j = 0; j < longest; ++j) {
      const bool real = j < counts[p];
      index[p * longest + j] = real ? index[p * room + j] : (hi >= lo ? lo : 0);  // padding stays in the span
      weight[p * longest + j] = real ? weight[p * room + j] : acc_t(0);
    }
  }
  taps.count[k] = longest;
  taps.lo[k] = lo;
  taps.hi[k] = hi;
}

// The taps of a RoI take room for two per sample along each axis: a RoI is refused when its
// samples along an axis (bins x samples per bin) exceed kMaxAxisSamples, as an adaptive grid over
// a RoI millions of pixels wide or a huge sampling_ratio would give, or when its grid is not
// finite (finite coordinates can still overflow once scaled).
constexpr double kMaxAxisSamples = 1 << 22;

template <typename acc_t>
void check_tabulable(const RoiGrid<acc_t>& g, int64_t k, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio) {
  TORCH_CHECK(std::isfinite(g.start_h) && std::isfinite(g.start_w) && std::isfinite(g.bin_h) && std::isfinite(g.bin_w),
              "roi_align: rois[", k, "] times its level's scale overflows ", c10::CppTypeToScalarType<acc_t>::value);
  // The adaptive grid is ceil(bin size): bounded through the bin sizes, as their conversion to a
  // sample count overflows for the largest.
  auto samples = [&](acc_t bin, int64_t pooled) {
    return (sampling_ratio > 0 ? static_cast<double>(sampling_ratio) : std::ceil(static_cast<double>(bin))) * pooled;
  };
  const double samples_h = samples(g.bin_h, pooled_h), samples_w = samples(g.bin_w, pooled_w);
  TORCH_CHECK(samples_h <= kMaxAxisSamples && samples_w <= kMaxAxisSamples, "roi_align: rois[", k, "] needs ",
              samples_h, " x ", samples_w, " samples (at most ", kMaxAxisSamples,
              " per axis): the box or sampling_ratio is too large");
}

template <typename acc_t>
RoiTaps<acc_t> tabulate_taps(const at::Tensor& rois, int64_t batch_size, at::ArrayRef<double> scales,
                             at::IntArrayRef heights, at::IntArrayRef widths, int64_t pooled_h, int64_t pooled_w,
                             int64_t sampling_ratio, bool aligned, const LevelMapper& mapper) {
  const int64_t num_rois = rois.size(0);
  const acc_t* roi_data = rois.const_data_ptr<acc_t>();
  RoiTaps<acc_t> t;
  t.level.resize(num_rois);
  t.batch.resize(num_rois);
  std::vector<RoiGrid<acc_t>> grids(num_rois);
  at::parallel_for(0, num_rois, 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const acc_t* roi = roi_data + k * 5;
      TORCH_CHECK(roi[0] >= 0 && roi[0] < static_cast<acc_t>(batch_size), "roi_align: rois[", k, ", 0] = ", roi[0],
                  " is not a batch index in [0, ", batch_size, ")");
      TORCH_CHECK(std::isfinite(roi[1]) && std::isfinite(roi[2]) && std::isfinite(roi[3]) && std::isfinite(roi[4]),
                  "roi_align: rois[", k, "] = [", roi[1], ", ", roi[2], ", ", roi[3], ", ", roi[4],
                  "] must have finite coordinates");
      t.batch[k] = static_cast<int64_t>(roi[0]);
      t.level[k] = mapper(roi + 1);
      grids[k] = roi_grid(roi + 1, static_cast<acc_t>(scales[t.level[k]]), pooled_h, pooled_w, sampling_ratio,
                          aligned);
      check_tabulable(grids[k], k, pooled_h, pooled_w, sampling_ratio);
    }
  });

  // A stable counting sort of the RoIs by (level, image).
  const int64_t groups = static_cast<int64_t>(scales.size()) * batch_size;
  t.group_begin.assign(groups + 1, 0);
  t.order.resize(num_rois);
  for (int64_t k = 0; k < num_rois; ++k) ++t.group_begin[t.level[k] * batch_size + t.batch[k] + 1];
  for (int64_t g = 0; g < groups; ++g) t.group_begin[g + 1] += t.group_begin[g];
  {
    std::vector<int64_t> fill(t.group_begin.begin(), t.group_begin.end() - 1);
    for (int64_t k = 0; k < num_rois; ++k) t.order[fill[t.level[k] * batch_size + t.batch[k]]++] = k;
  }

  // Room for two taps per sample, then the taps.
  for (AxisTaps<acc_t>* taps : {&t.rows, &t.cols}) {
    taps->offset.resize(num_rois + 1);
    taps->count.resize(num_rois);
    taps->lo.resize(num_rois);
    taps->hi.resize(num_rois);
  }
  t.rows.offset[0] = t.cols.offset[0] = 0;
  for (int64_t k = 0; k < num_rois; ++k) {
    t.rows.offset[k + 1] = t.rows.offset[k] + 2 * grids[k].grid_h * pooled_h;
    t.cols.offset[k + 1] = t.cols.offset[k] + 2 * grids[k].grid_w * pooled_w;
  }
  for (AxisTaps<acc_t>* taps : {&t.rows, &t.cols}) {
    taps->index.resize(taps->offset[num_rois]);
    taps->weight.resize(taps->offset[num_rois]);
  }
  at::parallel_for(0, num_rois, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const RoiGrid<acc_t>& g = grids[k];
      fill_axis(t.rows, k, g.start_h, g.bin_h, g.grid_h, pooled_h, heights[t.level[k]]);
      fill_axis(t.cols, k, g.start_w, g.bin_w, g.grid_w, pooled_w, widths[t.level[k]]);
    }
  });
  return t;
}

// The inner loops over the column taps of one bin, unrolled for the counts 2x2 sampling gives
// (COLS > 0) or run to `count` (COLS == 0).
template <int COLS, typename acc_t, typename scalar_t>
inline acc_t row_dot(const scalar_t* row, const TapView<acc_t>& cols, int64_t bin) {
  const int64_t n = COLS > 0 ? COLS : cols.count;
  const int64_t* index = cols.index + bin * cols.count;
  const acc_t* weight = cols.weight + bin * cols.count;
  acc_t sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += weight[j] * static_cast<acc_t>(row[index[j]]);
  return sum;
}

template <int COLS, typename acc_t>
inline void row_spread(acc_t* row, const TapView<acc_t>& cols, int64_t bin, acc_t grad) {
  const int64_t n = COLS > 0 ? COLS : cols.count;
  const int64_t* index = cols.index + bin * cols.count;
  const acc_t* weight = cols.weight + bin * cols.count;
  for (int64_t j = 0; j < n; ++j) row[index[j]] += grad * weight[j];
}

// Two ways to pool RoI k from one channel plane into its PH x PW bins. Sparse: every bin sums
// its row taps x column taps. Dense, for RoIs whose column taps cover a narrow span of pixels
// (every RoI that FPN level mapping sends to its level): per output row, first blend the row taps
// into one span-long row (contiguous, vectorised), then each bin sums its column taps from it.
template <int COLS, typename scalar_t, typename acc_t>
void pool_roi_sparse(const RoiTaps<acc_t>& t, int64_t k, const scalar_t* plane, int64_t width, int64_t pooled_h,
                     int64_t pooled_w, scalar_t* out_bins) {
  const TapView<acc_t> row_taps = t.rows.of(k), col_taps = t.cols.of(k);
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      acc_t sum = 0;
      for (int64_t i = ph * row_taps.count; i < (ph + 1) * row_taps.count; ++i) {
        sum += row_taps.weight[i] * row_dot<COLS>(plane + row_taps.index[i] * width, col_taps, pw);
      }
      out_bins[ph * pooled_w + pw] = static_cast<scalar_t>(sum);
    }
  }
}

template <int COLS, typename scalar_t, typename acc_t>
void pool_roi_dense(const RoiTaps<acc_t>& t, int64_t k, const scalar_t* plane, int64_t width, int64_t pooled_h,
                    int64_t pooled_w, scalar_t* out_bins, acc_t* __restrict__ span_row) {
  const TapView<acc_t> row_taps = t.rows.of(k), col_taps = t.cols.of(k);
  const int64_t lo = t.cols.lo[k], span = t.cols.hi[k] - lo + 1;
  const acc_t* row_at = span_row - lo;  // row_at[x] for x in [lo, hi]
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    std::fill(span_row, span_row + span, acc_t(0));
    for (int64_t i = ph * row_taps.count; i < (ph + 1) * row_taps.count; ++i) {
      const scalar_t* __restrict__ source = plane + row_taps.index[i] * width + lo;
      const acc_t w = row_taps.weight[i];
      for (int64_t x = 0; x < span; ++x) span_row[x] += w * static_cast<acc_t>(source[x]);
    }
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      out_bins[ph * pooled_w + pw] = static_cast<scalar_t>(row_dot<COLS>(row_at, col_taps, pw));
    }
  }
}

// Adds RoI k's share of the gradient of its PH x PW bins to one channel plane: the transposes of
// the two pooling ways above.
template <int COLS, typename scalar_t, typename acc_t>
void spread_roi_sparse(const RoiTaps<acc_t>& t, int64_t k, const scalar_t* grad_bins, int64_t pooled_h,
                       int64_t pooled_w, acc_t* plane, int64_t width) {
  const TapView<acc_t> row_taps = t.rows.of(k), col_taps = t.cols.of(k);
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      const acc_t g = static_cast<acc_t>(grad_bins[ph * pooled_w + pw]);
      if (g == acc_t(0)) continue;
      for (int64_t i = ph * row_taps.count; i < (ph + 1) * row_taps.count; ++i) {
        row_spread<COLS>(plane + row_taps.index[i] * width, col_taps, pw, g * row_taps.weight[i]);
      }
    }
  }
}

template <int COLS, typename scalar_t, typename acc_t>
void spread_roi_dense(const RoiTaps<acc_t>& t, int64_t k, const scalar_t* grad_bins, int64_t pooled_h,
                      int64_t pooled_w, acc_t* plane, int64_t width, acc_t* __restrict__ span_row) {
  const TapView<acc_t> row_taps = t.rows.of(k), col_taps = t.cols.of(k);
  const int64_t lo = t.cols.lo[k], span = t.cols.hi[k] - lo + 1;
  acc_t* row_at = span_row - lo;
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    std::fill(span_row, span_row + span, acc_t(0));
    bool any = false;
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      const acc_t g = static_cast<acc_t>(grad_bins[ph * pooled_w + pw]);
      if (g == acc_t(0)) continue;
      any = true;
      row_spread<COLS>(row_at, col_taps, pw, g);
    }
    if (!any) continue;
    for (int64_t i = ph * row_taps.count; i < (ph + 1) * row_taps.count; ++i) {
      acc_t* __restrict__ target = plane + row_taps.index[i] * width + lo;
      const acc_t w = row_taps.weight[i];
      for (int64_t x = 0; x < span; ++x) target[x] += w * span_row[x];
    }
  }
}

// Whether the dense way pays for RoI k. Per output row it costs about (row taps + 1) x span
// (blending and clearing the span row) + PW x column taps, against PW x row taps x column taps
// for the sparse way. The backward's sparse way is a scatter of dependent read-modify-writes, so
// there dense pays up to a span four times the column taps (measured on a 2-core EPYC).
template <typename acc_t>
bool dense_pays(const RoiTaps<acc_t>& t, int64_t k, int64_t pooled_w, bool backward) {
  const int64_t span = t.cols.hi[k] - t.cols.lo[k] + 1, ny = t.rows.count[k], nx = t.cols.count[k];
  if (span <= 0) return false;
  if (backward) return span <= 4 * pooled_w * nx;
  return (ny + 1) * span + pooled_w * nx < pooled_w * ny * nx;
}

template <typename acc_t>
int64_t widest_span(const RoiTaps<acc_t>& t) {
  int64_t widest = 0;
  for (size_t k = 0; k < t.cols.lo.size(); ++k) widest = std::max(widest, t.cols.hi[k] - t.cols.lo[k] + 1);
  return widest;
}

// Calls fn with the column-tap count as a compile-time constant where it is a common one.
template <typename Fn>
void with_cols(int64_t count, Fn&& fn) {
  switch (count) {
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    default: fn(std::integral_constant<int, 0>{}); break;
  }
}

template <typename scalar_t>
void forward_kernel(const std::vector<at::Tensor>& levels, const at::Tensor& rois, at::ArrayRef<double> scales,
                    at::IntArrayRef heights, at::IntArrayRef widths, int64_t pooled_h, int64_t pooled_w,
                    int64_t sampling_ratio, bool aligned, const LevelMapper& mapper, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch_size = levels[0].size(0), channels = levels[0].size(1);
  const int64_t num_levels = static_cast<int64_t>(levels.size()), bins = pooled_h * pooled_w;
  const RoiTaps<acc_t> t = tabulate_taps<acc_t>(rois, batch_size, scales, heights, widths, pooled_h, pooled_w,
                                                sampling_ratio, aligned, mapper);
  std::vector<const scalar_t*> level_data;
  for (const at::Tensor& level : levels) level_data.push_back(level.const_data_ptr<scalar_t>());
  scalar_t* out = output.mutable_data_ptr<scalar_t>();

  // Parallel over channels, so that one channel plane of one image stays in cache while every RoI
  // of that image reads it: the input crosses memory once.
  const int64_t widest = widest_span(t);
  at::parallel_for(0, channels, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<acc_t> span_row(widest);
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t l = 0; l < num_levels; ++l) {
        const int64_t width = widths[l], plane_size = heights[l] * width;
        for (int64_t n = 0; n < batch_size; ++n) {
          const scalar_t* plane = level_data[l] + (n * channels + c) * plane_size;
          const int64_t group = l * batch_size + n;
          for (int64_t i = t.group_begin[group]; i < t.group_begin[group + 1]; ++i) {
            const int64_t k = t.order[i];
            scalar_t* out_bins = out + (k * channels + c) * bins;
            with_cols(t.cols.count[k], [&](auto cols) {
              constexpr int kCols = decltype(cols)::value;
              if (dense_pays(t, k, pooled_w, /*backward=*/false)) {
                pool_roi_dense<kCols>(t, k, plane, width, pooled_h, pooled_w, out_bins, span_row.data());
              } else {
                pool_roi_sparse<kCols>(t, k, plane, width, pooled_h, pooled_w, out_bins);
              }
            });
          }
        }
      }
    }
  });
}

// The forward over NHWC maps: every bin of RoI k is a sum of its taps' channel vectors, each
// weighted by its row weight times its column weight, gathered bin-major into `bin_sums`
// (PH * PW * C) and then transposed into the RoI's (C, PH, PW) output. A bin sums kPairs
// LanePairs of channels at a time over all its taps in registers (pool_bin_lanes: a sum kept in
// memory makes every tap wait on the last one's store), then single pairs, then the channels left
// over one by one.
template <int64_t kPairs, typename scalar_t, typename acc_t>
[[gnu::always_inline]] inline void pool_bin_lanes(const TapView<acc_t>& row_taps, const TapView<acc_t>& col_taps,
                                                  int64_t ph, int64_t pw, const scalar_t* image, int64_t row_stride,
                                                  int64_t channels, acc_t* bin_sum) {
  using Pair = sfpn::cpu::LanePair<scalar_t, acc_t>;
  sfpn::cpu::lanes_t<acc_t> sum[2 * kPairs] = {}, first, second;
  for (int64_t i = ph * row_taps.count; i < (ph + 1) * row_taps.count; ++i) {
    const scalar_t* row = image + row_taps.index[i] * row_stride;
    for (int64_t j = pw * col_taps.count; j < (pw + 1) * col_taps.count; ++j) {
      const acc_t w = row_taps.weight[i] * col_taps.weight[j];
      for (int64_t p = 0; p < kPairs; ++p) {
        Pair::load(row + col_taps.index[j] * channels + p * Pair::channels, first, second);
        sum[2 * p] += w * first;
        sum[2 * p + 1] += w * second;
      }
    }
  }
  for (int64_t p = 0; p < kPairs; ++p) Pair::store(sum[2 * p], sum[2 * p + 1], bin_sum + p * Pair::channels);
}

template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void pool_roi_channels_last(const TapView<acc_t>& row_taps, const TapView<acc_t>& col_taps,
                                               const scalar_t* image, int64_t width, int64_t channels,
                                               int64_t pooled_h, int64_t pooled_w, acc_t* bin_sums,
                                               scalar_t* out_roi) {
  constexpr int64_t pair = sfpn::cpu::LanePair<scalar_t, acc_t>::channels, kPairs = 2;
  const int64_t bins = pooled_h * pooled_w, row_stride = width * channels;
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      acc_t* __restrict__ bin_sum = bin_sums + (ph * pooled_w + pw) * channels;
      int64_t c = 0;
      for (; c + kPairs * pair <= channels; c += kPairs * pair) {
        pool_bin_lanes<kPairs>(row_taps, col_taps, ph, pw, image + c, row_stride, channels, bin_sum + c);
      }
      for (; c + pair <= channels; c += pair) {
        pool_bin_lanes<1>(row_taps, col_taps, ph, pw, image + c, row_stride, channels, bin_sum + c);
      }
      if (c == channels) continue;
      std::fill(bin_sum + c, bin_sum + channels, acc_t(0));
      for (int64_t i = ph * row_taps.count; i < (ph + 1) * row_taps.count; ++i) {
        const scalar_t* row = image + row_taps.index[i] * row_stride;
        for (int64_t j = pw * col_taps.count; j < (pw + 1) * col_taps.count; ++j) {
          const acc_t w = row_taps.weight[i] * col_taps.weight[j];
          const scalar_t* __restrict__ pixel = row + col_taps.index[j] * channels;
          for (int64_t r = c; r < channels; ++r) bin_sum[r] += w * static_cast<acc_t>(pixel[r]);
        }
      }
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t bin = 0; bin < bins; ++bin) {
      out_roi[c * bins + bin] = static_cast<scalar_t>(bin_sums[bin * channels + c]);
    }
  }
}

template <typename scalar_t>
void forward_kernel_channels_last(const std::vector<at::Tensor>& levels, const at::Tensor& rois,
                                  at::ArrayRef<double> scales, at::IntArrayRef heights, at::IntArrayRef widths,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                  const LevelMapper& mapper, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch_size = levels[0].size(0), channels = levels[0].size(1), bins = pooled_h * pooled_w;
  const RoiTaps<acc_t> t = tabulate_taps<acc_t>(rois, batch_size, scales, heights, widths, pooled_h, pooled_w,
                                                sampling_ratio, aligned, mapper);
  std::vector<const scalar_t*> level_data;
  for (const at::Tensor& level : levels) level_data.push_back(level.const_data_ptr<scalar_t>());
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, bins * channels));
  at::parallel_for(0, rois.size(0), grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> bin_sums(bins * channels);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t level = t.level[k], width = widths[level];
      const scalar_t* image = level_data[level] + t.batch[k] * heights[level] * width * channels;
      pool_roi_channels_last(t.rows.of(k), t.cols.of(k), image, width, channels, pooled_h, pooled_w,
                             bin_sums.data(), out + k * channels * bins);
    }
  });
}

// What the backward kernels read and write: the RoIs' taps, their gradient (K, C, PH, PW) and
// every level's map (N, C, H_l, W_l) in the layout the kernel writes.
template <typename scalar_t>
struct BackwardPlan {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t channels, pooled_h, pooled_w, bins, batch_size, largest_plane = 0;
  at::IntArrayRef heights, widths;
  RoiTaps<acc_t> t;
  const scalar_t* grad;
  std::vector<scalar_t*> out;  // per level

  BackwardPlan(const at::Tensor& grad_, const at::Tensor& rois, at::ArrayRef<double> scales, at::IntArrayRef heights_,
               at::IntArrayRef widths_, int64_t sampling_ratio, bool aligned, const LevelMapper& mapper,
               std::vector<at::Tensor>& grad_levels)
      : channels(grad_.size(1)), pooled_h(grad_.size(2)), pooled_w(grad_.size(3)), bins(pooled_h * pooled_w),
        batch_size(grad_levels[0].size(0)), heights(heights_), widths(widths_),
        t(tabulate_taps<acc_t>(rois, batch_size, scales, heights, widths, pooled_h, pooled_w, sampling_ratio, aligned,
                               mapper)),
        grad(grad_.const_data_ptr<scalar_t>()) {
    for (size_t l = 0; l < grad_levels.size(); ++l) {
      largest_plane = std::max(largest_plane, heights[l] * widths[l]);
      out.push_back(grad_levels[l].mutable_data_ptr<scalar_t>());
    }
  }
  int64_t num_levels() const { return static_cast<int64_t>(out.size()); }
};

template <typename scalar_t>
void backward_kernel(const BackwardPlan<scalar_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiTaps<acc_t>& t = p.t;

  const int64_t widest = widest_span(t);
  at::parallel_for(0, p.channels, 1, [&](int64_t c_begin, int64_t c_end) {
    // fp16/bf16 gradients accumulate in a float plane, fp32/fp64 ones in the output itself.
    constexpr bool accumulate_in_output = std::is_same_v<scalar_t, acc_t>;
    std::vector<acc_t> buffer(accumulate_in_output ? 0 : p.largest_plane);
    std::vector<acc_t> span_row(widest);
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t l = 0; l < p.num_levels(); ++l) {
        const int64_t width = p.widths[l], plane_size = p.heights[l] * width;
        for (int64_t n = 0; n < p.batch_size; ++n) {
          scalar_t* out_plane = p.out[l] + (n * p.channels + c) * plane_size;
          acc_t* plane;
          if constexpr (accumulate_in_output) {
            plane = out_plane;
          } else {
            plane = buffer.data();
          }
          std::fill(plane, plane + plane_size, acc_t(0));
          const int64_t group = l * p.batch_size + n;
          for (int64_t i = t.group_begin[group]; i < t.group_begin[group + 1]; ++i) {
            const int64_t k = t.order[i];
            const scalar_t* grad_bins = p.grad + (k * p.channels + c) * p.bins;
            with_cols(t.cols.count[k], [&](auto cols) {
              constexpr int kCols = decltype(cols)::value;
              if (dense_pays(t, k, p.pooled_w, /*backward=*/true)) {
                spread_roi_dense<kCols>(t, k, grad_bins, p.pooled_h, p.pooled_w, plane, width, span_row.data());
              } else {
                spread_roi_sparse<kCols>(t, k, grad_bins, p.pooled_h, p.pooled_w, plane, width);
              }
            });
          }
          if constexpr (!accumulate_in_output) {
            sfpn::cpu::convert_rows(plane, plane_size, out_plane, plane_size, 1, plane_size);
          }
        }
      }
    }
  });
}

// The NHWC backward works pixel by pixel: every pixel a RoI reads gets the RoI's gradient in one
// read-modify-write of its channel block, summed in registers over the bins that read it. Adding
// each tap's share in turn instead (the transpose of pool_roi_channels_last) made a pixel's block
// cross memory once per tap, ~9 times per bin at 2x2 samples, each update waiting on the last
// one's store. A bin's weight is a row weight times a column weight, so the sum splits in two:
// first, per bin row, the column sums (sum over the bins of the row reading column x of
// wx * grad), then per pixel (y, x) the sum over the bin rows reading row y of wy * column sum.
// For that each axis's taps are turned around: per RoI, its distinct pixels in increasing order
// and, for each, the bins that read it with their weights.
template <typename acc_t>
struct PixelView {
  int64_t count;         // distinct pixels
  const int64_t* pixel;  // [count], increasing
  const int64_t* end;    // pixel u's readers are entries [u ? end[u - 1] : 0, end[u])
  const int64_t* bin;    // per entry: the bin reading the pixel
  const acc_t* weight;   // per entry: its weight
};

template <typename acc_t>
struct AxisPixels {
  std::vector<int64_t> offset, count;  // per RoI; a RoI's entries fill the room its AxisTaps has
  std::vector<int64_t> pixel, end, bin;
  std::vector<acc_t> weight;

  PixelView<acc_t> of(int64_t k) const {
    return {count[k], &pixel[offset[k]], &end[offset[k]], &bin[offset[k]], &weight[offset[k]]};
  }
  int64_t widest() const { return count.empty() ? 0 : *std::max_element(count.begin(), count.end()); }
};

// Every RoI's taps along one axis (`pooled` bins) turned around.
template <typename acc_t>
AxisPixels<acc_t> pixels_of(const AxisTaps<acc_t>& taps, int64_t pooled) {
  struct Entry {
    int64_t pixel, bin;
    acc_t weight;
  };
  const int64_t num_rois = static_cast<int64_t>(taps.count.size());
  AxisPixels<acc_t> a;
  a.offset = taps.offset;
  a.count.resize(num_rois);
  a.pixel.resize(taps.index.size());
  a.end.resize(taps.index.size());
  a.bin.resize(taps.index.size());
  a.weight.resize(taps.index.size());
  at::parallel_for(0, num_rois, 64, [&](int64_t begin, int64_t end) {
    std::vector<Entry> entries;
    for (int64_t k = begin; k < end; ++k) {
      const TapView<acc_t> t = taps.of(k);
      entries.clear();
      for (int64_t p = 0; p < pooled; ++p) {
        for (int64_t j = p * t.count; j < (p + 1) * t.count; ++j) {
          if (t.weight[j] != acc_t(0)) entries.push_back({t.index[j], p, t.weight[j]});  // not the padding
        }
      }
      // Stable: a pixel's readers stay in bin order.
      std::stable_sort(entries.begin(), entries.end(), [](const Entry& x, const Entry& y) { return x.pixel < y.pixel; });
      const int64_t room = a.offset[k];
      int64_t u = -1;
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i == 0 || entries[i].pixel != entries[i - 1].pixel) a.pixel[room + ++u] = entries[i].pixel;
        a.bin[room + i] = entries[i].bin;
        a.weight[room + i] = entries[i].weight;
        a.end[room + u] = static_cast<int64_t>(i) + 1;
      }
      a.count[k] = u + 1;
    }
  });
  return a;
}

// kBlock channels of NHWC gradient at a time: 32 floats, two AVX-512 vectors, and a bf16 block of
// the map is one 64-byte line.
constexpr int64_t kBlock = 32;

// Adds RoI k's gradient for one block of `block` channels, (block, PH, PW) at `roi_grad` with a
// channel stride of PH * PW, to `plane`, (H, W, kBlock). Scratch: `bin_grads` (PH * PW, kBlock),
// the gradient bin-major with the lanes past `block` zero, and `col_sums` (PH, cols.count, kBlock).
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void spread_roi_channels_last(const PixelView<acc_t>& rows, const PixelView<acc_t>& cols,
                                                 const scalar_t* roi_grad, int64_t block, int64_t pooled_h,
                                                 int64_t pooled_w, acc_t* bin_grads, acc_t* col_sums, acc_t* plane,
                                                 int64_t width) {
  using Vector = sfpn::cpu::lanes_t<acc_t>;
  constexpr int64_t lanes = sfpn::cpu::Lanes<acc_t>::size, vectors = kBlock / lanes;
  const int64_t bins = pooled_h * pooled_w, columns = cols.count;
  for (int64_t bin = 0; bin < bins; ++bin) {
    for (int64_t c = block; c < kBlock; ++c) bin_grads[bin * kBlock + c] = acc_t(0);
  }
  for (int64_t c = 0; c < block; ++c) {
    for (int64_t bin = 0; bin < bins; ++bin) bin_grads[bin * kBlock + c] = static_cast<acc_t>(roi_grad[c * bins + bin]);
  }
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    const acc_t* bin_row = bin_grads + ph * pooled_w * kBlock;
    for (int64_t u = 0, e = 0; u < columns; ++u) {
      Vector sum[vectors] = {};
      for (; e < cols.end[u]; ++e) {
        const acc_t* g = bin_row + cols.bin[e] * kBlock;
        for (int64_t v = 0; v < vectors; ++v) {
          Vector x;
          std::memcpy(&x, g + v * lanes, sizeof x);
          sum[v] += cols.weight[e] * x;
        }
      }
      acc_t* col_sum = col_sums + (ph * columns + u) * kBlock;
      for (int64_t v = 0; v < vectors; ++v) std::memcpy(col_sum + v * lanes, &sum[v], sizeof(Vector));
    }
  }
  for (int64_t r = 0, e = 0; r < rows.count; ++r) {
    const int64_t first = e, last = rows.end[r];
    e = last;
    acc_t* row = plane + rows.pixel[r] * width * kBlock;
    for (int64_t u = 0; u < columns; ++u) {
      acc_t* pixel = row + cols.pixel[u] * kBlock;
      Vector sum[vectors];
      for (int64_t v = 0; v < vectors; ++v) std::memcpy(&sum[v], pixel + v * lanes, sizeof(Vector));
      for (int64_t i = first; i < last; ++i) {
        const acc_t* s = col_sums + (rows.bin[i] * columns + u) * kBlock;
        for (int64_t v = 0; v < vectors; ++v) {
          Vector x;
          std::memcpy(&x, s + v * lanes, sizeof x);
          sum[v] += rows.weight[i] * x;
        }
      }
      for (int64_t v = 0; v < vectors; ++v) std::memcpy(pixel + v * lanes, &sum[v], sizeof(Vector));
    }
  }
}

// Each thread owns blocks of kBlock channels; per block and (level, image) it adds the RoIs'
// gradients, in index order, into a compact (H, W, kBlock) plane of acc_t, then lands the block's
// channels in the map. Compact for every dtype: in place in an fp32 map, a block's pixels lie C
// channels apart, and at C = 256 that made the fp32 backward 1.3x slower (benchmarks/RESULTS.md,
// 2026-12-04, night).
template <typename scalar_t>
void backward_kernel_channels_last(const BackwardPlan<scalar_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiTaps<acc_t>& t = p.t;
  const AxisPixels<acc_t> rows = pixels_of(t.rows, p.pooled_h), cols = pixels_of(t.cols, p.pooled_w);

  const int64_t blocks = (p.channels + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    std::vector<acc_t> plane(p.largest_plane * kBlock);
    std::vector<acc_t> bin_grads(p.bins * kBlock);
    std::vector<acc_t> col_sums(p.pooled_h * cols.widest() * kBlock);
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t c0 = b * kBlock, block = std::min(kBlock, p.channels - c0);
      for (int64_t l = 0; l < p.num_levels(); ++l) {
        const int64_t width = p.widths[l], plane_size = p.heights[l] * width;
        for (int64_t n = 0; n < p.batch_size; ++n) {
          std::fill_n(plane.data(), plane_size * kBlock, acc_t(0));
          const int64_t group = l * p.batch_size + n;
          for (int64_t i = t.group_begin[group]; i < t.group_begin[group + 1]; ++i) {
            const int64_t k = t.order[i];
            spread_roi_channels_last(rows.of(k), cols.of(k), p.grad + (k * p.channels + c0) * p.bins, block,
                                     p.pooled_h, p.pooled_w, bin_grads.data(), col_sums.data(), plane.data(), width);
          }
          sfpn::cpu::convert_rows(plane.data(), kBlock, p.out[l] + n * plane_size * p.channels + c0, p.channels,
                                  plane_size, block);
        }
      }
    }
  });
}

at::Tensor forward(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_h,
                   int64_t pooled_w, int64_t sampling_ratio, bool aligned, const LevelMapper& mapper) {
  const bool nhwc = checks::is_channels_last(levels[0]);
  ForwardArgs args = forward_args(levels, rois, pooled_h, pooled_w, nhwc);
  if (args.output.numel() == 0) return args.output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.output.scalar_type(), "sfpn::roi_align", [&] {
    auto* kernel = nhwc ? &forward_kernel_channels_last<scalar_t> : &forward_kernel<scalar_t>;
    kernel(args.levels, args.rois, scales, args.heights, args.widths, pooled_h, pooled_w, sampling_ratio, aligned,
           mapper, args.output);
  });
  return args.output;
}

// Deterministic whatever `deterministic` says: each thread owns whole channel planes (or blocks
// of NHWC channels) and visits the RoIs in a fixed order.
std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales,
                                 int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
                                 int64_t sampling_ratio, bool aligned, const LevelMapper& mapper,
                                 bool /*deterministic*/, bool channels_last) {
  const BackwardArgs args = backward_args(grad, rois);
  const auto layout = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> grad_levels;
  for (size_t l = 0; l < scales.size(); ++l) {
    grad_levels.push_back(at::empty({batch_size, channels, heights[l], widths[l]}, grad.options(), layout));
  }
  if (channels == 0 || batch_size == 0) return grad_levels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::roi_align_backward", [&] {
    const BackwardPlan<scalar_t> plan(args.grad, args.rois, scales, heights, widths, sampling_ratio, aligned, mapper,
                                      grad_levels);
    (channels_last ? backward_kernel_channels_last<scalar_t> : backward_kernel<scalar_t>)(plan);
  });
  return grad_levels;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  register_roi_align_ops<forward, backward>(m);
}

}  // namespace sfpn::roi_align::cpu
