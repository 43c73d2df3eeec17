// CPU kernels of sfpn::upsample_add: lateral + resize(top) in one pass, and its gradient w.r.t.
// top as a gather (see cpu/resize_kernels.h). The operators around them (checks, contiguous
// inputs, outputs) are resize.h's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "resize.h"
#include "cpu/resize_kernels.h"

namespace sfpn::resize::cpu {
namespace {

void upsample_add(const at::Tensor& top, const at::Tensor& lateral, at::Tensor& out, bool linear, bool align_corners) {
  const int64_t planes = lateral.size(0) * lateral.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::upsample_add", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Resize2d<acc_t> resize(top.size(2), top.size(3), lateral.size(2), lateral.size(3), linear, align_corners);
    resize_add<scalar_t, acc_t>(
        top.const_data_ptr<scalar_t>(), lateral.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), planes,
        resize);
  });
}

void upsample_add_backward(const at::Tensor& grad, at::Tensor& grad_top, bool linear, bool align_corners) {
  const int64_t planes = grad.size(0) * grad.size(1);
  const int64_t top_height = grad_top.size(2), top_width = grad_top.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::upsample_add_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<Resize2d<acc_t>> resizes{
        Resize2d<acc_t>(top_height, top_width, grad.size(2), grad.size(3), linear, align_corners)};
    resize_adjoint<scalar_t, acc_t>(
        {grad.const_data_ptr<scalar_t>()}, resizes, grad_top.mutable_data_ptr<scalar_t>(), planes, top_height,
        top_width);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  register_upsample_add_ops<upsample_add, upsample_add_backward, empty_output>(m);
}

}  // namespace sfpn::resize::cpu
