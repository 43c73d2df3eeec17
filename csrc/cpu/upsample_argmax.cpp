// sfpn::upsample_argmax on the CPU: the class map of logits (K, h, w) bilinearly upsampled to
// (H, W), without the (K, H, W) upsampled logits; argument checks and the operator are shared with
// CUDA in upsample_argmax.h.
//
// Plan. The threads split the output rows, each a contiguous run, and walk a tile of output
// columns at a time. A source row blended along W for every class, (K, tile), is kept for the
// two most recent source rows, so each one is blended about once per tile; an output row is then,
// class by class, the row-blend of two of them, kept in a running maximum and argmax per column:
// loops over contiguous columns that vectorise, over (2 K + 2) tile-wide buffers that stay in
// cache. Memory: those buffers per thread, never K * H * W.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/vector_clones.h"
#include "resize_index.h"
#include "upsample_argmax.h"

namespace sfpn::upsample_argmax::cpu {
namespace {

// Output columns per tile: 2 K + 2 tile-wide float rows stay within L2 for K up to ~180.
constexpr int64_t kTileWidth = 256;
// Class-pixel evaluations (~0.5 ns each) per parallel task at least: smaller maps run on one
// thread, as waking a second one costs more (on a loaded machine, milliseconds).
constexpr int64_t kMinTaskWork = int64_t(1) << 20;

// What the threads share: the logits (K, h, w), the tile width, the row axis, the output
// columns' taps, the output (crop_h, crop_w).
template <typename scalar_t, typename acc_t>
struct Plan {
  const scalar_t* logits;
  int64_t classes, in_w, plane, crop_w, tile;
  resize::Axis<acc_t> rows;
  const resize::Taps<acc_t>* cols;
  int64_t* out;
};

// Output rows [begin, end) of the class map. Scratch (allocated by the caller: a clone cannot
// throw, vector_clones.h): `cache` 2 K tile-wide rows, `best` and `best_class` one each.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void argmax_rows(const Plan<scalar_t, acc_t>& plan, int64_t begin, int64_t end, acc_t* cache,
                                    acc_t* best, int32_t* best_class) {
  const int64_t classes = plan.classes, in_w = plan.in_w, plane = plan.plane, crop_w = plan.crop_w;
  const scalar_t* logits = plan.logits;
  const int64_t tile = plan.tile;
  for (int64_t x0 = 0; x0 < crop_w; x0 += tile) {
    const int64_t count = std::min(tile, crop_w - x0);
    int64_t cached[2] = {-1, -1};  // which source row each slot holds
    int recent = 1;                // the slot used last: never evicted by the next request
    // Source row `y` blended along W at this tile's columns, for every class: (K, tile).
    auto blended_row = [&](int64_t y) -> const acc_t* {
      for (int slot = 0; slot < 2; ++slot) {
        if (cached[slot] == y) {
          recent = slot;
          return cache + slot * classes * tile;
        }
      }
      recent = 1 - recent;
      cached[recent] = y;
      acc_t* dst = cache + recent * classes * tile;
      const resize::Taps<acc_t>* taps = plan.cols + x0;
      for (int64_t k = 0; k < classes; ++k) {
        const scalar_t* src = logits + k * plane + y * in_w;
        acc_t* row = dst + k * tile;
        for (int64_t x = 0; x < count; ++x) {
          const resize::Taps<acc_t>& t = taps[x];
          row[x] = t.weight0 * static_cast<acc_t>(src[t.index0]) + t.weight1 * static_cast<acc_t>(src[t.index1]);
        }
      }
      return dst;
    };

    for (int64_t y = begin; y < end; ++y) {
      const resize::Taps<acc_t> row = plan.rows.taps_of(y);
      const acc_t* upper = blended_row(row.index0);
      const acc_t* lower = blended_row(row.index1);
      const acc_t wu = row.weight0, wl = row.weight1;
      acc_t* __restrict__ top = best;
      int32_t* __restrict__ top_class = best_class;
      for (int64_t x = 0; x < count; ++x) {
        top[x] = wu * upper[x] + wl * lower[x];
        top_class[x] = 0;
      }
      for (int64_t k = 1; k < classes; ++k) {
        const acc_t* __restrict__ u = upper + k * tile;
        const acc_t* __restrict__ l = lower + k * tile;
        const int32_t label = static_cast<int32_t>(k);
        // Branch-free, so that it vectorises: both buffers are written at every column.
        for (int64_t x = 0; x < count; ++x) {
          const acc_t value = wu * u[x] + wl * l[x];
          const bool wins = beats(value, top[x]);
          top[x] = wins ? value : top[x];
          top_class[x] = wins ? label : top_class[x];
        }
      }
      int64_t* dst = plan.out + y * crop_w + x0;
      for (int64_t x = 0; x < count; ++x) dst[x] = top_class[x];
    }
  }
}

template <typename scalar_t, typename acc_t>
void upsample_argmax_kernel(const scalar_t* logits, int64_t classes, int64_t in_h, int64_t in_w, int64_t height,
                            int64_t width, int64_t* out, int64_t crop_h, int64_t crop_w) {
  const resize::Axis<acc_t> col_axis(in_w, width, /*linear=*/true, /*align_corners=*/false);
  std::vector<resize::Taps<acc_t>> cols(crop_w);  // read K times per source row: tabulated
  for (int64_t x = 0; x < crop_w; ++x) cols[x] = col_axis.taps_of(x);
  const int64_t tile = std::min(kTileWidth, crop_w);
  const Plan<scalar_t, acc_t> plan{logits, classes, in_w, in_h * in_w, crop_w, tile,
                                   resize::Axis<acc_t>(in_h, height, /*linear=*/true, /*align_corners=*/false),
                                   cols.data(), out};
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / (classes * crop_w));
  at::parallel_for(0, crop_h, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> cache(2 * classes * tile), best(tile);
    std::vector<int32_t> best_class(tile);
    argmax_rows(plan, begin, end, cache.data(), best.data(), best_class.data());
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
