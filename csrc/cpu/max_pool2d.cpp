// sfpn::max_pool2d on the CPU: max pooling without the indices. ATen's CPU max pooling always
// computes and writes int64 indices (8 bytes for every output value, 4x a bf16 output), even where
// nothing will need a gradient; this kernel writes the maxima alone. A channels_last map is read
// as it is, each window tap a vector of C contiguous channels; an NCHW map takes ATen's kernel
// (the detectors lay CPU maps out channels_last). NaN wins a window, as in ATen's kernel. The
// schema, the Python checks, the reference and the backward (ATen's, from recomputed indices) are
// in sfpn/ops/max_pool2d.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/max_pool2d_with_indices.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu/vector_clones.h"

namespace sfpn::max_pool2d::cpu {
namespace {

// Output values per parallel task at least: small maps run on one thread.
constexpr int64_t kMinTaskValues = int64_t(1) << 15;

struct Window {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
};

// One output row `oh` of one image: for each output pixel, the maximum of its window's taps, each
// a vector of `channels` values of `image` (in_h, in_w, C), a NaN taking the place (ATen's rule:
// `v > best || isnan(v)`), kept in `best` (C values) and written to `row` (out_w, C). One call a
// row, so that the clone's dispatch is paid once a row, not once a tap.
template <typename scalar_t, typename acc_t>
SFPN_VECTOR_CLONES void pool_row(const scalar_t* image, scalar_t* row, int64_t in_h, int64_t in_w, int64_t out_w,
                                 int64_t channels, int64_t oh, const Window& w, acc_t* best) {
  const int64_t h0 = std::max<int64_t>(oh * w.stride_h - w.pad_h, 0);
  const int64_t h1 = std::min(oh * w.stride_h - w.pad_h + w.kernel_h, in_h);
  for (int64_t ow = 0; ow < out_w; ++ow) {
    const int64_t w0 = std::max<int64_t>(ow * w.stride_w - w.pad_w, 0);
    const int64_t w1 = std::min(ow * w.stride_w - w.pad_w + w.kernel_w, in_w);
    acc_t* __restrict__ to = best;
    for (int64_t c = 0; c < channels; ++c) to[c] = -std::numeric_limits<acc_t>::infinity();
    for (int64_t ih = h0; ih < h1; ++ih) {
      for (int64_t iw = w0; iw < w1; ++iw) {
        const scalar_t* __restrict__ in = image + (ih * in_w + iw) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t v = static_cast<acc_t>(in[c]);
          to[c] = (v > to[c] || v != v) ? v : to[c];
        }
      }
    }
    scalar_t* __restrict__ out = row + ow * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] = static_cast<scalar_t>(to[c]);
  }
}

template <typename scalar_t>
void max_pool2d_nhwc(const at::Tensor& x, const Window& w, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t out_h = out.size(2), out_w = out.size(3);
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* to = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kMinTaskValues / (out_w * channels));
  at::parallel_for(0, batch * out_h, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(channels);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / out_h, oh = r % out_h;
      pool_row(in + n * in_h * in_w * channels, to + r * out_w * channels, in_h, in_w, out_w, channels, oh, w,
               best.data());
    }
  });
}

// The output size along one axis, as ATen's (no dilation, floor mode).
int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad) {
  return (in + 2 * pad - kernel) / stride + 1;
}

at::Tensor max_pool2d(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding) {
  constexpr const char* op = "max_pool2d";
  checks::check_tensor(op, "x", x, 4, "(N, C, H, W)");
  for (const auto& [name, values] : {std::pair<const char*, at::IntArrayRef>{"kernel_size", kernel_size},
                                     {"stride", stride},
                                     {"padding", padding}}) {
    TORCH_CHECK(values.size() == 2, "sfpn::max_pool2d: ", name, " must have 2 values (h, w), got ", values);
  }
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0 && stride[0] > 0 && stride[1] > 0,
              "sfpn::max_pool2d: kernel_size and stride must be positive, got ", kernel_size, " and ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && 2 * padding[0] <= kernel_size[0] &&
                  2 * padding[1] <= kernel_size[1],
              "sfpn::max_pool2d: padding must be non-negative and at most half of kernel_size, got ", padding);
  const Window w{kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1]};
  const int64_t out_h = pooled_size(x.size(2), w.kernel_h, w.stride_h, w.pad_h);
  const int64_t out_w = pooled_size(x.size(3), w.kernel_w, w.stride_w, w.pad_w);
  TORCH_CHECK(out_h > 0 && out_w > 0, "sfpn::max_pool2d: x's H, W ", x.sizes().slice(2),
              " are too small for kernel_size ", kernel_size, " and padding ", padding);
  if (!checks::is_channels_last(x)) {
    return std::get<0>(at::max_pool2d_with_indices(x, kernel_size, stride, padding));
  }
  at::Tensor out =
      at::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sfpn::max_pool2d",
                                  [&] { max_pool2d_nhwc<scalar_t>(x, w, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("max_pool2d", &max_pool2d);
}

}  // namespace sfpn::max_pool2d::cpu
