// What the CUDA kernel files need from the CUDA runtime, behind one small interface, so that the
// same files (kernels, launch geometry and host entry functions) build two ways:
//   - by nvcc into sfpn._C, where this maps onto the real runtime;
//   - by the host compiler with SFPN_EMULATION defined, into the test extension sfpn_emulated,
//     where csrc/emulation/cuda_emulation.h runs every launch on the CPU (tests/cuda_emulation.py).
// Kernel files include this after their ATen headers and use only:
//   gpu::Geometry{grid, block, shared_bytes}, gpu::launch<kernel>(geometry, stream, args...),
//   gpu::DeviceGuard, gpu::current_stream(), gpu::max_shared_bytes_per_block(),
//   SFPN_SHARED(type, name) / SFPN_DYNAMIC_SHARED(type, name) for shared memory in kernels,
//   SFPN_CUDA_OPS(m) { m.impl(...); } for the operator registration block.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#ifdef SFPN_EMULATION
#include "emulation/cuda_emulation.h"
#else
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#endif

namespace sfpn::gpu {

// An alias that lets an array type be spelled before the declared name: Identity<float[64][5]> x.
template <typename T>
using Identity = T;

// Where and how wide a kernel runs: the one description both builds launch from.
struct Geometry {
  dim3 grid;
  dim3 block;
  size_t shared_bytes = 0;  // dynamic shared memory per block
};

// The launch of a grid-stride loop over `work` items: 256 threads per block, at most 2^20 blocks
// (the loop covers the rest).
inline Geometry grid_stride(int64_t work) {
  constexpr int64_t kThreads = 256, kMaxBlocks = int64_t(1) << 20;
  const int64_t blocks = std::min(std::max<int64_t>((work + kThreads - 1) / kThreads, 1), kMaxBlocks);
  return {dim3(static_cast<unsigned int>(blocks)), dim3(kThreads)};
}

#ifdef SFPN_EMULATION

using DeviceGuard = emulation::DeviceGuard;
using Stream = emulation::Stream;
inline Stream current_stream() {
  return {};
}
inline int max_shared_bytes_per_block() {
  return emulation::kMaxSharedBytesPerBlock;
}

template <auto kernel, typename... Args>
void launch(const Geometry& geometry, Stream /*stream*/, Args&&... args) {
  emulation::run(emulation::kernel_name<kernel>(), geometry.grid, geometry.block, geometry.shared_bytes,
                 [&] { kernel(args...); });
}

#else

using DeviceGuard = c10::cuda::CUDAGuard;
using Stream = c10::cuda::CUDAStream;
inline Stream current_stream() {
  return c10::cuda::getCurrentCUDAStream();
}
// Shared memory a block may opt in to (227 KiB on H100/H200), beyond the default 48 KiB.
inline int max_shared_bytes_per_block() {
  return static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
}

template <auto kernel, typename... Args>
void launch(const Geometry& geometry, Stream stream, Args&&... args) {
  constexpr size_t kDefaultSharedBytes = 48 * 1024;
  if (geometry.shared_bytes > kDefaultSharedBytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(geometry.shared_bytes)));
  }
  kernel<<<geometry.grid, geometry.block, geometry.shared_bytes, stream.stream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#endif

}  // namespace sfpn::gpu

#ifdef SFPN_EMULATION
// Per-block shared memory: each declaration gets its own checked buffer, poisoned like CUDA's
// uninitialised shared memory (the key is the address of a variable unique to the declaration).
#define SFPN_SHARED(type, name)  \
  static char name##_shared_key; \
  ::sfpn::gpu::Identity<type>& name = ::sfpn::emulation::block_shared<::sfpn::gpu::Identity<type>>(&name##_shared_key)
#define SFPN_DYNAMIC_SHARED(type, name) type* name = ::sfpn::emulation::dynamic_shared<type>()
// The operators register into the test library sfpn_emulated, on CPU tensors, with schemas
// inferred from the entry functions.
#define SFPN_CUDA_OPS(m)                                               \
  static void sfpn_register_cuda_ops(::sfpn::emulation::OpTable& m);  \
  TORCH_LIBRARY_FRAGMENT(sfpn_emulated, library) {                     \
    ::sfpn::emulation::OpTable table{library};                         \
    sfpn_register_cuda_ops(table);                                     \
  }                                                                    \
  static void sfpn_register_cuda_ops(::sfpn::emulation::OpTable& m)
#else
#define SFPN_SHARED(type, name) __shared__ ::sfpn::gpu::Identity<type> name
#define SFPN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define SFPN_CUDA_OPS(m) TORCH_LIBRARY_IMPL(sfpn, CUDA, m)
#endif
