// CUDA kernels of sfpn::upsample_add: lateral + resize(top) in one coalesced pass (16-byte
// vectors along W when rows allow), and its gradient w.r.t. top as a deterministic gather: one
// thread per top element sums the output window that reads it (no atomics, no zero-fill). The
// operators around them (checks, contiguous inputs, outputs) are resize.h's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

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

void upsample_add(const at::Tensor& top, const at::Tensor& lateral, at::Tensor& out, bool linear, bool align_corners) {
  const gpu::DeviceGuard guard(lateral.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::upsample_add", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Axis<acc_t> rows(top.size(2), lateral.size(2), linear, align_corners);
    const Axis<acc_t> cols(top.size(3), lateral.size(3), linear, align_corners);
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vectorise = lateral.size(3) % kVec == 0 &&
        reinterpret_cast<uintptr_t>(lateral.const_data_ptr()) % 16 == 0 &&
        reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
    const bool small = fits_int32(top.numel()) && fits_int32(out.numel());
    if (vectorise && small) {
      launch_forward<scalar_t, acc_t, int32_t, kVec>(top, lateral, out, rows, cols);
    } else if (vectorise) {
      launch_forward<scalar_t, acc_t, int64_t, kVec>(top, lateral, out, rows, cols);
    } else if (small) {
      launch_forward<scalar_t, acc_t, int32_t, 1>(top, lateral, out, rows, cols);
    } else {
      launch_forward<scalar_t, acc_t, int64_t, 1>(top, lateral, out, rows, cols);
    }
  });
}

void upsample_add_backward(const at::Tensor& grad, at::Tensor& grad_top, bool linear, bool align_corners) {
  const gpu::DeviceGuard guard(grad.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::upsample_add_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Axis<acc_t> rows(grad_top.size(2), grad.size(2), linear, align_corners);
    const Axis<acc_t> cols(grad_top.size(3), grad.size(3), linear, align_corners);
    const int64_t total = grad_top.numel();
    if (fits_int32(grad.numel()) && fits_int32(grad_top.numel())) {
      gpu::launch<upsample_add_backward_kernel<scalar_t, acc_t, int32_t>>(gpu::grid_stride(total), gpu::current_stream(),
          grad.const_data_ptr<scalar_t>(), grad_top.mutable_data_ptr<scalar_t>(), total, rows, cols);
    } else {
      gpu::launch<upsample_add_backward_kernel<scalar_t, acc_t, int64_t>>(gpu::grid_stride(total), gpu::current_stream(),
          grad.const_data_ptr<scalar_t>(), grad_top.mutable_data_ptr<scalar_t>(), total, rows, cols);
    }
  });
}

}  // namespace

SFPN_CUDA_OPS(m) {
  register_upsample_add_ops<upsample_add, upsample_add_backward>(m);
}

}  // namespace sfpn::resize::cuda
