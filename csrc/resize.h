// Host side of the resize ops (upsample_add, semantic_fuse and their backwards), shared by the
// CPU (cpu/upsample_add.cpp, cpu/semantic_fuse.cpp) and CUDA (cuda/upsample_add.cu,
// cuda/semantic_fuse.cu) backends, so that each backend file holds only its kernels and their
// launch: the argument checks, and the operators themselves (checks, output allocation, the
// empty cases) written once over a backend's engines and registered by register_*_ops. The index
// arithmetic both backends' kernels run is resize_index.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <vector>

#include "checks.h"
#include "resize_index.h"

namespace sfpn::resize {

// The ops' `mode` argument: true for "bilinear", false for "nearest".
inline bool is_bilinear(c10::string_view mode) {
  TORCH_CHECK(mode == "nearest" || mode == "bilinear", "mode must be 'nearest' or 'bilinear', got '", mode, "'");
  return mode == "bilinear";
}

// The checks of each op's arguments under the schema's names. `mode` is checked where it is
// parsed (is_bilinear).

inline void check_upsample_add(const at::Tensor& top, const at::Tensor& lateral) {
  checks::check_tensor("upsample_add", "lateral", lateral, 4, "(N, C, H, W)");
  checks::check_tensor("upsample_add", "top", top, 4, "(N, C, H, W)");
  checks::check_like("upsample_add", "top", top, "lateral", lateral);
  TORCH_CHECK(lateral.numel() == 0 || top.numel() > 0,
              "sfpn::upsample_add: top must not be empty when lateral is not, got shape ", top.sizes());
}

inline void check_upsample_add_backward(const at::Tensor& grad, int64_t top_height, int64_t top_width) {
  checks::check_tensor("upsample_add_backward", "grad", grad, 4, "(N, C, H, W)");
  TORCH_CHECK(top_height >= 0 && top_width >= 0,
              "sfpn::upsample_add_backward: top_height and top_width must be >= 0, got ", top_height, " and ", top_width);
}

inline void check_semantic_fuse(at::TensorList levels, const at::Tensor& semantic) {
  checks::check_tensor("semantic_fuse", "semantic", semantic, 4, "(N, C, H, W)");
  for (size_t i = 0; i < levels.size(); ++i) {
    const std::string name = checks::element("levels", i);
    checks::check_tensor("semantic_fuse", name, levels[i], 4, "(N, C, H, W)");
    checks::check_like("semantic_fuse", name, levels[i], "semantic", semantic);
    TORCH_CHECK(levels[i].numel() == 0 || semantic.numel() > 0,
                "sfpn::semantic_fuse: semantic must not be empty when ", name, " is not, got shape ", semantic.sizes());
  }
}

inline void check_semantic_fuse_backward(at::TensorList grads, int64_t semantic_height, int64_t semantic_width) {
  TORCH_CHECK(!grads.empty(), "sfpn::semantic_fuse_backward: grads must hold at least one gradient");
  for (size_t i = 0; i < grads.size(); ++i) {
    checks::check_tensor("semantic_fuse_backward", checks::element("grads", i), grads[i], 4, "(N, C, H, W)");
    checks::check_like("semantic_fuse_backward", checks::element("grads", i), grads[i], "grads[0]", grads[0]);
  }
  TORCH_CHECK(semantic_height >= 0 && semantic_width >= 0,
              "sfpn::semantic_fuse_backward: semantic_height and semantic_width must be >= 0, got ", semantic_height,
              " and ", semantic_width);
}

// A backend's engines compute an op on checked inputs into the outputs the operator allocated,
// none of them empty (a CUDA engine takes its tensors' device guard). `linear` is the parsed mode.
// Every tensor an engine gets is contiguous, or, for a backend whose engines read NHWC (the
// CPU's, see engine_layout), all those of one resize are channels_last-contiguous.

// out (N, C, H, W) = lateral (N, C, H, W) + resize(top (N, C, Ht, Wt)).
using UpsampleAddEngine = void(const at::Tensor& top, const at::Tensor& lateral, at::Tensor& out, bool linear,
                               bool align_corners);
// grad_top (N, C, Ht, Wt) = the adjoint of the resize applied to grad (N, C, H, W).
using UpsampleAddBackwardEngine = void(const at::Tensor& grad, at::Tensor& grad_top, bool linear, bool align_corners);
// outs[k] (N, C, H_k, W_k) = levels[k] + resize(semantic (N, C, Hs, Ws)) for every k.
using SemanticFuseEngine = void(const at::Tensor& semantic, const std::vector<at::Tensor>& levels,
                                std::vector<at::Tensor>& outs, bool linear, bool align_corners);
// grad_semantic (N, C, Hs, Ws) = the sum over k of the adjoint of the resize applied to grads[k]
// (N, C, H_k, W_k).
using SemanticFuseBackwardEngine = void(const std::vector<at::Tensor>& grads, at::Tensor& grad_semantic, bool linear,
                                        bool align_corners);

// A backend's allocator of fresh, uninitialised outputs in `layout`: at::empty by default, or the
// backend's own (the CPU's recycles large blocks, cpu::empty_output).
using Allocator = at::Tensor(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat layout);

// at::empty as an Allocator (its own signature has more, defaulted, parameters).
inline at::Tensor at_empty(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat layout) {
  return at::empty(sizes, options, layout);
}

// The layout an op computes in, from the input that decides it (lateral, a level, a gradient):
// channels_last when that input is (checks::is_channels_last) and the backend's engines read
// NHWC (`nhwc_engines`, the CPU's), contiguous otherwise. The output takes the same layout, as
// sfpn/ops/_library.py's output_memory_format says to the fakes.
template <bool nhwc_engines>
at::MemoryFormat engine_layout(const at::Tensor& t) {
  return nhwc_engines && checks::is_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The operators of sfpn/ops/_library.py over one backend's engines.

// upsample_add computes in lateral's layout, its backward in grad's.
template <UpsampleAddEngine* engine, Allocator* allocate, bool nhwc_engines>
at::Tensor upsample_add_op(const at::Tensor& top, const at::Tensor& lateral, c10::string_view mode,
                           bool align_corners) {
  check_upsample_add(top, lateral);
  const bool linear = is_bilinear(mode);
  const at::MemoryFormat layout = engine_layout<nhwc_engines>(lateral);
  at::Tensor out = allocate(lateral.sizes(), lateral.options(), layout);
  if (out.numel() > 0) engine(top.contiguous(layout), lateral.contiguous(layout), out, linear, align_corners);
  return out;
}

template <UpsampleAddBackwardEngine* engine, Allocator* allocate, bool nhwc_engines>
at::Tensor upsample_add_backward_op(const at::Tensor& grad, int64_t top_height, int64_t top_width,
                                    c10::string_view mode, bool align_corners) {
  check_upsample_add_backward(grad, top_height, top_width);
  const bool linear = is_bilinear(mode);
  const at::MemoryFormat layout = engine_layout<nhwc_engines>(grad);
  at::Tensor grad_top = allocate({grad.size(0), grad.size(1), top_height, top_width}, grad.options(), layout);
  if (grad_top.numel() == 0) return grad_top;
  if (grad.numel() == 0) return grad_top.zero_();
  engine(grad.contiguous(layout), grad_top, linear, align_corners);
  return grad_top;
}

// semantic_fuse computes each level in that level's layout (the engine takes semantic into each
// layout its levels ask for; it gets semantic in the first level's); the backward in grads[0]'s.
template <SemanticFuseEngine* engine, Allocator* allocate, bool nhwc_engines>
std::vector<at::Tensor> semantic_fuse_op(at::TensorList levels, const at::Tensor& semantic, c10::string_view mode,
                                         bool align_corners) {
  check_semantic_fuse(levels, semantic);
  const bool linear = is_bilinear(mode);
  std::vector<at::Tensor> outs;             // one per level
  std::vector<at::Tensor> inputs, outputs;  // the levels that are not empty, and their outs
  for (const at::Tensor& level : levels) {
    const at::MemoryFormat layout = engine_layout<nhwc_engines>(level);
    outs.push_back(allocate(level.sizes(), level.options(), layout));
    if (outs.back().numel() == 0) continue;
    inputs.push_back(level.contiguous(layout));
    outputs.push_back(outs.back());
  }
  if (!inputs.empty()) {
    engine(semantic.contiguous(engine_layout<nhwc_engines>(levels[0])), inputs, outputs, linear, align_corners);
  }
  return outs;
}

template <SemanticFuseBackwardEngine* engine, Allocator* allocate, bool nhwc_engines>
at::Tensor semantic_fuse_backward_op(at::TensorList grads, int64_t semantic_height, int64_t semantic_width,
                                     c10::string_view mode, bool align_corners) {
  check_semantic_fuse_backward(grads, semantic_height, semantic_width);
  const bool linear = is_bilinear(mode);
  const at::Tensor& first = grads[0];
  const at::MemoryFormat layout = engine_layout<nhwc_engines>(first);
  at::Tensor grad_semantic =
      allocate({first.size(0), first.size(1), semantic_height, semantic_width}, first.options(), layout);
  if (grad_semantic.numel() == 0) return grad_semantic;
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& grad : grads) {
    if (grad.numel() > 0) inputs.push_back(grad.contiguous(layout));  // an empty level contributes nothing
  }
  if (inputs.empty()) return grad_semantic.zero_();
  engine(inputs, grad_semantic, linear, align_corners);
  return grad_semantic;
}

// Register an op and its backward for the backend whose TORCH_LIBRARY_IMPL block calls them (`m`
// is a torch::Library, or the CUDA emulation's stand-in for one).

// `nhwc_engines`: the engines read channels_last tensors as NHWC (see engine_layout).

template <UpsampleAddEngine* forward, UpsampleAddBackwardEngine* backward, Allocator* allocate = at_empty,
          bool nhwc_engines = false, typename Library>
void register_upsample_add_ops(Library& m) {
  m.impl("upsample_add", &upsample_add_op<forward, allocate, nhwc_engines>);
  m.impl("upsample_add_backward", &upsample_add_backward_op<backward, allocate, nhwc_engines>);
}

template <SemanticFuseEngine* forward, SemanticFuseBackwardEngine* backward, Allocator* allocate = at_empty,
          bool nhwc_engines = false, typename Library>
void register_semantic_fuse_ops(Library& m) {
  m.impl("semantic_fuse", &semantic_fuse_op<forward, allocate, nhwc_engines>);
  m.impl("semantic_fuse_backward", &semantic_fuse_backward_op<backward, allocate, nhwc_engines>);
}

}  // namespace sfpn::resize
