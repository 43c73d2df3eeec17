// CPU kernels of sfpn::upsample_add: lateral + resize(top) in one pass, and its gradient w.r.t.
// top as a gather (see cpu/resize_kernels.h). Inputs of any strides are made contiguous first (a copy only
// when they are not already).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "resize.h"
#include "cpu/resize_kernels.h"

namespace sfpn::resize::cpu {
namespace {

at::Tensor upsample_add(const at::Tensor& top, const at::Tensor& lateral, c10::string_view mode, bool align_corners) {
  check_upsample_add(top, lateral);
  const bool linear = is_bilinear(mode);
  const at::Tensor top_c = top.contiguous(), lateral_c = lateral.contiguous();
  at::Tensor out = empty_output(lateral.sizes(), lateral.options());
  if (out.numel() == 0) return out;
  const int64_t planes = lateral.size(0) * lateral.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::upsample_add", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Resize2d<acc_t> resize(top.size(2), top.size(3), lateral.size(2), lateral.size(3), linear, align_corners);
    resize_add<scalar_t, acc_t>(
        top_c.const_data_ptr<scalar_t>(), lateral_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        planes, resize);
  });
  return out;
}

at::Tensor upsample_add_backward(
    const at::Tensor& grad, int64_t top_height, int64_t top_width, c10::string_view mode, bool align_corners) {
  check_upsample_add_backward(grad, top_height, top_width);
  const bool linear = is_bilinear(mode);
  const at::Tensor grad_c = grad.contiguous();
  at::Tensor grad_top = empty_output({grad.size(0), grad.size(1), top_height, top_width}, grad.options());
  if (grad_top.numel() == 0) return grad_top;
  if (grad.numel() == 0) return grad_top.zero_();
  const int64_t planes = grad.size(0) * grad.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::upsample_add_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<Resize2d<acc_t>> resizes{
        Resize2d<acc_t>(top_height, top_width, grad.size(2), grad.size(3), linear, align_corners)};
    resize_adjoint<scalar_t, acc_t>(
        {grad_c.const_data_ptr<scalar_t>()}, resizes, grad_top.mutable_data_ptr<scalar_t>(), planes, top_height,
        top_width);
  });
  return grad_top;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("upsample_add", &upsample_add);
  m.impl("upsample_add_backward", &upsample_add_backward);
}

}  // namespace sfpn::resize::cpu
