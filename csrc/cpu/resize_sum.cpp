// sfpn::resize_sum and its backward on the CPU: the sum of 1 to 5 levels (N, C, H_k, W_k), each
// bilinearly resized (align_corners=False) to one size (H, W), and each level's gradient, the
// adjoint of its resize. The reference (sfpn/ops/resize_sum.py: F.interpolate of each level, then
// add_ into the first) writes the whole map once per level and rounds every partial sum to the
// levels' dtype; here each output row is accumulated over the levels in the accumulation type and
// written once. The backward is the resize ops' gather (cpu/resize_kernels.h), one level at a time.
// Channels_last levels are read as NHWC and give a channels_last sum, as the reference's. The
// schema, the Python checks and the reference are in sfpn/ops/resize_sum.py; Triton kernels serve
// CUDA.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "checks.h"
#include "cpu/resize_kernels.h"
#include "cpu/vector_clones.h"

namespace sfpn::resize::cpu {
namespace {

constexpr const char* kOp = "resize_sum";
constexpr int64_t kMaxLevels = 5;  // sfpn/ops/resize_sum.py's MAX_LEVELS

template <typename scalar_t>
void resize_sum_kernel(const std::vector<at::Tensor>& levels, at::Tensor& out, bool nhwc) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = out.size(0), channels = out.size(1), height = out.size(2), width = out.size(3);
  std::vector<Resize2d<acc_t>> resizes;
  std::vector<const scalar_t*> data;
  for (const at::Tensor& level : levels) {
    resizes.emplace_back(level.size(2), level.size(3), height, width, /*linear=*/true, /*align_corners=*/false);
    data.push_back(level.const_data_ptr<scalar_t>());
  }
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  if (nhwc) {
    const int64_t row_size = width * channels;
    at::parallel_for(0, batch * height, row_grain(row_size), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(row_size);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / height, y = row % height;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (size_t k = 0; k < levels.size(); ++k) {
          const AxisTable<acc_t>& rows = resizes[k].rows;
          const int64_t in_h = rows.axis.in_size, in_row = resizes[k].cols.axis.in_size * channels;
          resized_row_channels_last</*kSum=*/true>(data[k] + (n * in_h + rows.index0[y]) * in_row,
                                                   data[k] + (n * in_h + rows.index1[y]) * in_row, data[k], acc.data(),
                                                   y, channels, resizes[k]);
        }
        sfpn::cpu::convert_rows(acc.data(), row_size, out_data + row * row_size, row_size, 1, row_size);
      }
    });
    return;
  }
  at::parallel_for(0, batch * channels * height, row_grain(width), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(width);
    std::vector<ResizedRows<scalar_t, acc_t>> source_rows;
    for (size_t k = 0; k < levels.size(); ++k) source_rows.emplace_back(data[k], resizes[k].cols);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / height, y = row % height;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (size_t k = 0; k < levels.size(); ++k) {
        const AxisTable<acc_t>& rows = resizes[k].rows;
        const int64_t first = plane * rows.axis.in_size;
        const acc_t* a = source_rows[k].get(first + rows.index0[y]);
        const acc_t* b = rows.taps == 1 ? nullptr : source_rows[k].get(first + rows.index1[y]);
        add_resized_rows</*kSum=*/true, scalar_t>(nullptr, a, b, rows.weight0[y], rows.weight1[y], acc.data(), width);
      }
      sfpn::cpu::convert_rows(acc.data(), width, out_data + row * width, width, 1, width);
    }
  });
}

at::Tensor resize_sum(at::TensorList levels, int64_t height, int64_t width) {
  TORCH_CHECK(!levels.empty() && static_cast<int64_t>(levels.size()) <= kMaxLevels,
              "sfpn::resize_sum: levels must hold 1 to ", kMaxLevels, " maps, got ", levels.size());
  TORCH_CHECK(height > 0 && width > 0, "sfpn::resize_sum: height and width must be positive, got ", height, " and ",
              width);
  for (size_t i = 0; i < levels.size(); ++i) {
    const std::string name = checks::element("levels", i);
    checks::check_tensor(kOp, name, levels[i], 4, "(N, C, H, W)");
    TORCH_CHECK(levels[i].numel() > 0, "sfpn::resize_sum: ", name, " must not be empty, got shape ", levels[i].sizes());
    if (i > 0) checks::check_like(kOp, name, levels[i], "levels[0]", levels[0]);
  }
  const bool nhwc = checks::is_channels_last(levels[0]);
  const at::MemoryFormat layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& level : levels) inputs.push_back(level.contiguous(layout));
  at::Tensor out = empty_output({levels[0].size(0), levels[0].size(1), height, width}, levels[0].options(), layout);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::resize_sum",
                                  [&] { resize_sum_kernel<scalar_t>(inputs, out, nhwc); });
  return out;
}

std::vector<at::Tensor> resize_sum_backward(const at::Tensor& grad, at::IntArrayRef heights, at::IntArrayRef widths) {
  constexpr const char* op = "resize_sum_backward";
  checks::check_tensor(op, "grad", grad, 4, "(N, C, H, W)");
  TORCH_CHECK(!heights.empty() && heights.size() == widths.size(),
              "sfpn::resize_sum_backward: heights and widths must name the same number (>= 1) of levels, got ",
              heights.size(), " and ", widths.size());
  for (size_t i = 0; i < heights.size(); ++i) {
    TORCH_CHECK(heights[i] > 0 && widths[i] > 0, "sfpn::resize_sum_backward: every level's height and width must be "
                "positive, got ", heights[i], " and ", widths[i], " at level ", i);
  }
  const bool nhwc = checks::is_channels_last(grad);
  const at::MemoryFormat layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor g = grad.contiguous(layout);
  const int64_t batch = g.size(0), channels = g.size(1);
  std::vector<at::Tensor> grads;
  for (size_t i = 0; i < heights.size(); ++i) {
    at::Tensor level_grad = empty_output({batch, channels, heights[i], widths[i]}, g.options(), layout);
    if (level_grad.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "sfpn::resize_sum_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const std::vector<Resize2d<acc_t>> resizes{Resize2d<acc_t>(heights[i], widths[i], g.size(2), g.size(3),
                                                                   /*linear=*/true, /*align_corners=*/false)};
        const std::vector<const scalar_t*> sources{g.const_data_ptr<scalar_t>()};
        scalar_t* target = level_grad.mutable_data_ptr<scalar_t>();
        if (nhwc) {
          resize_adjoint_channels_last<scalar_t, acc_t>(sources, resizes, target, batch, channels, heights[i],
                                                        widths[i]);
        } else {
          resize_adjoint<scalar_t, acc_t>(sources, resizes, target, batch * channels, heights[i], widths[i]);
        }
      });
    }
    grads.push_back(level_grad);
  }
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("resize_sum", &resize_sum);
  m.impl("resize_sum_backward", &resize_sum_backward);
}

}  // namespace sfpn::resize::cpu
