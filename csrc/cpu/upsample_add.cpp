// CPU kernels of sfpn::upsample_add: lateral + resize(top) in one pass, and its gradient w.r.t.
// top as a gather (see cpu/resize_kernels.h). The operators around them (checks, inputs in the
// layout computed in, outputs) are resize.h's: a channels_last lateral (gradient) is computed in
// NHWC and gives a channels_last result.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "resize.h"
#include "cpu/resize_kernels.h"

namespace sfpn::resize::cpu {
namespace {

void upsample_add(const at::Tensor& top, const at::Tensor& lateral, at::Tensor& out, bool linear, bool align_corners) {
  const bool nhwc = is_nhwc({top, lateral, out});
  const int64_t batch = lateral.size(0), channels = lateral.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::upsample_add", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Resize2d<acc_t> resize(top.size(2), top.size(3), lateral.size(2), lateral.size(3), linear, align_corners);
    const scalar_t* top_data = top.const_data_ptr<scalar_t>();
    const scalar_t* lateral_data = lateral.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    if (nhwc) {
      resize_add_channels_last<scalar_t, acc_t>(top_data, lateral_data, out_data, batch, channels, resize);
    } else {
      resize_add<scalar_t, acc_t>(top_data, lateral_data, out_data, batch * channels, resize);
    }
  });
}

void upsample_add_backward(const at::Tensor& grad, at::Tensor& grad_top, bool linear, bool align_corners) {
  const bool nhwc = is_nhwc({grad, grad_top});
  const int64_t batch = grad.size(0), channels = grad.size(1);
  const int64_t top_height = grad_top.size(2), top_width = grad_top.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::upsample_add_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<Resize2d<acc_t>> resizes{
        Resize2d<acc_t>(top_height, top_width, grad.size(2), grad.size(3), linear, align_corners)};
    const std::vector<const scalar_t*> grads{grad.const_data_ptr<scalar_t>()};
    scalar_t* grad_top_data = grad_top.mutable_data_ptr<scalar_t>();
    if (nhwc) {
      resize_adjoint_channels_last<scalar_t, acc_t>(grads, resizes, grad_top_data, batch, channels, top_height,
                                                    top_width);
    } else {
      resize_adjoint<scalar_t, acc_t>(grads, resizes, grad_top_data, batch * channels, top_height, top_width);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  register_upsample_add_ops<upsample_add, upsample_add_backward, empty_output, /*nhwc_engines=*/true>(m);
}

}  // namespace sfpn::resize::cpu
