// CPU kernels of sfpn::semantic_fuse: levels[i] + resize(semantic, size of level i) for every
// level, and the gradient w.r.t. semantic (the sum over levels of the adjoint resizes) as one
// gather over semantic rows, so each of its elements is written exactly once. Each level is
// computed in its own layout (NHWC for a channels_last level, see resize.h), semantic taken in
// it; the gradient of semantic takes the layout of grads[0].
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "op_checks.h"
#include "resize.h"

namespace sfpn::cpu {
namespace {

std::vector<at::Tensor> semantic_fuse(
    at::TensorList levels, const at::Tensor& semantic, c10::string_view mode, bool align_corners) {
  checks::semantic_fuse(levels, semantic);
  const bool linear = is_bilinear(mode);
  const int64_t batch = semantic.size(0), channels = semantic.size(1);
  at::Tensor semantic_in[2];  // semantic in each layout a level asks for: [planar, channels_last]
  std::vector<at::Tensor> outs;
  outs.reserve(levels.size());
  for (const at::Tensor& level : levels) {
    const bool nhwc = checks::is_channels_last(level);
    const auto layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const at::Tensor level_c = level.contiguous(layout);
    at::Tensor out = empty_output(level.sizes(), level.options(), nhwc);
    outs.push_back(out);
    if (out.numel() == 0) continue;
    if (!semantic_in[nhwc].defined()) semantic_in[nhwc] = semantic.contiguous(layout);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::semantic_fuse", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const Resize2d<acc_t> resize(semantic.size(2), semantic.size(3), level.size(2), level.size(3), linear, align_corners);
      const scalar_t* semantic_data = semantic_in[nhwc].const_data_ptr<scalar_t>();
      const scalar_t* level_data = level_c.const_data_ptr<scalar_t>();
      scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
      if (nhwc) {
        resize_add_channels_last<scalar_t, acc_t>(semantic_data, level_data, out_data, batch, channels, resize);
      } else {
        resize_add<scalar_t, acc_t>(semantic_data, level_data, out_data, batch * channels, resize);
      }
    });
  }
  return outs;
}

at::Tensor semantic_fuse_backward(
    at::TensorList grads, int64_t semantic_height, int64_t semantic_width, c10::string_view mode, bool align_corners) {
  checks::semantic_fuse_backward(grads, semantic_height, semantic_width);
  const bool linear = is_bilinear(mode);
  const at::Tensor& first = grads[0];
  const bool nhwc = checks::is_channels_last(first);
  at::Tensor grad_semantic =
      empty_output({first.size(0), first.size(1), semantic_height, semantic_width}, first.options(), nhwc);
  if (grad_semantic.numel() == 0) return grad_semantic;
  std::vector<at::Tensor> grads_c;
  for (const at::Tensor& grad : grads) {
    // An empty level contributes nothing; the others are read in grads[0]'s layout.
    if (grad.numel() > 0) grads_c.push_back(grad.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  }
  if (grads_c.empty()) return grad_semantic.zero_();
  const int64_t batch = first.size(0), channels = first.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "sfpn::semantic_fuse_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> pointers;
    std::vector<Resize2d<acc_t>> resizes;
    for (const at::Tensor& grad : grads_c) {
      pointers.push_back(grad.const_data_ptr<scalar_t>());
      resizes.emplace_back(semantic_height, semantic_width, grad.size(2), grad.size(3), linear, align_corners);
    }
    scalar_t* grad_semantic_data = grad_semantic.mutable_data_ptr<scalar_t>();
    if (nhwc) {
      resize_adjoint_channels_last<scalar_t, acc_t>(
          pointers, resizes, grad_semantic_data, batch, channels, semantic_height, semantic_width);
    } else {
      resize_adjoint<scalar_t, acc_t>(pointers, resizes, grad_semantic_data, batch * channels, semantic_height, semantic_width);
    }
  });
  return grad_semantic;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("semantic_fuse", &semantic_fuse);
  m.impl("semantic_fuse_backward", &semantic_fuse_backward);
}

}  // namespace sfpn::cpu
