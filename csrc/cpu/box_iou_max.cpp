// sfpn::box_iou_max on the CPU: the IoU matrix of `boxes1` (G, 4) against `boxes2` (P, 4) reduced
// both ways without being kept: for each box of boxes2 its largest IoU and the first box1 that
// gives it; for each box1 its largest IoU, and then which boxes of boxes2 reach it (an anchor
// matcher's "low-quality" matches). Eagerly the matrix and its reductions are ~20 ATen passes
// over G x P values; here two passes in registers, a block of boxes2 at a time. The IoU is the
// reference's operations in its order (`box_iou` in sfpn/ops/box_iou_max.py), so the values are
// the same bits and a tie there is a tie here (the intersection has two uses, so GCC cannot fold
// its product into the union's subtraction). Schema, Python checks and reference:
// sfpn/ops/box_iou_max.py.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/vector_clones.h"

namespace sfpn::box_iou_max::cpu {
namespace {

// boxes2 are taken this many at a time, as columns, so that the loops over them run in vector
// lanes for each box1.
constexpr int64_t kBlock = 256;
// IoUs per parallel task at least: small problems run on one thread.
constexpr int64_t kMinTaskIous = int64_t(1) << 15;

// The integer lanes that comparing two registers of scalar_t lanes gives (GCC's vector extension),
// and the integer of that width, in which a block keeps its box1 indices and flags.
template <typename scalar_t>
struct Mask;
template <>
struct Mask<float> {
  using index_t = int32_t;
  typedef int32_t mask_t __attribute__((vector_size(64)));
};
template <>
struct Mask<double> {
  using index_t = int64_t;
  typedef int64_t mask_t __attribute__((vector_size(64)));
};

// A block of boxes2 as columns (x0, y0, x1, y1 and the clamped area; past `count` zero boxes,
// whose IoUs are 0 and never written out) and its results, each box2's best IoU, the box1 giving
// it and whether it reaches some box1's best.
template <typename scalar_t>
struct Block {
  using index_t = typename Mask<scalar_t>::index_t;
  alignas(64) scalar_t x0[kBlock], y0[kBlock], x1[kBlock], y1[kBlock], area[kBlock], best[kBlock];
  alignas(64) index_t index[kBlock], reached[kBlock];
  int64_t count = 0;
};

// The reference's area: (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0).
template <typename scalar_t>
inline scalar_t box_area(scalar_t x0, scalar_t y0, scalar_t x1, scalar_t y1) {
  return std::max<scalar_t>(x1 - x0, 0) * std::max<scalar_t>(y1 - y0, 0);
}

// Loads boxes[begin, begin + count) into the block's columns, zero boxes after them; false if a
// coordinate is not finite.
template <typename scalar_t>
bool load_block(const scalar_t* boxes, int64_t begin, int64_t count, Block<scalar_t>& b) {
  bool finite = true;
  for (int64_t i = 0; i < kBlock; ++i) {
    const scalar_t* box = boxes + (begin + i) * 4;
    const bool inside = i < count;
    b.x0[i] = inside ? box[0] : 0, b.y0[i] = inside ? box[1] : 0;
    b.x1[i] = inside ? box[2] : 0, b.y1[i] = inside ? box[3] : 0;
    b.area[i] = box_area(b.x0[i], b.y0[i], b.x1[i], b.y1[i]);
    finite &= std::isfinite(b.x0[i]) && std::isfinite(b.y0[i]) && std::isfinite(b.x1[i]) && std::isfinite(b.y1[i]);
  }
  b.count = count;
  return finite;
}

// `iou`: the reference's IoU of box1 (a*, broadcast) and a register of boxes2, operation by
// operation (torch.minimum/maximum and clamp as selects: the same values for finite boxes).
template <typename scalar_t, typename V = sfpn::cpu::lanes_t<scalar_t>>
[[gnu::always_inline]] inline void iou_lanes(const V& ax0, const V& ay0, const V& ax1, const V& ay1, const V& a_area,
                                             const V& bx0, const V& by0, const V& bx1, const V& by1, const V& b_area,
                                             V& iou) {
  const V zero = {}, tiny = zero + static_cast<scalar_t>(1e-12);
  V width = (bx1 < ax1 ? bx1 : ax1) - (bx0 > ax0 ? bx0 : ax0);
  V height = (by1 < ay1 ? by1 : ay1) - (by0 > ay0 ? by0 : ay0);
  width = width > zero ? width : zero;
  height = height > zero ? height : zero;
  const V inter = width * height;
  const V union_area = (a_area + b_area) - inter;
  iou = inter / (union_area > tiny ? union_area : tiny);
}

// One pass over a block: with `keep_best`, each box2's best IoU and the first box1 giving it (a
// strict `>` keeps the first of equals, as torch.max(dim) does) and each box1's best over the
// block folded into `box1_best`; otherwise whether each box2 reaches `box1_best` of some box1
// whose best is positive. x0..area are boxes1's columns, G of them.
template <typename scalar_t>
SFPN_VECTOR_CLONES void iou_pass(const scalar_t* x0, const scalar_t* y0, const scalar_t* x1, const scalar_t* y1,
                                 const scalar_t* area, int64_t G, Block<scalar_t>& b, scalar_t* box1_best,
                                 bool keep_best) {
  using V = sfpn::cpu::lanes_t<scalar_t>;
  using M = typename Mask<scalar_t>::mask_t;
  constexpr int64_t lanes = sfpn::cpu::Lanes<scalar_t>::size;
  auto load = [](const auto* from, auto& to) { std::memcpy(&to, from, sizeof to); };
  auto store = [](const auto& from, auto* to) { std::memcpy(to, &from, sizeof from); };
  const V zero = {};
  const M none = {};
  for (int64_t i = 0; i < kBlock; i += lanes) {
    store(zero - 1, b.best + i), store(none, b.index + i), store(none, b.reached + i);
  }
  for (int64_t g = 0; g < G; ++g) {
    if (!keep_best && !(box1_best[g] > 0)) continue;
    const V ax0 = zero + x0[g], ay0 = zero + y0[g], ax1 = zero + x1[g], ay1 = zero + y1[g], a_area = zero + area[g];
    const V target = zero + box1_best[g];
    const M box1 = none + static_cast<typename Mask<scalar_t>::index_t>(g);
    V block_best = zero - 1;
    for (int64_t i = 0; i < kBlock; i += lanes) {
      V bx0, by0, bx1, by1, b_area;
      load(b.x0 + i, bx0), load(b.y0 + i, by0), load(b.x1 + i, bx1), load(b.y1 + i, by1), load(b.area + i, b_area);
      V v;
      iou_lanes<scalar_t>(ax0, ay0, ax1, ay1, a_area, bx0, by0, bx1, by1, b_area, v);
      if (keep_best) {
        V best;
        M index;
        load(b.best + i, best), load(b.index + i, index);
        const M better = v > best;
        store(better ? v : best, b.best + i), store(better ? box1 : index, b.index + i);
        block_best = v > block_best ? v : block_best;
      } else {
        M reached;
        load(b.reached + i, reached);
        store(reached | (v == target), b.reached + i);
      }
    }
    if (keep_best) {
      // Only the block's real boxes count: the zero boxes past them have IoU 0, which a box1's
      // best (at least 0) already covers.
      for (int64_t l = 0; l < lanes; ++l) box1_best[g] = std::max(box1_best[g], block_best[l]);
    }
  }
}

template <typename scalar_t>
void box_iou_max_kernel(const at::Tensor& boxes1, const at::Tensor& boxes2, at::Tensor& best, at::Tensor& index,
                        at::Tensor& reached) {
  const int64_t G = boxes1.size(0), P = boxes2.size(0);
  // boxes1 as columns: a handful of ground-truth boxes, or a few hundred.
  std::vector<scalar_t> x0(G), y0(G), x1(G), y1(G), area(G);
  const scalar_t* from = boxes1.const_data_ptr<scalar_t>();
  for (int64_t g = 0; g < G; ++g) {
    const scalar_t* box = from + g * 4;
    TORCH_CHECK(std::isfinite(box[0]) && std::isfinite(box[1]) && std::isfinite(box[2]) && std::isfinite(box[3]),
                "sfpn::box_iou_max: boxes1 must have finite coordinates, got box ", g, " = (", box[0], ", ", box[1],
                ", ", box[2], ", ", box[3], ")");
    x0[g] = box[0], y0[g] = box[1], x1[g] = box[2], y1[g] = box[3], area[g] = box_area(box[0], box[1], box[2], box[3]);
  }
  const int64_t blocks = (P + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, kMinTaskIous / (G * kBlock));
  const scalar_t* boxes = boxes2.const_data_ptr<scalar_t>();
  // Runs `pass(block)` on every block of boxes2, loaded in turn; false if one was not finite.
  auto for_each_block = [&](auto&& pass) {
    std::atomic<bool> finite{true};
    at::parallel_for(0, blocks, grain, [&](int64_t first, int64_t last) {
      auto block = std::make_unique<Block<scalar_t>>();
      for (int64_t i = first; i < last; ++i) {
        if (!load_block(boxes, i * kBlock, std::min(kBlock, P - i * kBlock), *block)) finite = false;
        pass(i * kBlock, *block);
      }
    });
    return finite.load();
  };
  // Pass 1; a task's best IoU of each box1 takes its thread's row (at::parallel_for runs one task
  // per thread at most), folded after.
  std::vector<scalar_t> task_best(at::get_num_threads() * G, scalar_t(-1));
  scalar_t* to_best = best.mutable_data_ptr<scalar_t>();
  int64_t* to_index = index.mutable_data_ptr<int64_t>();
  const bool finite = for_each_block([&](int64_t begin, Block<scalar_t>& b) {
    iou_pass(x0.data(), y0.data(), x1.data(), y1.data(), area.data(), G, b, task_best.data() + at::get_thread_num() * G,
             true);
    std::copy(b.best, b.best + b.count, to_best + begin);
    std::copy(b.index, b.index + b.count, to_index + begin);
  });
  TORCH_CHECK(finite, "sfpn::box_iou_max: boxes2 must have finite coordinates, got a NaN or an infinity");
  std::vector<scalar_t> box1_best(G, scalar_t(-1));
  for (size_t row = 0; row < task_best.size(); row += G) {
    for (int64_t g = 0; g < G; ++g) box1_best[g] = std::max(box1_best[g], task_best[row + g]);
  }
  bool* to_reached = reached.mutable_data_ptr<bool>();
  for_each_block([&](int64_t begin, Block<scalar_t>& b) {
    iou_pass(x0.data(), y0.data(), x1.data(), y1.data(), area.data(), G, b, box1_best.data(), false);
    for (int64_t i = 0; i < b.count; ++i) to_reached[begin + i] = b.reached[i] != 0;
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> box_iou_max(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  constexpr const char* op = "box_iou_max";
  for (const auto& [name, boxes] : {std::pair<const char*, const at::Tensor&>{"boxes1", boxes1}, {"boxes2", boxes2}}) {
    TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "sfpn::", op, ": ", name, " must be (K, 4), got shape ",
                boxes.sizes());
    TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble, "sfpn::", op, ": ", name,
                " must be float32 or float64, got ", boxes.scalar_type());
  }
  checks::check_same_device(op, "boxes2", boxes2, "boxes1", boxes1);
  TORCH_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), "sfpn::", op, ": boxes2 must have the dtype of boxes1 (",
              boxes1.scalar_type(), "), got ", boxes2.scalar_type());
  const at::Tensor first = boxes1.contiguous(), second = boxes2.contiguous();
  const int64_t num_boxes2 = second.size(0);
  at::Tensor best = at::empty({num_boxes2}, second.options());
  at::Tensor index = at::empty({num_boxes2}, second.options().dtype(at::kLong));
  at::Tensor reached = at::empty({num_boxes2}, second.options().dtype(at::kBool));
  if (first.size(0) == 0) {  // no boxes1: IoU 0 with nothing, matched to index 0, nobody's best
    best.zero_(), index.zero_(), reached.zero_();
    return {best, index, reached};
  }
  AT_DISPATCH_FLOATING_TYPES(second.scalar_type(), "sfpn::box_iou_max",
                             [&] { box_iou_max_kernel<scalar_t>(first, second, best, index, reached); });
  return {best, index, reached};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("box_iou_max", &box_iou_max);
}

}  // namespace sfpn::box_iou_max::cpu
