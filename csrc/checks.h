// The check helpers every op family's argument checks are built from (each family's checks,
// check_<op>, live in its header csrc/<family>.h, shared by its CPU and CUDA entry points): a
// call that reaches a registered op directly (torch.ops.sfpn.*, bypassing sfpn.ops' Python
// checks) gets a TORCH_CHECK error "sfpn::<op>: <argument> must ...", never a crash. Only
// metadata is checked this way (ranks, sizes, dtypes, devices, scalar arguments): a check of
// tensor values would cost a device-to-host sync on CUDA. Values are checked by the kernels
// themselves (the CPU RoIAlign inside its loop over RoIs, the CUDA kernels with device asserts).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

namespace sfpn::checks {

// Whether a CPU kernel takes `t` as NHWC: a channels_last (N, C, H, W) tensor that is not also
// plainly contiguous. The rule of sfpn/ops/_library.py's output_memory_format on the CPU: such an
// input is read as it is and gives a channels_last output.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// `list[i]`, the name of one element of a list argument.
inline std::string element(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// A floating-point tensor of rank `dim`; `layout` names its dimensions, e.g. "(N, C, H, W)".
inline void check_tensor(const char* op, const std::string& name, const at::Tensor& t, int64_t dim,
                         const char* layout) {
  TORCH_CHECK(t.dim() == dim, "sfpn::", op, ": ", name, " must be ", layout, ", got shape ", t.sizes());
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, "sfpn::", op,
              ": ", name, " must be float16, bfloat16, float32 or float64, got ", type);
}

inline void check_same_device(const char* op, const std::string& name, const at::Tensor& t, const std::string& ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "sfpn::", op, ": ", name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

// Same dtype, device, batch size and channels as `ref`, both (N, C, H, W).
inline void check_like(const char* op, const std::string& name, const at::Tensor& t, const std::string& ref_name,
                       const at::Tensor& ref) {
  check_same_device(op, name, t, ref_name, ref);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "sfpn::", op, ": ", name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.size(0) == ref.size(0) && t.size(1) == ref.size(1), "sfpn::", op, ": ", name,
              " must have the batch size and channels (N, C) of ", ref_name, ", got shapes ", t.sizes(), " and ",
              ref.sizes());
}

}  // namespace sfpn::checks
