// The recycling allocator of recycled_memory.h.
#include "cpu/recycled_memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <deque>
#include <mutex>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace sfpn::memory {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

struct Block {
  void* data;
  size_t capacity;  // a multiple of kHugePage
};

class RecyclingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes < kMinRecycledBytes) return c10::GetDefaultCPUAllocator()->allocate(nbytes);
    const size_t capacity = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
    Block block = take(capacity);
    if (block.data == nullptr) block = fresh(capacity);
    c10::profiledCPUMemoryReporter().New(block.data, block.capacity);
    return {block.data, new Block(block), &RecyclingAllocator::release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static RecyclingAllocator& instance() {
    static auto* allocator = new RecyclingAllocator();  // never destroyed: tensors may outlive exit
    return *allocator;
  }

 private:
  // The smallest free block of at least `capacity` bytes and at most 1/8 more, if any; of equal
  // ones the last freed, whose pages are the likeliest to be in cache still.
  Block take(size_t capacity) {
    const std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->capacity >= capacity && it->capacity <= capacity + capacity / 8 &&
          (best == free_.end() || it->capacity <= best->capacity)) {
        best = it;
      }
    }
    if (best == free_.end()) return {nullptr, 0};
    const Block block = *best;
    free_.erase(best);
    free_bytes_ -= block.capacity;
    return block;
  }

  // New memory from the system, in whole huge pages with the huge-page hint given before the
  // first touch; the free list is given back first when the system has none.
  Block fresh(size_t capacity) {
    void* data = nullptr;
    if (posix_memalign(&data, kHugePage, capacity) != 0) {
      trim(0);
      TORCH_CHECK_WITH(OutOfMemoryError, posix_memalign(&data, kHugePage, capacity) == 0,
                       "sfpn: out of CPU memory allocating ", capacity, " bytes");
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(data, capacity, MADV_HUGEPAGE);
#endif
    return {data, capacity};
  }

  static void release(void* context) {
    const Block* block = static_cast<const Block*>(context);
    c10::profiledCPUMemoryReporter().Delete(block->data);
    instance().keep(*block);
    delete block;
  }

  void keep(const Block& block) {
    if (block.capacity > kMaxRecycledBytes) {
      std::free(block.data);
      return;
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(block);
    free_bytes_ += block.capacity;
    trim_locked(kMaxRecycledBytes);
  }

  // Frees the oldest free blocks until the free list holds at most `limit` bytes.
  void trim(size_t limit) {
    const std::lock_guard<std::mutex> lock(mutex_);
    trim_locked(limit);
  }

  void trim_locked(size_t limit) {
    while (free_bytes_ > limit) {
      std::free(free_.front().data);
      free_bytes_ -= free_.front().capacity;
      free_.pop_front();
    }
  }

  std::mutex mutex_;
  std::deque<Block> free_;  // oldest first
  size_t free_bytes_ = 0;
};

}  // namespace

at::Tensor empty_recycled(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat layout) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::detail::empty_generic(sizes, &RecyclingAllocator::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), layout);
}

}  // namespace sfpn::memory
