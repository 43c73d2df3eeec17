// CUDA kernels of sfpn::semantic_fuse: every level's levels[i] + resize(semantic) in ONE launch
// (a flat grid over all levels' outputs; per-level pointers and resize axes travel as a kernel
// argument), and the gradient w.r.t. semantic in one launch too: one thread per semantic element
// gathers the adjoint windows of every level, so the sum over levels is deterministic and needs
// neither atomics nor a zero-fill. The operators around them (checks, contiguous inputs, outputs,
// empty levels) are resize.h's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <vector>

#include "resize.h"
#include "cuda/resize_kernels.cuh"
#include "cuda/launch.cuh"  // last: the emulated build's CUDA names follow every other header

namespace sfpn::resize::cuda {
namespace {

// Levels per launch: FPN has 4 or 5; more levels take one more launch per 8.
constexpr int kMaxLevels = 8;

// The levels of one launch, passed by value as a kernel argument (well under its 4 KiB) and read
// in place (__grid_constant__): a level is picked by a runtime index, which would otherwise copy
// the whole struct to every thread's local memory.
template <typename scalar_t, typename acc_t>
struct Levels {
  const scalar_t* input[kMaxLevels];  // forward: the levels; backward: their gradients
  scalar_t* output[kMaxLevels];       // forward: the fused levels; unused backward
  Axis<acc_t> rows[kMaxLevels], cols[kMaxLevels];  // semantic -> level
  int64_t end[kMaxLevels];            // forward: running total of the levels' element counts
  int count;
};

// output[k] (P, H_k, W_k) = input[k] + resize(semantic (P, Hs, Ws)) for every level k.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void semantic_fuse_kernel(
    const scalar_t* __restrict__ semantic, const __grid_constant__ Levels<scalar_t, acc_t> levels) {
  const index_t total = levels.end[levels.count - 1];
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    int k = 0;
    while (index >= levels.end[k]) ++k;
    const index_t local = index - (k > 0 ? levels.end[k - 1] : 0);
    const Axis<acc_t>& rows = levels.rows[k];
    const Axis<acc_t>& cols = levels.cols[k];
    const index_t width = cols.out_size, height = rows.out_size;
    const index_t x = local % width, row = local / width;
    const index_t y = row % height, plane = row / height;
    const scalar_t* source = semantic + plane * (rows.in_size * cols.in_size);
    const acc_t value = sample(source, cols.in_size, rows.taps_of(y), cols.taps_of(x));
    levels.output[k][local] = static_cast<scalar_t>(static_cast<acc_t>(levels.input[k][local]) + value);
  }
}

// grad_semantic (P, Hs, Ws) (+)= sum over levels k of the adjoint resize of input[k] (P, H_k, W_k).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void semantic_fuse_backward_kernel(
    scalar_t* __restrict__ grad_semantic, index_t total, bool accumulate,
    const __grid_constant__ Levels<scalar_t, acc_t> levels) {
  const index_t in_h = levels.rows[0].in_size, in_w = levels.cols[0].in_size;
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t j = index % in_w, row = index / in_w;
    const index_t i = row % in_h, plane = row / in_h;
    acc_t sum = accumulate ? static_cast<acc_t>(grad_semantic[index]) : acc_t(0);
    for (int k = 0; k < levels.count; ++k) {
      const index_t level_plane = levels.rows[k].out_size * levels.cols[k].out_size;
      sum += adjoint(levels.input[k] + plane * level_plane, levels.rows[k], levels.cols[k], i, j);
    }
    grad_semantic[index] = static_cast<scalar_t>(sum);
  }
}

void semantic_fuse(const at::Tensor& semantic, const std::vector<at::Tensor>& levels, std::vector<at::Tensor>& outs,
                   bool linear, bool align_corners) {
  const gpu::DeviceGuard guard(semantic.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, semantic.scalar_type(), "sfpn::semantic_fuse", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (size_t first = 0; first < levels.size(); first += kMaxLevels) {
      Levels<scalar_t, acc_t> batch{};
      int64_t total = 0;
      for (size_t k = first; k < std::min(levels.size(), first + kMaxLevels); ++k) {
        const int slot = batch.count++;
        batch.input[slot] = levels[k].const_data_ptr<scalar_t>();
        batch.output[slot] = outs[k].mutable_data_ptr<scalar_t>();
        batch.rows[slot] = Axis<acc_t>(semantic.size(2), outs[k].size(2), linear, align_corners);
        batch.cols[slot] = Axis<acc_t>(semantic.size(3), outs[k].size(3), linear, align_corners);
        total += outs[k].numel();
        batch.end[slot] = total;
      }
      if (fits_int32(total) && fits_int32(semantic.numel())) {
        gpu::launch<semantic_fuse_kernel<scalar_t, acc_t, int32_t>>(
            gpu::grid_stride(total), gpu::current_stream(), semantic.const_data_ptr<scalar_t>(), batch);
      } else {
        gpu::launch<semantic_fuse_kernel<scalar_t, acc_t, int64_t>>(
            gpu::grid_stride(total), gpu::current_stream(), semantic.const_data_ptr<scalar_t>(), batch);
      }
    }
  });
}

void semantic_fuse_backward(const std::vector<at::Tensor>& grads, at::Tensor& grad_semantic, bool linear,
                            bool align_corners) {
  const gpu::DeviceGuard guard(grad_semantic.device());
  const int64_t semantic_height = grad_semantic.size(2), semantic_width = grad_semantic.size(3);
  int64_t largest = grad_semantic.numel();
  for (const at::Tensor& grad : grads) largest = std::max(largest, grad.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_semantic.scalar_type(), "sfpn::semantic_fuse_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const int64_t total = grad_semantic.numel();
        for (size_t first = 0; first < grads.size(); first += kMaxLevels) {
          Levels<scalar_t, acc_t> batch{};
          for (size_t k = first; k < std::min(grads.size(), first + kMaxLevels); ++k) {
            const int slot = batch.count++;
            batch.input[slot] = grads[k].const_data_ptr<scalar_t>();
            batch.rows[slot] = Axis<acc_t>(semantic_height, grads[k].size(2), linear, align_corners);
            batch.cols[slot] = Axis<acc_t>(semantic_width, grads[k].size(3), linear, align_corners);
          }
          const bool accumulate = first > 0;  // later batches add to the first one's sums
          if (fits_int32(largest)) {
            gpu::launch<semantic_fuse_backward_kernel<scalar_t, acc_t, int32_t>>(gpu::grid_stride(total),
                gpu::current_stream(), grad_semantic.mutable_data_ptr<scalar_t>(), total, accumulate, batch);
          } else {
            gpu::launch<semantic_fuse_backward_kernel<scalar_t, acc_t, int64_t>>(gpu::grid_stride(total),
                gpu::current_stream(), grad_semantic.mutable_data_ptr<scalar_t>(), total, accumulate, batch);
          }
        }
      });
}

}  // namespace

SFPN_CUDA_OPS(m) {
  register_semantic_fuse_ops<semantic_fuse, semantic_fuse_backward>(m);
}

}  // namespace sfpn::resize::cuda
