// Runtime of the CUDA emulation (cuda_emulation.h): the fiber scheduler, checked memory, and the
// control operators of the test library:
//   sfpn_emulated::set_seed(int seed)                 the seed of the block and thread orders
//   sfpn_emulated::set_checked_memory(bool enabled)   CPU tensors allocated in checked buffers
// Single-threaded by design: one launch at a time, every fiber on the calling thread.
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#include "cuda/launch.cuh"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace sfpn::emulation {
namespace {

constexpr unsigned char kPoison = 0xFF;  // fresh memory: NaN as float, -1 as an integer
constexpr unsigned char kCanary = 0xA5;  // the bytes around a checked buffer
constexpr size_t kAlignment = 16;        // of a checked buffer's start (CUDA's vector loads)
constexpr size_t kMinCanaryBytes = 64;   // before a checked buffer at least
constexpr size_t kFiberStackBytes = 256 * 1024;
constexpr unsigned int kMaxThreadsPerBlock = 1024;

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// ---- checked buffers -------------------------------------------------------------------------
// [PROT_NONE page][canary ... data, canary up to the 16-byte boundary][PROT_NONE page]
// The data ends at (or within 15 bytes of) an inaccessible page, so a read or write past the end
// faults; a write into the canary bytes on either side is found by check_canaries().
struct Region {
  char* mapping;
  size_t mapping_bytes;
  char* data;
  size_t bytes;
  char* end() const {
    return data + bytes;
  }
  char* accessible_begin() const {
    return mapping + page_size();
  }
  char* accessible_end() const {
    return mapping + mapping_bytes - page_size();
  }
};

std::mutex regions_mutex;
std::map<const char*, Region> regions;  // by data pointer

void* checked_alloc(size_t bytes) {
  const size_t page = page_size();
  const size_t padded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  const size_t inner = (padded + kMinCanaryBytes + page - 1) / page * page;
  const size_t mapping_bytes = inner + 2 * page;
  void* mapping = mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(mapping != MAP_FAILED, "cuda emulation: cannot map ", mapping_bytes, " bytes");
  Region region{static_cast<char*>(mapping), mapping_bytes, nullptr, bytes};
  region.data = region.accessible_end() - padded;
  mprotect(region.mapping, page, PROT_NONE);
  mprotect(region.accessible_end(), page, PROT_NONE);
  std::memset(region.accessible_begin(), kCanary, region.accessible_end() - region.accessible_begin());
  std::memset(region.data, kPoison, bytes);
  const std::lock_guard<std::mutex> lock(regions_mutex);
  regions.emplace(region.data, region);
  return region.data;
}

void checked_free(void* data) {
  if (data == nullptr) return;
  Region region;
  {
    const std::lock_guard<std::mutex> lock(regions_mutex);
    const auto found = regions.find(static_cast<const char*>(data));
    TORCH_INTERNAL_ASSERT(found != regions.end(), "cuda emulation: freeing an unknown buffer");
    region = found->second;
    regions.erase(found);
  }
  munmap(region.mapping, region.mapping_bytes);
}

bool all_canary(const char* begin, const char* end) {
  return std::all_of(begin, end, [](char c) { return static_cast<unsigned char>(c) == kCanary; });
}

// The first checked buffer whose canary bytes were overwritten, described; empty when none.
std::string broken_canary() {
  const std::lock_guard<std::mutex> lock(regions_mutex);
  for (const auto& [data, region] : regions) {
    if (!all_canary(region.accessible_begin(), region.data)) {
      return "wrote before the start of a " + std::to_string(region.bytes) + "-byte buffer";
    }
    if (!all_canary(region.end(), region.accessible_end())) {
      return "wrote past the end of a " + std::to_string(region.bytes) + "-byte buffer";
    }
  }
  return {};
}

std::string describe_address(const char* address) {
  const std::lock_guard<std::mutex> lock(regions_mutex);
  for (const auto& [data, region] : regions) {
    if (address >= region.end() && address < region.accessible_end() + page_size()) {
      return "accessed " + std::to_string(address - region.end()) + " bytes past the end of a " +
             std::to_string(region.bytes) + "-byte buffer";
    }
    if (address >= region.mapping && address < region.data) {
      return "accessed " + std::to_string(region.data - address) + " bytes before the start of a " +
             std::to_string(region.bytes) + "-byte buffer";
    }
  }
  std::ostringstream out;
  out << "accessed invalid address " << static_cast<const void*>(address);
  return out.str();
}

// CPU tensors in checked buffers while emulated ops run (see set_checked_memory).
class CheckedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    void* data = checked_alloc(bytes);
    return {data, data, &checked_free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override {
    return &checked_free;
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CheckedAllocator checked_allocator;
c10::Allocator* default_cpu_allocator = nullptr;

void set_checked_memory(bool enabled) {
  // Priority 255: the highest, so that each switch takes effect.
  if (enabled && default_cpu_allocator == nullptr) {
    default_cpu_allocator = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&checked_allocator, 255);
  } else if (!enabled && default_cpu_allocator != nullptr) {
    c10::SetCPUAllocator(default_cpu_allocator, 255);
    default_cpu_allocator = nullptr;
  }
}

// ---- fibers ----------------------------------------------------------------------------------
enum class FiberState { kReady, kAtBarrier, kDone };

struct Fiber {
  ucontext_t context;
  uint3 index;
  FiberState state;
};

// Stacks for the threads of a block, reused by every block, each above a PROT_NONE page.
char* fiber_stack(size_t i) {
  static std::vector<char*> stacks;
  while (stacks.size() <= i) {
    const size_t bytes = kFiberStackBytes + page_size();
    void* stack = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(stack != MAP_FAILED, "cuda emulation: cannot map a thread stack");
    mprotect(stack, page_size(), PROT_NONE);
    stacks.push_back(static_cast<char*>(stack) + page_size());
  }
  return stacks[i];
}

struct Launch {
  const std::string& kernel;
  const std::function<void()>& thread_body;
  size_t shared_bytes;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  std::map<const void*, void*> shared;  // this block's static shared buffers, by declaration
  void* dynamic_shared = nullptr;
  std::string failure;                  // set by a thread that ended the launch
  const char* fault_address = nullptr;  // set by the fault handler
};

Launch* active = nullptr;
ucontext_t scheduler;  // where a fiber returns to: the barrier, its end, or a failure
uint64_t seed = 0;
struct sigaction previous_segv, previous_bus;

void fiber_main() {
  active->thread_body();
  active->current->state = FiberState::kDone;
}  // returns to `scheduler` through uc_link

// A fault while a fiber runs is the kernel's: note it and return to the scheduler. Any other
// fault goes back to the handler that was there before (the faulting access then repeats).
void on_fault(int signal, siginfo_t* info, void*) {
  if (active == nullptr || active->current == nullptr) {
    sigaction(signal, signal == SIGSEGV ? &previous_segv : &previous_bus, nullptr);
    return;
  }
  active->fault_address = static_cast<const char*>(info->si_addr);
  setcontext(&scheduler);
}

void install_fault_handler() {
  thread_local std::vector<char> alternate_stack;
  if (alternate_stack.empty()) {  // the handler must run when a fiber overflowed its stack
    alternate_stack.resize(64 * 1024);
    stack_t stack{};
    stack.ss_sp = alternate_stack.data();
    stack.ss_size = alternate_stack.size();
    sigaltstack(&stack, nullptr);
  }
  struct sigaction action {};
  action.sa_sigaction = &on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &previous_segv);
  sigaction(SIGBUS, &action, &previous_bus);
}

void restore_fault_handler() {
  sigaction(SIGSEGV, &previous_segv, nullptr);
  sigaction(SIGBUS, &previous_bus, nullptr);
}

std::string where(const Launch& launch) {
  std::ostringstream out;
  out << "block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << ")";
  if (launch.current != nullptr) {
    const uint3& t = launch.current->index;
    out << ", thread (" << t.x << ", " << t.y << ", " << t.z << ")";
  }
  return out.str();
}

void check_geometry(const std::string& kernel, dim3 grid, dim3 block, size_t shared_bytes) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreadsPerBlock && block.z <= 64, kernel,
              ": invalid block size (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 &&
                  grid.z <= 65535,
              kernel, ": invalid grid size (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(shared_bytes <= static_cast<size_t>(kMaxSharedBytesPerBlock), kernel, ": ", shared_bytes,
              " bytes of dynamic shared memory exceed the ", kMaxSharedBytesPerBlock, " a block may have");
}

void release_block_memory(Launch& launch) {
  for (const auto& [key, buffer] : launch.shared) checked_free(buffer);
  launch.shared.clear();
  checked_free(launch.dynamic_shared);
  launch.dynamic_shared = nullptr;
}

// Runs one block; returns false when a thread failed (launch.failure / fault_address say why).
bool run_block(Launch& launch, std::mt19937_64& rng) {
  launch.dynamic_shared = launch.shared_bytes > 0 ? checked_alloc(launch.shared_bytes) : nullptr;
  const unsigned int threads = blockDim.x * blockDim.y * blockDim.z;
  launch.fibers.assign(threads, Fiber{});
  for (unsigned int i = 0; i < threads; ++i) {
    Fiber& fiber = launch.fibers[i];
    fiber.index = {i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y)};
    fiber.state = FiberState::kReady;
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber_stack(i);
    fiber.context.uc_stack.ss_size = kFiberStackBytes;
    fiber.context.uc_link = &scheduler;
    makecontext(&fiber.context, &fiber_main, 0);
  }
  std::vector<unsigned int> order;
  while (true) {  // one pass per stretch between barriers
    order.clear();
    for (unsigned int i = 0; i < threads; ++i) {
      if (launch.fibers[i].state == FiberState::kReady) order.push_back(i);
    }
    if (order.empty()) return true;
    std::shuffle(order.begin(), order.end(), rng);
    for (unsigned int i : order) {
      launch.current = &launch.fibers[i];
      threadIdx = launch.current->index;
      swapcontext(&scheduler, &launch.current->context);
      if (!launch.failure.empty() || launch.fault_address != nullptr) return false;
    }
    launch.current = nullptr;
    for (Fiber& fiber : launch.fibers) {
      if (fiber.state == FiberState::kAtBarrier) fiber.state = FiberState::kReady;
    }
  }
}

}  // namespace

void run(const std::string& kernel, dim3 grid, dim3 block, size_t shared_bytes,
         const std::function<void()>& thread_body) {
  check_geometry(kernel, grid, block, shared_bytes);
  TORCH_CHECK(active == nullptr, kernel, ": cuda emulation launches do not nest");
  Launch launch{kernel, thread_body, shared_bytes};
  gridDim = grid;
  blockDim = block;
  std::vector<uint3> blocks;
  for (unsigned int z = 0; z < grid.z; ++z)
    for (unsigned int y = 0; y < grid.y; ++y)
      for (unsigned int x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
  std::mt19937_64 rng(seed);
  std::shuffle(blocks.begin(), blocks.end(), rng);

  active = &launch;
  install_fault_handler();
  std::string error;
  for (const uint3& b : blocks) {
    blockIdx = b;
    const bool ok = run_block(launch, rng);
    if (!ok) {
      error = launch.fault_address != nullptr ? describe_address(launch.fault_address) : launch.failure;
      error += " in " + where(launch);
    }
    launch.current = nullptr;
    release_block_memory(launch);
    if (!ok) break;
  }
  restore_fault_handler();
  active = nullptr;
  if (error.empty()) error = broken_canary();
  TORCH_CHECK(error.empty(), "CUDA kernel ", kernel, " failed (emulated, seed ", seed, "): ", error);
}

void __attribute__((noreturn))
fail_assertion(const char* condition, const char* message, const char* file, int line) {
  TORCH_CHECK(active != nullptr && active->current != nullptr, "CUDA_KERNEL_ASSERT outside a kernel: ", condition);
  std::ostringstream out;
  out << "device-side assertion `" << condition << "` failed";
  if (message[0] != '\0') out << " (" << message << ")";
  out << " at " << file << ":" << line;
  active->failure = out.str();
  setcontext(&scheduler);
  __builtin_unreachable();
}

void* shared_buffer(const void* key, size_t bytes) {
  TORCH_CHECK(active != nullptr, "shared memory outside a kernel");
  void*& buffer = active->shared[key];
  if (buffer == nullptr) buffer = checked_alloc(bytes);
  return buffer;
}

void* dynamic_shared_buffer() {
  TORCH_CHECK(active != nullptr && active->dynamic_shared != nullptr,
              "extern shared memory used by a launch that gave it no bytes");
  return active->dynamic_shared;
}

std::string name_from_signature(const char* pretty_function) {
  std::string name(pretty_function);
  const std::string marker = "kernel = ";
  size_t begin = name.find(marker);
  if (begin == std::string::npos) return name;
  begin += marker.size();
  size_t end = name.find_first_of(";]", begin);
  name = name.substr(begin, end - begin);
  const std::string anonymous = "{anonymous}::";
  for (size_t at = name.find(anonymous); at != std::string::npos; at = name.find(anonymous)) {
    name.erase(at, anonymous.size());
  }
  return name;
}

}  // namespace sfpn::emulation

void __syncthreads() {
  using namespace sfpn::emulation;
  TORCH_CHECK(active != nullptr && active->current != nullptr, "__syncthreads outside a kernel");
  Fiber* fiber = active->current;
  fiber->state = FiberState::kAtBarrier;
  swapcontext(&fiber->context, &scheduler);
}

TORCH_LIBRARY(sfpn_emulated, m) {
  m.def("set_seed(int seed) -> ()", [](int64_t value) { sfpn::emulation::seed = static_cast<uint64_t>(value); });
  m.def("set_checked_memory(bool enabled) -> ()", &sfpn::emulation::set_checked_memory);
}
