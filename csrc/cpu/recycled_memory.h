// Memory for the large outputs of the CPU kernels, recycled between calls.
//
// Why. A fresh multi-megabyte tensor is fresh pages: glibc maps every block above 32 MiB anew and
// unmaps it when freed, so each call faults its output in again, a 4 KiB page at a time, and the
// kernel zeroes every page first. For the FPN top-down step at the COCO shape (P3->P2, a 137 MB
// output) that costs ~190 ms against ~15 ms of writing it (measured on the 2-core dev machine);
// huge pages cut it to ~30 ms when the kernel finds free 2 MiB pages, and not when memory is
// fragmented, which made the op's time vary 5x between runs. A training step allocates the same
// outputs and gradients at every step: blocks freed by one step are handed to the next, already
// mapped, so neither the faults nor the zeroing recur.
//
// What. empty_recycled() allocates through a process-wide allocator that takes blocks of at least
// kMinRecycledBytes from a free list of recently freed blocks (the smallest one that fits with at
// most 1/8 to spare) before asking the system, in whole 2 MiB huge pages with the huge-page hint;
// a freed block joins the free list, which keeps at most kMaxRecycledBytes (the oldest leave
// first). Smaller tensors come from PyTorch's default CPU allocator.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/ArrayRef.h>

#include <cstddef>

namespace sfpn::memory {

// Tensors below this take PyTorch's default allocator: few pages to fault, and glibc recycles them.
constexpr size_t kMinRecycledBytes = size_t(2) << 20;
// The most memory that freed blocks keep while they wait for reuse: a COCO-size R50 training step
// (batch 2 at 800 x 1344, fp32) frees ~440 MB of such outputs and gradients per step.
constexpr size_t kMaxRecycledBytes = size_t(1) << 30;

// An uninitialised CPU tensor of `sizes` (options' dtype) laid out as `layout` (contiguous or
// channels_last), from recycled memory when large.
at::Tensor empty_recycled(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat layout);

}  // namespace sfpn::memory
