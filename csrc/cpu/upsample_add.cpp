// CPU kernels of sfpn::upsample_add: lateral + resize(top) in one pass, and its gradient w.r.t.
// top as a gather (see resize.h). A channels_last lateral (gradient) is computed in NHWC and
// gives a channels_last result; other inputs are made contiguous first. Either way an input not
// already in that layout is copied into it (top alone, when only it differs).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "op_checks.h"
#include "resize.h"

namespace sfpn::cpu {
namespace {

at::Tensor upsample_add(const at::Tensor& top, const at::Tensor& lateral, c10::string_view mode, bool align_corners) {
  checks::upsample_add(top, lateral);
  const bool linear = is_bilinear(mode);
  const bool nhwc = checks::is_channels_last(lateral);
  const auto layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor top_c = top.contiguous(layout), lateral_c = lateral.contiguous(layout);
  at::Tensor out = empty_output(lateral.sizes(), lateral.options(), nhwc);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::upsample_add", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Resize2d<acc_t> resize(top.size(2), top.size(3), lateral.size(2), lateral.size(3), linear, align_corners);
    const scalar_t* top_data = top_c.const_data_ptr<scalar_t>();
    const scalar_t* lateral_data = lateral_c.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    if (nhwc) {
      resize_add_channels_last<scalar_t, acc_t>(top_data, lateral_data, out_data, lateral.size(0), lateral.size(1), resize);
    } else {
      resize_add<scalar_t, acc_t>(top_data, lateral_data, out_data, lateral.size(0) * lateral.size(1), resize);
    }
  });
  return out;
}

at::Tensor upsample_add_backward(
    const at::Tensor& grad, int64_t top_height, int64_t top_width, c10::string_view mode, bool align_corners) {
  checks::upsample_add_backward(grad, top_height, top_width);
  const bool linear = is_bilinear(mode);
  const bool nhwc = checks::is_channels_last(grad);
  const at::Tensor grad_c = grad.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor grad_top = empty_output({grad.size(0), grad.size(1), top_height, top_width}, grad.options(), nhwc);
  if (grad_top.numel() == 0) return grad_top;
  if (grad.numel() == 0) return grad_top.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::upsample_add_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<Resize2d<acc_t>> resizes{
        Resize2d<acc_t>(top_height, top_width, grad.size(2), grad.size(3), linear, align_corners)};
    const std::vector<const scalar_t*> grads{grad_c.const_data_ptr<scalar_t>()};
    scalar_t* grad_top_data = grad_top.mutable_data_ptr<scalar_t>();
    if (nhwc) {
      resize_adjoint_channels_last<scalar_t, acc_t>(
          grads, resizes, grad_top_data, grad.size(0), grad.size(1), top_height, top_width);
    } else {
      resize_adjoint<scalar_t, acc_t>(grads, resizes, grad_top_data, grad.size(0) * grad.size(1), top_height, top_width);
    }
  });
  return grad_top;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("upsample_add", &upsample_add);
  m.impl("upsample_add_backward", &upsample_add_backward);
}

}  // namespace sfpn::cpu
