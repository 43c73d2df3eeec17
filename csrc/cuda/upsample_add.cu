// CUDA kernels of sfpn::upsample_add: lateral + resize(top) in one coalesced pass (16-byte
// vectors along W when rows allow), and its gradient w.r.t. top as a deterministic gather: one
// thread per top element sums the output window that reads it (no atomics, no zero-fill).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "resize.h"
#include "cuda/resize_kernels.cuh"
#include "cuda/launch.cuh"  // last: the emulated build's CUDA names follow every other header

namespace sfpn::resize::cuda {
namespace {

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t value[kVec];
};

// out (P, H, W) = lateral + resize(top (P, Ht, Wt)); each thread writes kVec neighbours of a row.
template <typename scalar_t, typename acc_t, typename index_t, int kVec>
__global__ void upsample_add_kernel(
    const scalar_t* __restrict__ top, const scalar_t* __restrict__ lateral, scalar_t* __restrict__ out,
    index_t packs, Axis<acc_t> rows, Axis<acc_t> cols) {
  const index_t width = cols.out_size, height = rows.out_size;
  const index_t top_plane = rows.in_size * cols.in_size;
  for (index_t pack = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; pack < packs;
       pack += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t first = pack * kVec;
    const index_t x = first % width, row = first / width;
    const index_t y = row % height, plane = row / height;
    const Taps<acc_t> row_taps = rows.taps_of(y);
    const scalar_t* source = top + plane * top_plane;
    const auto lat = *reinterpret_cast<const Pack<scalar_t, kVec>*>(lateral + first);
    Pack<scalar_t, kVec> result;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const acc_t value = sample(source, cols.in_size, row_taps, cols.taps_of(x + k));
      result.value[k] = static_cast<scalar_t>(static_cast<acc_t>(lat.value[k]) + value);
    }
    *reinterpret_cast<Pack<scalar_t, kVec>*>(out + first) = result;
  }
}

// grad_top (P, Ht, Wt) = adjoint of the resize of grad (P, H, W).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void upsample_add_backward_kernel(
    const scalar_t* __restrict__ grad, scalar_t* __restrict__ grad_top, index_t total, Axis<acc_t> rows,
    Axis<acc_t> cols) {
  const index_t in_w = cols.in_size, in_h = rows.in_size;
  const index_t out_plane = rows.out_size * cols.out_size;
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t j = index % in_w, row = index / in_w;
    const index_t i = row % in_h, plane = row / in_h;
    grad_top[index] = static_cast<scalar_t>(adjoint(grad + plane * out_plane, rows, cols, i, j));
  }
}

template <typename scalar_t, typename acc_t, typename index_t, int kVec>
void launch_forward(const at::Tensor& top, const at::Tensor& lateral, at::Tensor& out, const Axis<acc_t>& rows,
    const Axis<acc_t>& cols) {
  const index_t packs = out.numel() / kVec;
  gpu::launch<upsample_add_kernel<scalar_t, acc_t, index_t, kVec>>(gpu::grid_stride(packs), gpu::current_stream(),
      top.const_data_ptr<scalar_t>(), lateral.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), packs,
      rows, cols);
}

at::Tensor upsample_add(const at::Tensor& top, const at::Tensor& lateral, c10::string_view mode, bool align_corners) {
  check_upsample_add(top, lateral);
  const bool linear = is_bilinear(mode);
  const gpu::DeviceGuard guard(lateral.device());
  const at::Tensor top_c = top.contiguous(), lateral_c = lateral.contiguous();
  at::Tensor out = at::empty(lateral.sizes(), lateral.options());
  if (out.numel() == 0) return out;
  TORCH_CHECK(top.numel() > 0, "upsample_add: top must not be empty when lateral is not");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::upsample_add", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Axis<acc_t> rows(top.size(2), lateral.size(2), linear, align_corners);
    const Axis<acc_t> cols(top.size(3), lateral.size(3), linear, align_corners);
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vectorise = lateral.size(3) % kVec == 0 &&
        reinterpret_cast<uintptr_t>(lateral_c.const_data_ptr()) % 16 == 0 &&
        reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
    const bool small = fits_int32(top_c.numel()) && fits_int32(out.numel());
    if (vectorise && small) {
      launch_forward<scalar_t, acc_t, int32_t, kVec>(top_c, lateral_c, out, rows, cols);
    } else if (vectorise) {
      launch_forward<scalar_t, acc_t, int64_t, kVec>(top_c, lateral_c, out, rows, cols);
    } else if (small) {
      launch_forward<scalar_t, acc_t, int32_t, 1>(top_c, lateral_c, out, rows, cols);
    } else {
      launch_forward<scalar_t, acc_t, int64_t, 1>(top_c, lateral_c, out, rows, cols);
    }
  });
  return out;
}

at::Tensor upsample_add_backward(
    const at::Tensor& grad, int64_t top_height, int64_t top_width, c10::string_view mode, bool align_corners) {
  check_upsample_add_backward(grad, top_height, top_width);
  const bool linear = is_bilinear(mode);
  const gpu::DeviceGuard guard(grad.device());
  const at::Tensor grad_c = grad.contiguous();
  at::Tensor grad_top = at::empty({grad.size(0), grad.size(1), top_height, top_width}, grad.options());
  if (grad_top.numel() == 0) return grad_top;
  if (grad.numel() == 0) return grad_top.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::upsample_add_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Axis<acc_t> rows(top_height, grad.size(2), linear, align_corners);
    const Axis<acc_t> cols(top_width, grad.size(3), linear, align_corners);
    const int64_t total = grad_top.numel();
    if (fits_int32(grad_c.numel()) && fits_int32(grad_top.numel())) {
      gpu::launch<upsample_add_backward_kernel<scalar_t, acc_t, int32_t>>(gpu::grid_stride(total), gpu::current_stream(),
          grad_c.const_data_ptr<scalar_t>(), grad_top.mutable_data_ptr<scalar_t>(), total, rows, cols);
    } else {
      gpu::launch<upsample_add_backward_kernel<scalar_t, acc_t, int64_t>>(gpu::grid_stride(total), gpu::current_stream(),
          grad_c.const_data_ptr<scalar_t>(), grad_top.mutable_data_ptr<scalar_t>(), total, rows, cols);
    }
  });
  return grad_top;
}

}  // namespace

SFPN_CUDA_OPS(m) {
  m.impl("upsample_add", &upsample_add);
  m.impl("upsample_add_backward", &upsample_add_backward);
}

}  // namespace sfpn::resize::cuda
