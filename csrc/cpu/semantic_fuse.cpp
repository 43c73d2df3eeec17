// CPU kernels of sfpn::semantic_fuse: levels[i] + resize(semantic, size of level i) for every
// level, and the gradient w.r.t. semantic (the sum over levels of the adjoint resizes) as one
// gather over semantic rows, so each of its elements is written exactly once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "resize.h"
#include "cpu/resize_kernels.h"

namespace sfpn::resize::cpu {
namespace {

std::vector<at::Tensor> semantic_fuse(
    at::TensorList levels, const at::Tensor& semantic, c10::string_view mode, bool align_corners) {
  check_semantic_fuse(levels, semantic);
  const bool linear = is_bilinear(mode);
  const at::Tensor semantic_c = semantic.contiguous();
  const int64_t planes = semantic.size(0) * semantic.size(1);
  std::vector<at::Tensor> outs;
  outs.reserve(levels.size());
  for (const at::Tensor& level : levels) {
    const at::Tensor level_c = level.contiguous();
    at::Tensor out = empty_output(level.sizes(), level.options());
    outs.push_back(out);
    if (out.numel() == 0) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfpn::semantic_fuse", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const Resize2d<acc_t> resize(semantic.size(2), semantic.size(3), level.size(2), level.size(3), linear, align_corners);
      resize_add<scalar_t, acc_t>(
          semantic_c.const_data_ptr<scalar_t>(), level_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          planes, resize);
    });
  }
  return outs;
}

at::Tensor semantic_fuse_backward(
    at::TensorList grads, int64_t semantic_height, int64_t semantic_width, c10::string_view mode, bool align_corners) {
  check_semantic_fuse_backward(grads, semantic_height, semantic_width);
  const bool linear = is_bilinear(mode);
  const at::Tensor& first = grads[0];
  at::Tensor grad_semantic =
      empty_output({first.size(0), first.size(1), semantic_height, semantic_width}, first.options());
  if (grad_semantic.numel() == 0) return grad_semantic;
  std::vector<at::Tensor> grads_c;
  for (const at::Tensor& grad : grads) {
    if (grad.numel() > 0) grads_c.push_back(grad.contiguous());  // an empty level contributes nothing
  }
  if (grads_c.empty()) return grad_semantic.zero_();
  const int64_t planes = first.size(0) * first.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "sfpn::semantic_fuse_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> pointers;
    std::vector<Resize2d<acc_t>> resizes;
    for (const at::Tensor& grad : grads_c) {
      pointers.push_back(grad.const_data_ptr<scalar_t>());
      resizes.emplace_back(semantic_height, semantic_width, grad.size(2), grad.size(3), linear, align_corners);
    }
    resize_adjoint<scalar_t, acc_t>(
        pointers, resizes, grad_semantic.mutable_data_ptr<scalar_t>(), planes, semantic_height, semantic_width);
  });
  return grad_semantic;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("semantic_fuse", &semantic_fuse);
  m.impl("semantic_fuse_backward", &semantic_fuse_backward);
}

}  // namespace sfpn::resize::cpu
