// CPU non-maximum suppression: sfpn::nms, sfpn::batched_nms, sfpn::batched_nms_padded.
//
// Per-class suppression instead of torchvision's coordinate-offset trick: the boxes are ordered
// by decreasing score once, grouped by class with a stable counting sort, and the greedy scan
// runs inside each class only, so no cross-class pair is ever tested. Classes are independent,
// so they are spread over the intra-op threads, largest first.
//
// Order: kept indices by decreasing score; equal scores by increasing index; NaN scores first
// (torch.sort's descending order). The IoU test is csrc/nms_iou.h, in float for half types.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "nms.h"

namespace sfpn::nms::cpu {
namespace {

// Positions 0..n-1 ordered by decreasing score (NaN first), equal scores by increasing position.
template <typename scalar_t>
std::vector<int64_t> order_by_score(const scalar_t* scores, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  struct Entry {
    acc_t score;
    int64_t index;
  };
  std::vector<Entry> entries(n);
  for (int64_t i = 0; i < n; ++i) entries[i] = {static_cast<acc_t>(scores[i]), i};
  // A strict total order (indices are unique), so std::sort is deterministic without stability.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
    if (a_nan != b_nan) return a_nan;
    if (!a_nan && a.score != b.score) return a.score > b.score;
    return a.index < b.index;
  });
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = entries[i].index;
  return order;
}

// The score-order positions 0..n-1 regrouped by class (ascending class id, score order kept
// within a class), and the runs [runs[k], runs[k + 1]) of equal class in that sequence.
struct ClassGroups {
  std::vector<int64_t> positions;
  std::vector<int64_t> runs;
};

ClassGroups group_by_class(const int64_t* classes, const std::vector<int64_t>& order) {
  const int64_t n = static_cast<int64_t>(order.size());
  ClassGroups groups;
  groups.positions.resize(n);
  if (classes == nullptr) {  // plain nms: one class
    std::iota(groups.positions.begin(), groups.positions.end(), int64_t{0});
    groups.runs = {0, n};
    return groups;
  }
  const auto [min_it, max_it] = std::minmax_element(classes, classes + n);
  // max - min in uint64 arithmetic, exact for any pair of int64 ids (it may exceed INT64_MAX);
  // the range, one more, would wrap to 0 for the full int64 span, so it is only formed once the
  // span is known to be small.
  const uint64_t span = static_cast<uint64_t>(*max_it) - static_cast<uint64_t>(*min_it);
  std::vector<int64_t> class_of_position(n);  // class of the q-th box in score order
  for (int64_t q = 0; q < n; ++q) class_of_position[q] = classes[order[q]];
  if (span < static_cast<uint64_t>(2 * n + 1024)) {
    // Dense ids (labels, pyramid levels): a stable counting sort, O(n + range). The offsets
    // class - min fit in int64 here, as the span is small.
    const uint64_t range = span + 1;
    std::vector<int64_t> start(range + 1, 0);
    for (int64_t q = 0; q < n; ++q) ++start[class_of_position[q] - *min_it + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    for (uint64_t c = 0; c < range; ++c)
      if (start[c + 1] > start[c]) groups.runs.push_back(start[c]);
    for (int64_t q = 0; q < n; ++q) groups.positions[start[class_of_position[q] - *min_it]++] = q;
  } else {
    // Sparse ids: sort positions by (class, position), which is stable by construction.
    std::iota(groups.positions.begin(), groups.positions.end(), int64_t{0});
    std::sort(groups.positions.begin(), groups.positions.end(), [&](int64_t a, int64_t b) {
      const int64_t ca = class_of_position[a], cb = class_of_position[b];
      return ca != cb ? ca < cb : a < b;
    });
    for (int64_t k = 0; k < n; ++k)
      if (k == 0 || class_of_position[groups.positions[k]] != class_of_position[groups.positions[k - 1]])
        groups.runs.push_back(k);
  }
  groups.runs.push_back(n);
  return groups;
}

// Marks the boxes j in (i, end) that box i overlaps by more than `threshold` as suppressed.
// Branch-free over every later box, suppressed or not: the loop vectorises, and testing an already
// suppressed box costs less than a branch. `__restrict` matters: the uint8 stores could otherwise
// alias the coordinates and force a reload per box.
template <typename acc_t>
void suppress_overlapping(
    int64_t i, int64_t end, const acc_t* __restrict x1, const acc_t* __restrict y1, const acc_t* __restrict x2,
    const acc_t* __restrict y2, const acc_t* __restrict area, acc_t threshold, uint8_t* __restrict suppressed) {
  const acc_t ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
  for (int64_t j = i + 1; j < end; ++j)
    suppressed[j] |= iou_above(ix1, iy1, ix2, iy2, iarea, x1[j], y1[j], x2[j], y2[j], area[j], threshold);
}

// Greedy suppression of every class run; returns keep flags indexed by score-order position.
template <typename scalar_t>
std::vector<uint8_t> suppress(
    const scalar_t* boxes, const std::vector<int64_t>& order, const ClassGroups& groups, double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t num_runs = static_cast<int64_t>(groups.runs.size()) - 1;
  const acc_t threshold = threshold_in<acc_t>(iou_threshold);
  // Coordinates in group order, one array per coordinate so the inner loop vectorises.
  std::vector<acc_t> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<uint8_t> suppressed(n, 0), keep(n, 0);

  auto run_greedy = [&](int64_t run) {
    const int64_t begin = groups.runs[run], end = groups.runs[run + 1];
    for (int64_t k = begin; k < end; ++k) {
      const scalar_t* box = boxes + 4 * order[groups.positions[k]];
      x1[k] = static_cast<acc_t>(box[0]);
      y1[k] = static_cast<acc_t>(box[1]);
      x2[k] = static_cast<acc_t>(box[2]);
      y2[k] = static_cast<acc_t>(box[3]);
      area[k] = box_area(x1[k], y1[k], x2[k], y2[k]);
    }
    for (int64_t i = begin; i < end; ++i) {
      if (suppressed[i]) continue;
      keep[groups.positions[i]] = 1;
      suppress_overlapping(i, end, x1.data(), y1.data(), x2.data(), y2.data(), area.data(), threshold, suppressed.data());
    }
  };

  // Largest classes first, pulled by the workers from a shared counter (the greedy cost of a
  // class grows with its size squared, so even splits of the class list balance badly).
  std::vector<int64_t> runs_by_size(num_runs);
  std::iota(runs_by_size.begin(), runs_by_size.end(), int64_t{0});
  std::sort(runs_by_size.begin(), runs_by_size.end(), [&](int64_t a, int64_t b) {
    return groups.runs[a + 1] - groups.runs[a] > groups.runs[b + 1] - groups.runs[b];
  });
  // The greedy scan of a class of L boxes tests up to L^2 / 2 pairs; a thread is worth waking
  // for about a quarter of a million of them (a fraction of a millisecond).
  constexpr double kMinPairsPerWorker = 1 << 18;
  double pairs = 0;
  for (int64_t run = 0; run < num_runs; ++run) {
    const double length = static_cast<double>(groups.runs[run + 1] - groups.runs[run]);
    pairs += length * length / 2;
  }
  const int64_t workers = std::max<int64_t>(
      1, std::min<int64_t>({at::get_num_threads(), num_runs, static_cast<int64_t>(pairs / kMinPairsPerWorker)}));
  std::atomic<int64_t> next_run{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t k = next_run++; k < num_runs; k = next_run++) run_greedy(runs_by_size[k]);
  });
  return keep;
}

// Fills `out` with the kept indices by decreasing score; returns how many were kept.
int64_t nms_into(
    const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs, double iou_threshold,
    std::vector<int64_t>& out) {
  const int64_t n = boxes.size(0);
  out.clear();
  if (n == 0) return 0;
  const at::Tensor boxes_c = boxes.contiguous(), scores_c = scores.contiguous();
  const at::Tensor classes = idxs ? idxs->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "sfpn_nms_cpu", [&] {
    const std::vector<int64_t> order = order_by_score(scores_c.const_data_ptr<scalar_t>(), n);
    const ClassGroups groups = group_by_class(idxs ? classes.const_data_ptr<int64_t>() : nullptr, order);
    const std::vector<uint8_t> keep = suppress(boxes_c.const_data_ptr<scalar_t>(), order, groups, iou_threshold);
    for (int64_t q = 0; q < n; ++q)
      if (keep[q]) out.push_back(order[q]);
  });
  return static_cast<int64_t>(out.size());
}

// The engine of nms.h's operators.
std::tuple<at::Tensor, at::Tensor> nms_padded(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                                              double iou_threshold, int64_t max_out) {
  std::vector<int64_t> kept;
  const int64_t count = std::min(nms_into(boxes, scores, idxs, iou_threshold, kept), max_out);
  at::Tensor indices = at::full({max_out}, -1, at::kLong);
  std::copy(kept.begin(), kept.begin() + count, indices.mutable_data_ptr<int64_t>());
  return {indices, at::scalar_tensor(count, at::kLong)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  register_nms_ops<nms_padded>(m);
}

}  // namespace sfpn::nms::cpu
