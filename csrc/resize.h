// Host side of the resize ops (upsample_add, semantic_fuse and their backwards), shared by the
// CPU (cpu/upsample_add.cpp, cpu/semantic_fuse.cpp) and CUDA (cuda/upsample_add.cu,
// cuda/semantic_fuse.cu) backends: the argument checks. The index arithmetic both backends'
// kernels run is resize_index.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

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

}  // namespace sfpn::resize
