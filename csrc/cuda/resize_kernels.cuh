// Device building blocks of the fused resize ops (upsample_add, semantic_fuse), on top of the
// index arithmetic shared with the CPU kernels (resize_index.h). Planes are contiguous (H, W).
// sample() and adjoint() are host-callable too, so that they can be checked without a GPU.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

#include "resize_index.h"

namespace sfpn::resize::cuda {

// resize(plane) at the output whose row and column taps are given.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t sample(
    const scalar_t* __restrict__ plane, int64_t in_w, const Taps<acc_t>& row, const Taps<acc_t>& col) {
  const scalar_t* r0 = plane + row.index0 * in_w;
  const acc_t top0 = static_cast<acc_t>(r0[col.index0]);
  if (row.weight1 == acc_t(0) && col.weight1 == acc_t(0)) return top0;  // nearest, or an exact hit
  const scalar_t* r1 = plane + row.index1 * in_w;
  const acc_t upper = col.weight0 * top0 + col.weight1 * static_cast<acc_t>(r0[col.index1]);
  const acc_t lower =
      col.weight0 * static_cast<acc_t>(r1[col.index0]) + col.weight1 * static_cast<acc_t>(r1[col.index1]);
  return row.weight0 * upper + row.weight1 * lower;
}

// The adjoint of resize(plane) at source (i, j): the weighted sum of the gradient over the
// output window that reads it (contiguous per tap). `grad` is one (H, W) output plane.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t adjoint(
    const scalar_t* __restrict__ grad, const Axis<acc_t>& rows, const Axis<acc_t>& cols, int64_t i, int64_t j) {
  const int64_t width = cols.out_size;
  Range col_range[2];
  for (int tap = 0; tap < cols.taps(); ++tap) col_range[tap] = cols.tap_range(tap, j);
  acc_t total = 0;
  for (int row_tap = 0; row_tap < rows.taps(); ++row_tap) {
    const Range row_range = rows.tap_range(row_tap, i);
    for (int64_t y = row_range.begin; y < row_range.end; ++y) {
      const scalar_t* line = grad + y * width;
      acc_t line_sum = 0;
      for (int col_tap = 0; col_tap < cols.taps(); ++col_tap) {
        for (int64_t x = col_range[col_tap].begin; x < col_range[col_tap].end; ++x) {
          const acc_t value = static_cast<acc_t>(line[x]);
          line_sum += cols.linear ? cols.weight(col_tap, x) * value : value;
        }
      }
      total += rows.linear ? rows.weight(row_tap, y) * line_sum : line_sum;
    }
  }
  return total;
}

// Whether flat indices into a tensor of n elements fit 32-bit arithmetic (the faster kernels).
inline bool fits_int32(int64_t n) {
  return n < std::numeric_limits<int32_t>::max();
}

}  // namespace sfpn::resize::cuda
