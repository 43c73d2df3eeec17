// CUDA non-maximum suppression: sfpn::nms, sfpn::batched_nms, sfpn::batched_nms_padded.
//
// Everything stays on the device, so batched_nms_padded makes no host sync and can be captured
// in a CUDA graph:
//   1. order the boxes by decreasing score (stable sort), then stably by class: each class is a
//      contiguous run, in score order, of the "class order";
//   2. overlap bitmask in 64 x 64 tiles, only for tiles whose rows and columns share a class
//      (the coordinate-offset trick would test every cross-class pair too);
//   3. the greedy scan on the GPU: one thread block per class walks the mask words of its rows
//      with the "removed" bits in shared memory (torchvision copies the mask to the host here);
//   4. stream compaction of the kept flags, in score order, into a -1 padded result + count.
// nms and batched_nms need their result's length on the host, so they end with one size read.
//
// Order and IoU as the CPU kernel: decreasing score, equal scores by increasing index, NaN scores
// first; IoU in float for half types (csrc/nms_iou.h), bit-identical to the CPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>

#include "nms.h"
#include "cuda/launch.cuh"  // last: the emulated build's CUDA names follow every other header

namespace sfpn::nms::cuda {
namespace {

constexpr int kWord = kBoxesPerWord;              // boxes per mask word = rows per tile
constexpr int kColumnCtasPerRowBlock = 16;        // CTAs striding over one row block's tiles
constexpr int kScanThreads = 256;
constexpr int kCompactThreads = 256;

// The mask holds, for row block rb, the tiles of column blocks rb..num_blocks-1: 64 rows of
// (num_blocks - rb) words, row-major, so that the scan reads a row's words coalesced. The band is
// sized for the worst case (one class) because the class sizes are only known on the device.
C10_HOST_DEVICE inline int64_t band_offset(int64_t row_block, int64_t num_blocks) {
  return kWord * (row_block * num_blocks - row_block * (row_block - 1) / 2);
}

// Bit c of mask word (row, column block) is set when box `row` overlaps box
// `column block * 64 + c` (later in class order, same class) with IoU > threshold. A CTA handles
// one row block and strides over its column blocks until they leave the row block's classes.
template <typename acc_t>
__global__ void __launch_bounds__(kWord) overlap_mask_kernel(
    int64_t n, int64_t num_blocks, const acc_t* __restrict__ boxes, const int64_t* __restrict__ classes,
    acc_t threshold, uint64_t* __restrict__ mask) {
  SFPN_SHARED(acc_t[kWord][5], column_box);  // x1, y1, x2, y2, area
  SFPN_SHARED(int64_t[kWord], column_class);
  const int64_t row_block = blockIdx.y;
  const int64_t row_begin = row_block * kWord;
  const int64_t row_end = min(n, row_begin + kWord);
  const int64_t row = row_begin + threadIdx.x;
  const bool has_row = row < row_end;
  const int64_t last_class = classes ? classes[row_end - 1] : 0;
  acc_t x1 = 0, y1 = 0, x2 = 0, y2 = 0, area = 0;
  int64_t row_class = 0;
  if (has_row) {
    x1 = boxes[4 * row], y1 = boxes[4 * row + 1], x2 = boxes[4 * row + 2], y2 = boxes[4 * row + 3];
    area = box_area(x1, y1, x2, y2);
    row_class = classes ? classes[row] : 0;
  }
  uint64_t* row_words = mask + band_offset(row_block, num_blocks) + threadIdx.x * (num_blocks - row_block);
  for (int64_t column_block = row_block + blockIdx.x; column_block < num_blocks; column_block += gridDim.x) {
    const int64_t column_begin = column_block * kWord;
    // Classes ascend in class order: once a column block starts past this row block's last
    // class, so do all later ones. The same value for every thread, so the exit is uniform.
    if (classes && classes[column_begin] > last_class) break;
    const int column_count = static_cast<int>(min(n - column_begin, static_cast<int64_t>(kWord)));
    __syncthreads();  // the previous tile's readers are done with the shared columns
    if (threadIdx.x < column_count) {
      const acc_t* box = boxes + 4 * (column_begin + threadIdx.x);
      column_box[threadIdx.x][0] = box[0];
      column_box[threadIdx.x][1] = box[1];
      column_box[threadIdx.x][2] = box[2];
      column_box[threadIdx.x][3] = box[3];
      column_box[threadIdx.x][4] = box_area(box[0], box[1], box[2], box[3]);
      column_class[threadIdx.x] = classes ? classes[column_begin + threadIdx.x] : 0;
    }
    __syncthreads();
    if (has_row) {
      uint64_t bits = 0;
      for (int c = column_block == row_block ? threadIdx.x + 1 : 0; c < column_count; ++c) {
        const acc_t* col = column_box[c];
        if (column_class[c] == row_class &&
            iou_above(x1, y1, x2, y2, area, col[0], col[1], col[2], col[3], col[4], threshold))
          bits |= uint64_t{1} << c;
      }
      row_words[column_block - row_block] = bits;
    }
  }
}

// The greedy scan. CTA b handles every class whose run starts in row block b: it walks the run's
// row blocks in order, resolves the 64 rows of a block serially against the diagonal tile (one
// thread, shared memory), then ORs the mask rows of the kept boxes into the "removed" words of
// the class's later blocks in parallel. keep[score position] = 1 for kept boxes, 0 otherwise.
__global__ void __launch_bounds__(kScanThreads) greedy_scan_kernel(
    int64_t n, int64_t num_blocks, const int64_t* __restrict__ classes, const uint64_t* __restrict__ mask,
    const int64_t* __restrict__ score_position, uint8_t* __restrict__ keep) {
  SFPN_DYNAMIC_SHARED(uint64_t, removed);  // one word per row block of the current class
  SFPN_SHARED(uint64_t[kWord], diagonal);
  SFPN_SHARED(uint64_t, run_starts);
  SFPN_SHARED(uint64_t, kept_rows);
  SFPN_SHARED(int64_t, run_end);
  const int tid = threadIdx.x;
  const int64_t block_begin = static_cast<int64_t>(blockIdx.x) * kWord;
  const int64_t block_end = min(n, block_begin + kWord);

  if (tid == 0) run_starts = 0;
  __syncthreads();
  if (tid < block_end - block_begin) {
    const int64_t i = block_begin + tid;
    if (i == 0 || (classes && classes[i] != classes[i - 1])) atomicOr(reinterpret_cast<unsigned long long*>(&run_starts), 1ull << tid);
  }
  __syncthreads();

  for (uint64_t starts = run_starts; starts != 0; starts &= starts - 1) {
    const int64_t start = block_begin + __ffsll(static_cast<long long>(starts)) - 1;
    if (tid == 0) {  // end of the run: first position of a larger class (binary search)
      int64_t lo = start + 1, hi = n;
      if (classes) {
        const int64_t cls = classes[start];
        while (lo < hi) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (classes[mid] == cls) lo = mid + 1; else hi = mid;
        }
      }
      run_end = classes ? lo : n;
    }
    __syncthreads();
    const int64_t end = run_end;
    const int64_t first_block = start / kWord, last_block = (end - 1) / kWord;
    for (int64_t w = tid; w <= last_block - first_block; w += kScanThreads) removed[w] = 0;
    __syncthreads();

    for (int64_t row_block = first_block; row_block <= last_block; ++row_block) {
      const int64_t base = row_block * kWord;
      const int lo = static_cast<int>(max(start, base) - base), hi = static_cast<int>(min(end, base + kWord) - base);
      const int64_t stride = num_blocks - row_block;  // words per mask row in this band
      const uint64_t* band = mask + band_offset(row_block, num_blocks);
      if (tid >= lo && tid < hi) diagonal[tid] = band[tid * stride];
      __syncthreads();
      if (tid == 0) {
        uint64_t dead = removed[row_block - first_block], kept = 0;
        for (int r = lo; r < hi; ++r) {
          if (!((dead >> r) & 1)) {
            kept |= uint64_t{1} << r;
            dead |= diagonal[r];
          }
        }
        kept_rows = kept;
      }
      __syncthreads();
      const uint64_t kept = kept_rows;
      if (tid >= lo && tid < hi) {
        const int64_t position = base + tid;
        keep[score_position ? score_position[position] : position] = static_cast<uint8_t>((kept >> tid) & 1);
      }
      for (int64_t w = row_block + 1 + tid; w <= last_block; w += kScanThreads) {
        uint64_t hit = 0;
        for (uint64_t rows = kept; rows != 0; rows &= rows - 1)
          hit |= band[(__ffsll(static_cast<long long>(rows)) - 1) * stride + (w - row_block)];
        removed[w - first_block] |= hit;
      }
      __syncthreads();
    }
  }
}

// out[k] = the k-th kept index in score order, for k < max_out; count = min(kept, max_out).
__global__ void compact_kernel(
    int64_t n, int64_t max_out, const uint8_t* __restrict__ keep, const int64_t* __restrict__ kept_through,
    const int64_t* __restrict__ score_order, int64_t* __restrict__ out, int64_t* __restrict__ count) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= n) return;
  const int64_t slot = kept_through[q] - 1;
  if (keep[q] && slot < max_out) out[slot] = score_order[q];
  if (q == n - 1) *count = min(kept_through[q], max_out);
}

// The engine of nms.h's operators, which have checked the arguments.
std::tuple<at::Tensor, at::Tensor> nms_padded(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                                              double iou_threshold, int64_t max_out) {
  const gpu::DeviceGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const auto long_options = boxes.options().dtype(at::kLong);
  at::Tensor out = at::full({max_out}, -1, long_options);
  if (n == 0) return {out, at::zeros({}, long_options)};

  const int64_t num_blocks = (n + kWord - 1) / kWord;
  TORCH_CHECK(num_blocks <= 65535, "sfpn::nms: at most ", 65535 * kWord, " boxes are supported, got ", n);
  const size_t removed_bytes = static_cast<size_t>(num_blocks) * sizeof(uint64_t);
  const int max_shared = gpu::max_shared_bytes_per_block();
  TORCH_CHECK(removed_bytes + (kWord + 2) * sizeof(uint64_t) + sizeof(int64_t) <= static_cast<size_t>(max_shared),
      "sfpn::nms: ", n, " boxes need more shared memory than the device has for the scan");

  // 1. Class order: stable sort by decreasing score, then stable sort by class.
  const at::Tensor score_order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor class_order = score_order, sorted_classes, score_position;
  if (idxs) {
    auto [classes_by_class, permutation] = at::sort(idxs->index_select(0, score_order), /*stable=*/true, 0, false);
    sorted_classes = classes_by_class;
    score_position = permutation;  // class-order position -> score-order position
    class_order = score_order.index_select(0, permutation);
  }
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kByte));
  const at::Tensor mask = at::empty({band_offset(num_blocks, num_blocks)}, long_options);
  const gpu::Stream stream = gpu::current_stream();
  const int64_t* classes = idxs ? sorted_classes.const_data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "sfpn_nms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sorted_boxes = boxes.index_select(0, class_order).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    // 2. Overlap mask.
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(num_blocks, kColumnCtasPerRowBlock)), static_cast<unsigned>(num_blocks));
    gpu::launch<overlap_mask_kernel<acc_t>>({grid, dim3(kWord)}, stream,
        n, num_blocks, sorted_boxes.const_data_ptr<acc_t>(), classes, threshold_in<acc_t>(iou_threshold),
        reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>()));
  });

  // 3. Greedy scan, one CTA per row block (it handles the classes starting there).
  gpu::launch<greedy_scan_kernel>({dim3(static_cast<unsigned>(num_blocks)), dim3(kScanThreads), removed_bytes}, stream,
      n, num_blocks, classes, reinterpret_cast<const uint64_t*>(mask.const_data_ptr<int64_t>()),
      idxs ? score_position.const_data_ptr<int64_t>() : nullptr, keep.mutable_data_ptr<uint8_t>());

  // 4. Kept indices in score order.
  const at::Tensor kept_through = at::cumsum(keep, 0, at::kLong);
  at::Tensor count = at::empty({}, long_options);
  gpu::launch<compact_kernel>({dim3(static_cast<unsigned>((n + kCompactThreads - 1) / kCompactThreads)), dim3(kCompactThreads)},
      stream, n, max_out, keep.const_data_ptr<uint8_t>(), kept_through.const_data_ptr<int64_t>(),
      score_order.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>());
  return {out, count};
}

}  // namespace

SFPN_CUDA_OPS(m) {
  register_nms_ops<nms_padded>(m);
}

}  // namespace sfpn::nms::cuda
