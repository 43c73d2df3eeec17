// sfpn::upsample_argmax on CUDA: one thread per output pixel of the crop runs through the classes,
// blending each class's four bilinear taps (along W, then along H, as the CPU kernel does) and
// keeping the running maximum and its class: no (K, H, W) buffer. Neighbouring threads read
// neighbouring taps of one class plane at a time. Argument checks and the operator are shared
// with the CPU in upsample_argmax.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "resize_index.h"
#include "upsample_argmax.h"
#include "cuda/launch.cuh"  // last: the emulated build's CUDA names follow every other header

namespace sfpn::upsample_argmax::cuda {
namespace {

// out (H', W') = argmax over k of logits[k] (h, w) upsampled by `rows` and `cols`, at the crop's pixels.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void upsample_argmax_kernel(const scalar_t* __restrict__ logits, int64_t* __restrict__ out,
                                       index_t pixels, index_t crop_w, index_t classes, resize::Axis<acc_t> rows,
                                       resize::Axis<acc_t> cols) {
  const index_t in_w = cols.in_size, plane = rows.in_size * cols.in_size;
  for (index_t pixel = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; pixel < pixels;
       pixel += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const resize::Taps<acc_t> row = rows.taps_of(pixel / crop_w), col = cols.taps_of(pixel % crop_w);
    const scalar_t* upper = logits + row.index0 * in_w;
    const scalar_t* lower = logits + row.index1 * in_w;
    acc_t best = 0;
    index_t best_class = 0;
    for (index_t k = 0; k < classes; ++k, upper += plane, lower += plane) {
      const acc_t top = col.weight0 * static_cast<acc_t>(upper[col.index0]) +
          col.weight1 * static_cast<acc_t>(upper[col.index1]);
      const acc_t bottom = col.weight0 * static_cast<acc_t>(lower[col.index0]) +
          col.weight1 * static_cast<acc_t>(lower[col.index1]);
      const acc_t value = row.weight0 * top + row.weight1 * bottom;
      if (k == 0 || beats(value, best)) {
        best = value;
        best_class = k;
      }
    }
    out[pixel] = best_class;
  }
}

void upsample_argmax_cuda(const at::Tensor& logits, int64_t height, int64_t width, at::Tensor& out) {
  const gpu::DeviceGuard guard(logits.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sfpn::upsample_argmax", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const resize::Axis<acc_t> rows(logits.size(1), height, /*linear=*/true, /*align_corners=*/false);
    const resize::Axis<acc_t> cols(logits.size(2), width, /*linear=*/true, /*align_corners=*/false);
    const int64_t pixels = out.numel();
    if (logits.numel() < std::numeric_limits<int32_t>::max() && pixels < std::numeric_limits<int32_t>::max()) {
      gpu::launch<upsample_argmax_kernel<scalar_t, acc_t, int32_t>>(
          gpu::grid_stride(pixels), gpu::current_stream(), logits.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<int64_t>(), static_cast<int32_t>(pixels), static_cast<int32_t>(out.size(1)),
          static_cast<int32_t>(logits.size(0)), rows, cols);
    } else {
      gpu::launch<upsample_argmax_kernel<scalar_t, acc_t, int64_t>>(
          gpu::grid_stride(pixels), gpu::current_stream(), logits.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<int64_t>(), pixels, out.size(1), logits.size(0), rows, cols);
    }
  });
}

}  // namespace

SFPN_CUDA_OPS(m) {
  register_upsample_argmax_ops<upsample_argmax_cuda>(m);
}

}  // namespace sfpn::upsample_argmax::cuda
