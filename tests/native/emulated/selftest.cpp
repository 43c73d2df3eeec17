// Kernels with planted bugs, one of each kind the CUDA emulation must catch (a missing barrier, an
// out-of-bounds global write, an out-of-bounds shared write, a failed device-side assertion), and
// a correct twin of the first: tests/native/test_cuda_emulation.py proves with them that the emulation
// fails such kernels. Built into the test library only.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include "cuda/launch.cuh"

namespace sfpn::emulation::selftest {
namespace {

constexpr int kThreads = 64;

// out[i] = in[the next i of the block, cyclically], through shared memory; with `barrier` false
// the threads read the tile before every thread has written it.
__global__ void rotate_kernel(const float* __restrict__ in, float* __restrict__ out, bool barrier) {
  SFPN_SHARED(float[kThreads], tile);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  tile[threadIdx.x] = in[i];
  if (barrier) __syncthreads();
  out[i] = tile[(threadIdx.x + 1) % kThreads];
}

// Fills out[0, n] (n + 1 elements: one too many).
__global__ void overrun_kernel(float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i <= n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = 1;
  }
}

// Writes tile[threadIdx.x + 1]: the last thread writes past the tile.
__global__ void shared_overrun_kernel(float* __restrict__ out) {
  SFPN_SHARED(float[kThreads], tile);
  tile[threadIdx.x + 1] = 1;
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x];
}

__global__ void assert_kernel(const float* __restrict__ in) {
  CUDA_KERNEL_ASSERT_MSG(in[threadIdx.x] >= 0, "a negative input");
}

// input: (B * 64,) float32.
at::Tensor rotate(const at::Tensor& input, bool barrier) {
  at::Tensor out = at::empty_like(input);
  gpu::launch<rotate_kernel>({dim3(static_cast<unsigned>(input.numel() / kThreads)), dim3(kThreads)},
                             gpu::current_stream(), input.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                             barrier);
  return out;
}

at::Tensor overrun(const at::Tensor& out) {
  gpu::launch<overrun_kernel>(gpu::grid_stride(out.numel()), gpu::current_stream(), out.mutable_data_ptr<float>(),
                              out.numel());
  return out;
}

at::Tensor shared_overrun(const at::Tensor& out) {
  gpu::launch<shared_overrun_kernel>({dim3(1), dim3(kThreads)}, gpu::current_stream(),
                                     out.mutable_data_ptr<float>());
  return out;
}

at::Tensor check_nonnegative(const at::Tensor& input) {
  gpu::launch<assert_kernel>({dim3(1), dim3(static_cast<unsigned>(input.numel()))}, gpu::current_stream(),
                             input.const_data_ptr<float>());
  return input;
}

}  // namespace
}  // namespace sfpn::emulation::selftest

SFPN_CUDA_OPS(m) {
  using namespace sfpn::emulation::selftest;
  m.impl("selftest_rotate", &rotate);
  m.impl("selftest_overrun", &overrun);
  m.impl("selftest_shared_overrun", &shared_overrun);
  m.impl("selftest_check_nonnegative", &check_nonnegative);
}
