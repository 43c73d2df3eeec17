// The extension's build probe. The op schemas are not here: sfpn/ops/_library.py defines every
// op from Python (so that the ops exist without this extension), and csrc/cpu/*.cpp and
// csrc/cuda/*.cu only register kernels for them with TORCH_LIBRARY_IMPL(sfpn, CPU|CUDA, m).
#include <torch/library.h>

#ifdef SFPN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sfpn {

// CUDA runtime version the extension was compiled against (e.g. 13000), 0 for a CPU-only build.
int64_t cuda_version() {
#ifdef SFPN_WITH_CUDA
  return CUDART_VERSION;
#else
  return 0;
#endif
}

// A fragment: the Python side owns the namespace's TORCH_LIBRARY-equivalent definition block.
TORCH_LIBRARY_FRAGMENT(sfpn, m) {
  m.def("_cuda_version() -> int", &cuda_version);
}

}  // namespace sfpn
