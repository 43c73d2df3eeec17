// CPU kernels of sfpn::semantic_fuse: levels[i] + resize(semantic, size of level i) for every
// level, and the gradient w.r.t. semantic (the sum over levels of the adjoint resizes) as one
// gather over semantic rows, so each of its elements is written exactly once. The operators
// around them (checks, contiguous inputs, outputs, empty levels) are resize.h's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "resize.h"
#include "cpu/resize_kernels.h"

namespace sfpn::resize::cpu {
namespace {

void semantic_fuse(const at::Tensor& semantic, const std::vector<at::Tensor>& levels, std::vector<at::Tensor>& outs,
                   bool linear, bool align_corners) {
  const int64_t planes = semantic.size(0) * semantic.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, semantic.scalar_type(), "sfpn::semantic_fuse", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (size_t k = 0; k < levels.size(); ++k) {
      const Resize2d<acc_t> resize(
          semantic.size(2), semantic.size(3), levels[k].size(2), levels[k].size(3), linear, align_corners);
      resize_add<scalar_t, acc_t>(
          semantic.const_data_ptr<scalar_t>(), levels[k].const_data_ptr<scalar_t>(),
          outs[k].mutable_data_ptr<scalar_t>(), planes, resize);
    }
  });
}

void semantic_fuse_backward(const std::vector<at::Tensor>& grads, at::Tensor& grad_semantic, bool linear,
                            bool align_corners) {
  const int64_t planes = grad_semantic.size(0) * grad_semantic.size(1);
  const int64_t semantic_height = grad_semantic.size(2), semantic_width = grad_semantic.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_semantic.scalar_type(), "sfpn::semantic_fuse_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        std::vector<const scalar_t*> pointers;
        std::vector<Resize2d<acc_t>> resizes;
        for (const at::Tensor& grad : grads) {
          pointers.push_back(grad.const_data_ptr<scalar_t>());
          resizes.emplace_back(semantic_height, semantic_width, grad.size(2), grad.size(3), linear, align_corners);
        }
        resize_adjoint<scalar_t, acc_t>(
            pointers, resizes, grad_semantic.mutable_data_ptr<scalar_t>(), planes, semantic_height, semantic_width);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  register_semantic_fuse_ops<semantic_fuse, semantic_fuse_backward, empty_output>(m);
}

}  // namespace sfpn::resize::cpu
