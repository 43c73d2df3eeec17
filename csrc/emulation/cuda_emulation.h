// A CPU stand-in for the parts of CUDA that sfpn's kernels use, so that csrc/cuda/*.cu compile with
// the host compiler (SFPN_EMULATION) and run on CPU tensors in the test extension sfpn_emulated.
// Included through csrc/cuda/launch.cuh, after the ATen headers; the runtime is
// cuda_emulation.cpp. What it models, and how it makes kernel bugs visible:
//   - a launch runs its blocks one after another, in an order shuffled by the seed;
//   - a block's threads are fibers (ucontext), run one at a time; __syncthreads is a real barrier,
//     and between two barriers the threads run in an order shuffled by the seed, so a missing
//     barrier or a shared-memory race gives a wrong answer under some seed;
//   - shared memory is per block and starts as 0xFF bytes (CUDA's is uninitialised);
//   - out-of-bounds accesses: while emulated ops run (set_checked_memory), every CPU allocation
//     ends at a PROT_NONE page and is framed by canary bytes, and so is every shared-memory
//     buffer; a read or write past the end faults, a write before the start or into the padding
//     breaks a canary, and either fails the launch with the kernel's name (a read shortly before
//     the start returns canary bytes, 0xA5, rather than failing: the buffer ends at the guard page);
//   - CUDA_KERNEL_ASSERT(_MSG) fails the launch with the kernel's name, the block and the thread.
// A failed launch raises a c10::Error (a RuntimeError in Python).
#pragma once

#include <torch/library.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in index variables of the thread that runs now (set by the scheduler).
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __grid_constant__
#define __launch_bounds__(...)

void __syncthreads();

// Threads of a block never run at the same time, so plain read-modify-writes are atomic.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

template <typename T>
T atomicOr(T* address, T value) {
  static_assert(std::is_integral_v<T>, "atomicOr takes integers");
  const T old = *address;
  *address = old | value;
  return old;
}

inline int __ffsll(long long value) {
  return __builtin_ffsll(value);
}
inline int __popcll(unsigned long long value) {
  return __builtin_popcountll(value);
}
inline int __clzll(long long value) {
  return value == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(value));
}

// CUDA's min/max overloads, for the arguments of one type the kernels pass.
template <typename T>
constexpr T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
constexpr T max(T a, T b) {
  return a < b ? b : a;
}

#undef CUDA_KERNEL_ASSERT
#undef CUDA_KERNEL_ASSERT_MSG
#define CUDA_KERNEL_ASSERT_MSG(cond, msg)                                                \
  do {                                                                                   \
    if (!(cond)) ::sfpn::emulation::fail_assertion(#cond, msg, __FILE__, __LINE__); \
  } while (false)
#define CUDA_KERNEL_ASSERT(cond) CUDA_KERNEL_ASSERT_MSG(cond, "")

namespace sfpn::emulation {

// The opt-in shared memory per block of an H100/H200 (227 KiB).
constexpr int kMaxSharedBytesPerBlock = 227 * 1024;

struct Stream {};

struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

// Runs `thread_body` once per thread of every block of the grid (see the top of this file).
void run(const std::string& kernel, dim3 grid, dim3 block, size_t shared_bytes,
         const std::function<void()>& thread_body);

// Ends the calling thread's launch with an error (does not return).
[[noreturn]] void fail_assertion(const char* condition, const char* message, const char* file, int line);

// The current block's buffer of `bytes` for the shared declaration `key` (0xFF bytes at first).
void* shared_buffer(const void* key, size_t bytes);
// The current block's dynamic shared memory (the launch's shared_bytes).
void* dynamic_shared_buffer();

template <typename T>
T& block_shared(const void* key) {
  return *static_cast<T*>(shared_buffer(key, sizeof(T)));
}

template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_buffer());
}

// "sfpn::resize::cuda::upsample_add_kernel<float, float, int, 4>" from the compiler's function signature.
std::string name_from_signature(const char* pretty_function);

template <auto kernel>
const std::string& kernel_name() {
  static const std::string name = name_from_signature(__PRETTY_FUNCTION__);
  return name;
}

// The registration block of SFPN_CUDA_OPS: `impl` defines the op in sfpn_emulated instead.
struct OpTable {
  torch::Library& library;

  template <typename Function>
  void impl(const char* name, Function&& function) {
    library.def(name, std::forward<Function>(function));
  }
};

}  // namespace sfpn::emulation
