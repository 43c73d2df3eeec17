// CPU building blocks of the fused resize ops (upsample_add, semantic_fuse, resize_sum): per-axis
// index and weight tables, the forward `out = lateral + resize(top)` over rows of planes, and the
// adjoint of the resize as a gather (each source row sums the output rows that read it).
//
// Layout: the planar kernels take contiguous stacks of planes (N * C, H, W); their channels_last
// twins (at the end) take (N, H, W, C) tensors, each tap a vector of C contiguous channels, with
// the same tables and the same arithmetic in the same order.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/recycled_memory.h"
#include "cpu/vector_clones.h"
#include "resize_index.h"

namespace sfpn::resize::cpu {

// A fresh output tensor, in memory recycled from earlier calls when it is large: see
// recycled_memory.h for why (the page faults of fresh multi-megabyte outputs cost the FPN
// top-down step more than its arithmetic).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat layout) {
  return memory::empty_recycled(sizes, options, layout);
}

// Whether an engine's tensors are NHWC: resize.h hands those of one resize over in one layout
// (engine_layout), so either each is channels_last-contiguous or each is contiguous. A tensor
// whose two layouts coincide (C == 1, or H == W == 1) is both, and either kernel reads it alike.
inline bool is_nhwc(at::TensorList tensors) {
  return std::all_of(tensors.begin(), tensors.end(),
                     [](const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); });
}

// One axis of the resize, tabulated: the forward taps of every output and the adjoint ranges of
// every source, so that the inner loops only load.
template <typename acc_t>
struct AxisTable {
  Axis<acc_t> axis;
  std::vector<int64_t> index0, index1;  // (out,)
  std::vector<acc_t> weight0, weight1;  // (out,)
  std::vector<int64_t> begin[2], end[2];  // (in,) per tap: the outputs reading each source
  // 2 when some output blends two sources; 1 for nearest and for bilinear axes that only hit
  // sources exactly (the same size, say), whose single tap then weighs 1.
  int taps;
  // Nearest 2x, FPN's default step (index0(o) == o / 2 exactly): loops that vectorise.
  bool doubling;
  // Bilinear 2x without corner alignment (semantic_fuse's finest level): inside the two edge
  // outputs, outputs 2j+1 and 2j+2 both blend sources j and j+1, with one weight pair per
  // parity. Checked on the table itself, so the fast loops compute exactly what it says.
  bool blended_doubling;

  AxisTable(int64_t in, int64_t out, bool linear, bool align_corners)
      : axis(in, out, linear, align_corners),
        index0(out), index1(out), weight0(out), weight1(out),
        taps(1), doubling(!linear && out == 2 * in), blended_doubling(false) {
    for (int64_t o = 0; o < out; ++o) {
      const Taps<acc_t> t = axis.taps_of(o);
      index0[o] = t.index0;
      index1[o] = t.index1;
      weight0[o] = t.weight0;
      weight1[o] = t.weight1;
      if (t.weight1 != acc_t(0)) taps = 2;
    }
    for (int tap = 0; tap < taps; ++tap) {
      begin[tap].resize(in);
      end[tap].resize(in);
      for (int64_t i = 0; i < in; ++i) {
        const Range range = axis.tap_range(tap, i);
        begin[tap][i] = range.begin;
        end[tap][i] = range.end;
      }
    }
    blended_doubling = taps == 2 && out == 2 * in && in >= 2;
    for (int64_t o = 1; blended_doubling && o < out - 1; ++o) {
      const int64_t j = (o - 1) / 2, like = 1 + (o - 1) % 2;
      blended_doubling = index0[o] == j && index1[o] == j + 1 && weight0[o] == weight0[like] &&
          weight1[o] == weight1[like];
    }
  }

  const acc_t* weights(int tap) const {
    return tap == 0 ? weight0.data() : weight1.data();
  }
};

template <typename acc_t>
struct Resize2d {
  AxisTable<acc_t> rows, cols;
  Resize2d(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, bool linear, bool align_corners)
      : rows(in_h, out_h, linear, align_corners), cols(in_w, out_w, linear, align_corners) {}
};

// Rows per parallel task: enough work to amortise the task, few enough to balance 2+ threads.
inline int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
}

// dst (W) = one source row `src` (W_t) resized along W by `cols`.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void resize_row(const scalar_t* src, acc_t* dst, const AxisTable<acc_t>& cols) {
  const int64_t in_w = cols.axis.in_size, width = cols.axis.out_size;
  const int64_t* i0 = cols.index0.data();
  const int64_t* i1 = cols.index1.data();
  const acc_t* w0 = cols.weight0.data();
  const acc_t* w1 = cols.weight1.data();
  auto blend = [&](int64_t x) {
    return w0[x] * static_cast<acc_t>(src[i0[x]]) + w1[x] * static_cast<acc_t>(src[i1[x]]);
  };
  if (cols.blended_doubling) {
    const acc_t odd0 = w0[1], odd1 = w1[1], even0 = w0[2], even1 = w1[2];
    dst[0] = blend(0);
    for (int64_t j = 0; j < in_w - 1; ++j) {
      const acc_t left = static_cast<acc_t>(src[j]), right = static_cast<acc_t>(src[j + 1]);
      dst[2 * j + 1] = odd0 * left + odd1 * right;
      dst[2 * j + 2] = even0 * left + even1 * right;
    }
    dst[width - 1] = blend(width - 1);
  } else if (cols.taps == 2) {
    for (int64_t x = 0; x < width; ++x) dst[x] = blend(x);
  } else if (cols.doubling) {
    for (int64_t x = 0; x < in_w; ++x) dst[2 * x] = dst[2 * x + 1] = static_cast<acc_t>(src[x]);
  } else {
    for (int64_t x = 0; x < width; ++x) dst[x] = static_cast<acc_t>(src[i0[x]]);
  }
}

// An output row from the source rows it blends, already resized along W: `a`, or wa * a + wb * b
// when `b` is given, written as `kSum` says: false (resize_add) dst = lat + the row, `dst` a row of
// scalar_t; true (resize_sum) dst += the row, `dst` a row of acc_t and `lat` unused.
template <bool kSum, typename scalar_t, typename acc_t, typename out_t>
SFPN_VECTOR_CLONES void add_resized_rows(const scalar_t* __restrict__ lat, const acc_t* __restrict__ a,
                                         const acc_t* __restrict__ b, acc_t wa, acc_t wb, out_t* __restrict__ dst,
                                         int64_t width) {
  auto write = [&](int64_t x, acc_t value) {
    if constexpr (kSum) {
      dst[x] += value;
    } else {
      dst[x] = static_cast<scalar_t>(static_cast<acc_t>(lat[x]) + value);
    }
  };
  if (b == nullptr) {
    for (int64_t x = 0; x < width; ++x) write(x, a[x]);
    return;
  }
  for (int64_t x = 0; x < width; ++x) write(x, wa * a[x] + wb * b[x]);
}

// The source rows of a stack of planes `source` (P, Ht, Wt) resized along W by `cols`, the last
// two kept: a task walking its output rows in order resizes each source row about once.
template <typename scalar_t, typename acc_t>
class ResizedRows {
 public:
  ResizedRows(const scalar_t* source, const AxisTable<acc_t>& cols)
      : source_(source), cols_(cols), cache_(2 * cols.axis.out_size) {}

  // Source row `source_row` (plane * Ht + row) resized along W, (W,).
  const acc_t* get(int64_t source_row) {
    const int64_t width = cols_.axis.out_size;
    for (int slot = 0; slot < 2; ++slot) {
      if (cached_[slot] == source_row) {
        recent_ = slot;
        return cache_.data() + slot * width;
      }
    }
    recent_ = 1 - recent_;
    cached_[recent_] = source_row;
    acc_t* dst = cache_.data() + recent_ * width;
    resize_row(source_ + source_row * cols_.axis.in_size, dst, cols_);
    return dst;
  }

 private:
  const scalar_t* source_;
  const AxisTable<acc_t>& cols_;
  std::vector<acc_t> cache_;
  int64_t cached_[2] = {-1, -1};  // which source row each slot holds
  int recent_ = 1;                // the slot used last: never evicted by the next request
};

// out = lateral + resize(top), planes (P, Ht, Wt) -> (P, H, W). Each task walks its rows in
// order (ResizedRows: every source row resized horizontally about once), and each output row is
// a vectorised blend of two of them.
template <typename scalar_t, typename acc_t>
void resize_add(
    const scalar_t* top, const scalar_t* lateral, scalar_t* out, int64_t planes,
    const Resize2d<acc_t>& resize) {
  const int64_t in_h = resize.rows.axis.in_size;
  const int64_t height = resize.rows.axis.out_size, width = resize.cols.axis.out_size;
  at::parallel_for(0, planes * height, row_grain(width), [&](int64_t begin, int64_t end) {
    ResizedRows<scalar_t, acc_t> source_rows(top, resize.cols);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / height, y = row % height;
      const acc_t* a = source_rows.get(plane * in_h + resize.rows.index0[y]);
      const acc_t* b = resize.rows.taps == 1 ? nullptr : source_rows.get(plane * in_h + resize.rows.index1[y]);
      add_resized_rows</*kSum=*/false>(lateral + row * width, a, b, resize.rows.weight0[y], resize.rows.weight1[y],
                                       out + row * width, width);
    }
  });
}

// acc[0:in_w] += adjoint of the resize of one plane `grad` (H, W), restricted to source row
// `source_y`: first the output rows reading that source row are summed with their weights into
// `column_sums` (W, scratch), then each source column gathers its output columns from it.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void accumulate_adjoint_row(
    const scalar_t* grad, const Resize2d<acc_t>& resize, int64_t source_y, acc_t* column_sums, acc_t* acc) {
  const AxisTable<acc_t>& rows = resize.rows;
  const AxisTable<acc_t>& cols = resize.cols;
  const int64_t width = cols.axis.out_size, in_w = cols.axis.in_size;
  bool any = false;
  for (int tap = 0; tap < rows.taps; ++tap) {
    const acc_t* weight = rows.weights(tap);
    for (int64_t y = rows.begin[tap][source_y]; y < rows.end[tap][source_y]; ++y) {
      const scalar_t* __restrict__ src = grad + y * width;
      acc_t* __restrict__ sums = column_sums;
      const acc_t w = rows.taps == 2 ? weight[y] : acc_t(1);
      if (!any) {
        for (int64_t x = 0; x < width; ++x) sums[x] = w * static_cast<acc_t>(src[x]);
      } else {
        for (int64_t x = 0; x < width; ++x) sums[x] += w * static_cast<acc_t>(src[x]);
      }
      any = true;
    }
  }
  if (!any) return;  // no output row reads this source row (down-sampling)
  if (cols.doubling) {
    for (int64_t i = 0; i < in_w; ++i) acc[i] += column_sums[2 * i] + column_sums[2 * i + 1];
    return;
  }
  const acc_t* weight[2] = {cols.weights(0), cols.weights(1)};
  const int64_t* first[2] = {cols.begin[0].data(), cols.begin[1].data()};
  const int64_t* last[2] = {cols.end[0].data(), cols.end[1].data()};
  auto gathered = [&](int64_t i) {
    acc_t sum = 0;
    for (int tap = 0; tap < cols.taps; ++tap) {
      if (cols.taps == 2) {
        for (int64_t x = first[tap][i]; x < last[tap][i]; ++x) sum += weight[tap][x] * column_sums[x];
      } else {
        for (int64_t x = first[tap][i]; x < last[tap][i]; ++x) sum += column_sums[x];
      }
    }
    return sum;
  };
  if (cols.blended_doubling) {
    // Source i is read by outputs 2i-1 and 2i (as their second tap) and 2i+1 and 2i+2 (first).
    const acc_t odd0 = weight[0][1], odd1 = weight[1][1], even0 = weight[0][2], even1 = weight[1][2];
    const acc_t* s = column_sums;
    acc[0] += gathered(0);
    for (int64_t i = 1; i < in_w - 1; ++i) {
      acc[i] += (odd1 * s[2 * i - 1] + even1 * s[2 * i]) + (odd0 * s[2 * i + 1] + even0 * s[2 * i + 2]);
    }
    acc[in_w - 1] += gathered(in_w - 1);
    return;
  }
  for (int64_t i = 0; i < in_w; ++i) acc[i] += gathered(i);
}

// grad_source (P, Hs, Ws) = sum over `grads` g_k (P, H_k, W_k) of the adjoint of resize k,
// one source row per step, each written exactly once.
template <typename scalar_t, typename acc_t>
void resize_adjoint(
    const std::vector<const scalar_t*>& grads, const std::vector<Resize2d<acc_t>>& resizes, scalar_t* grad_source,
    int64_t planes, int64_t source_h, int64_t source_w) {
  int64_t widest = 0;
  for (const auto& resize : resizes) widest = std::max(widest, resize.cols.axis.out_size);
  at::parallel_for(0, planes * source_h, row_grain(widest), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> column_sums(widest), acc(source_w);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / source_h, y = row % source_h;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (size_t k = 0; k < grads.size(); ++k) {
        const int64_t plane_size = resizes[k].rows.axis.out_size * resizes[k].cols.axis.out_size;
        accumulate_adjoint_row(grads[k] + plane * plane_size, resizes[k], y, column_sums.data(), acc.data());
      }
      sfpn::cpu::convert_rows(acc.data(), source_w, grad_source + row * source_w, source_w, 1, source_w);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Channels-last twins: (N, H, W, C) tensors. A pixel's C channels are contiguous, so every tap
// of the tables above moves a whole channel vector (the loops over c vectorise, in AVX-512 or
// AVX2 clones: vector_clones.h), and the arithmetic per element is the planar kernels' own.

// Output row y of `resize` of one image, (W, C), from the source rows `source0` and `source1`
// (W_t, C) it blends, written as `kSum` says: false (resize_add_channels_last) out = lateral + the
// row, `out` a row of scalar_t; true (resize_sum) out += the row, `out` a row of acc_t and
// `lateral` unused.
template <bool kSum, typename scalar_t, typename acc_t, typename out_t>
SFPN_VECTOR_CLONES void resized_row_channels_last(
    const scalar_t* source0, const scalar_t* source1, const scalar_t* lateral, out_t* out, int64_t y,
    int64_t channels, const Resize2d<acc_t>& resize) {
  const AxisTable<acc_t>& rows = resize.rows;
  const AxisTable<acc_t>& cols = resize.cols;
  const bool blend_rows = rows.taps == 2, blend_cols = cols.taps == 2;
  const acc_t wa = rows.weight0[y], wb = rows.weight1[y];
  for (int64_t x = 0; x < cols.axis.out_size; ++x) {
    const scalar_t* __restrict__ lat = lateral + x * channels;
    out_t* __restrict__ dst = out + x * channels;
    const int64_t left = cols.index0[x] * channels, right = cols.index1[x] * channels;
    const acc_t wl = cols.weight0[x], wr = cols.weight1[x];
    const scalar_t* __restrict__ a0 = source0 + left;
    const scalar_t* __restrict__ a1 = source0 + right;
    const scalar_t* __restrict__ b0 = source1 + left;
    const scalar_t* __restrict__ b1 = source1 + right;
    auto load = [](const scalar_t* p, int64_t c) { return static_cast<acc_t>(p[c]); };
    auto write = [&](int64_t c, acc_t value) {
      if constexpr (kSum) {
        dst[c] += value;
      } else {
        dst[c] = static_cast<scalar_t>(load(lat, c) + value);
      }
    };
    if (!blend_rows && !blend_cols) {
      for (int64_t c = 0; c < channels; ++c) write(c, load(a0, c));
    } else if (!blend_rows) {
      for (int64_t c = 0; c < channels; ++c) write(c, wl * load(a0, c) + wr * load(a1, c));
    } else if (!blend_cols) {
      for (int64_t c = 0; c < channels; ++c) write(c, wa * load(a0, c) + wb * load(b0, c));
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        const acc_t a = wl * load(a0, c) + wr * load(a1, c), b = wl * load(b0, c) + wr * load(b1, c);
        write(c, wa * a + wb * b);
      }
    }
  }
}

// out = lateral + resize(top), (N, Ht, Wt, C) -> (N, H, W, C), one output row per step.
template <typename scalar_t, typename acc_t>
void resize_add_channels_last(
    const scalar_t* top, const scalar_t* lateral, scalar_t* out, int64_t batch, int64_t channels,
    const Resize2d<acc_t>& resize) {
  const AxisTable<acc_t>& rows = resize.rows;
  const int64_t in_h = rows.axis.in_size, in_w = resize.cols.axis.in_size;
  const int64_t height = rows.axis.out_size, row_size = resize.cols.axis.out_size * channels;
  at::parallel_for(0, batch * height, row_grain(row_size), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / height, y = row % height;
      resized_row_channels_last</*kSum=*/false>(top + (n * in_h + rows.index0[y]) * in_w * channels,
                                                top + (n * in_h + rows.index1[y]) * in_w * channels,
                                                lateral + row * row_size, out + row * row_size, y, channels, resize);
    }
  });
}

// acc (Ws, C) += adjoint of the resize of one image `grad` (H, W, C), restricted to source row
// `source_y`: the output rows reading it are summed with their weights into `row_sums` (W, C),
// then each source pixel gathers the output pixels that read it.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void accumulate_adjoint_row_channels_last(
    const scalar_t* grad, const Resize2d<acc_t>& resize, int64_t channels, int64_t source_y, acc_t* row_sums,
    acc_t* acc, acc_t* pixel) {
  const AxisTable<acc_t>& rows = resize.rows;
  const AxisTable<acc_t>& cols = resize.cols;
  const int64_t row_size = cols.axis.out_size * channels, in_w = cols.axis.in_size;
  bool any = false;
  for (int tap = 0; tap < rows.taps; ++tap) {
    const acc_t* weight = rows.weights(tap);
    for (int64_t y = rows.begin[tap][source_y]; y < rows.end[tap][source_y]; ++y) {
      const scalar_t* __restrict__ src = grad + y * row_size;
      acc_t* __restrict__ sums = row_sums;
      const acc_t w = rows.taps == 2 ? weight[y] : acc_t(1);
      if (!any) {
        for (int64_t i = 0; i < row_size; ++i) sums[i] = w * static_cast<acc_t>(src[i]);
      } else {
        for (int64_t i = 0; i < row_size; ++i) sums[i] += w * static_cast<acc_t>(src[i]);
      }
      any = true;
    }
  }
  if (!any) return;  // no output row reads this source row (down-sampling)
  for (int64_t i = 0; i < in_w; ++i) {
    acc_t* __restrict__ target = acc + i * channels;
    if (cols.doubling) {
      const acc_t* __restrict__ even = row_sums + 2 * i * channels;
      const acc_t* __restrict__ odd = even + channels;
      for (int64_t c = 0; c < channels; ++c) target[c] += even[c] + odd[c];
      continue;
    }
    acc_t* __restrict__ gathered = pixel;
    std::fill(gathered, gathered + channels, acc_t(0));
    for (int tap = 0; tap < cols.taps; ++tap) {
      const acc_t* weight = cols.weights(tap);
      for (int64_t x = cols.begin[tap][i]; x < cols.end[tap][i]; ++x) {
        const acc_t w = cols.taps == 2 ? weight[x] : acc_t(1);
        const acc_t* __restrict__ sums = row_sums + x * channels;
        for (int64_t c = 0; c < channels; ++c) gathered[c] += w * sums[c];
      }
    }
    for (int64_t c = 0; c < channels; ++c) target[c] += gathered[c];
  }
}

// grad_source (N, Hs, Ws, C) = sum over `grads` g_k (N, H_k, W_k, C) of the adjoint of resize k,
// one source row per step, each written exactly once.
template <typename scalar_t, typename acc_t>
void resize_adjoint_channels_last(
    const std::vector<const scalar_t*>& grads, const std::vector<Resize2d<acc_t>>& resizes, scalar_t* grad_source,
    int64_t batch, int64_t channels, int64_t source_h, int64_t source_w) {
  int64_t widest = 0;
  for (const auto& resize : resizes) widest = std::max(widest, resize.cols.axis.out_size);
  const int64_t source_row = source_w * channels;
  at::parallel_for(0, batch * source_h, row_grain(widest * channels), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row_sums(widest * channels), acc(source_row), pixel(channels);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / source_h, y = row % source_h;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (size_t k = 0; k < grads.size(); ++k) {
        const int64_t image_size = resizes[k].rows.axis.out_size * resizes[k].cols.axis.out_size * channels;
        accumulate_adjoint_row_channels_last(
            grads[k] + n * image_size, resizes[k], channels, y, row_sums.data(), acc.data(), pixel.data());
      }
      sfpn::cpu::convert_rows(acc.data(), source_row, grad_source + row * source_row, source_row, 1, source_row);
    }
  });
}

}  // namespace sfpn::resize::cpu
