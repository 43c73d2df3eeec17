// CPU kernels of sfpn::semantic_fuse: levels[i] + resize(semantic, size of level i) for every
// level, and the gradient w.r.t. semantic (the sum over levels of the adjoint resizes) as one
// gather over semantic rows, so each of its elements is written exactly once. The operators
// around them (checks, inputs in the layout computed in, outputs, empty levels) are resize.h's:
// each level is computed in its own layout (NHWC for a channels_last level), semantic taken into
// it; the gradient of semantic takes the layout of grads[0].
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
  const int64_t batch = semantic.size(0), channels = semantic.size(1);
  at::Tensor semantic_in[2];  // semantic in each layout a level asks for: [planar, channels_last]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, semantic.scalar_type(), "sfpn::semantic_fuse", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (size_t k = 0; k < levels.size(); ++k) {
      const bool nhwc = is_nhwc({levels[k], outs[k]});
      if (!semantic_in[nhwc].defined()) {
        semantic_in[nhwc] = semantic.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
      }
      const Resize2d<acc_t> resize(
          semantic.size(2), semantic.size(3), levels[k].size(2), levels[k].size(3), linear, align_corners);
      const scalar_t* semantic_data = semantic_in[nhwc].const_data_ptr<scalar_t>();
      const scalar_t* level_data = levels[k].const_data_ptr<scalar_t>();
      scalar_t* out_data = outs[k].mutable_data_ptr<scalar_t>();
      if (nhwc) {
        resize_add_channels_last<scalar_t, acc_t>(semantic_data, level_data, out_data, batch, channels, resize);
      } else {
        resize_add<scalar_t, acc_t>(semantic_data, level_data, out_data, batch * channels, resize);
      }
    }
  });
}

void semantic_fuse_backward(const std::vector<at::Tensor>& grads, at::Tensor& grad_semantic, bool linear,
                            bool align_corners) {
  const bool nhwc = is_nhwc(grads) && is_nhwc({grad_semantic});
  const int64_t batch = grad_semantic.size(0), channels = grad_semantic.size(1);
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
        scalar_t* grad_semantic_data = grad_semantic.mutable_data_ptr<scalar_t>();
        if (nhwc) {
          resize_adjoint_channels_last<scalar_t, acc_t>(
              pointers, resizes, grad_semantic_data, batch, channels, semantic_height, semantic_width);
        } else {
          resize_adjoint<scalar_t, acc_t>(
              pointers, resizes, grad_semantic_data, batch * channels, semantic_height, semantic_width);
        }
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  register_semantic_fuse_ops<semantic_fuse, semantic_fuse_backward, empty_output, /*nhwc_engines=*/true>(m);
}

}  // namespace sfpn::resize::cpu
