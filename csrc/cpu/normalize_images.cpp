// sfpn::normalize_images on the CPU: a detector's input batch in one pass. Each image (C, h, w)
// float32 is normalised, (x - mean) / std in float32 as the reference computes it, rounded once to
// the batch's dtype and written into its slot of the zero-padded (N, C, H, W) batch, NCHW or
// channels_last. Eagerly that is a subtraction, a division and a cast, each a fresh image, and a
// strided copy into the slot, whose channels_last case (three 2-byte values a pixel) is the
// slowest of them. Here a row of the image is normalised into a row of floats laid out as the batch
// is, then cast into place; the padding is zeroed row by row. Schema, Python checks and
// reference: sfpn/ops/normalize_images.py.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/vector_clones.h"

namespace sfpn::normalize_images::cpu {
namespace {

// Batch rows per parallel task at least (a row is W * C values).
constexpr int64_t kMinTaskValues = int64_t(1) << 14;

// Row y of channel c of an image: (x - mean) / std, into `to` every `step` floats (step = C: a
// channels_last row, the channels interleaved; 1: one channel's row).
SFPN_VECTOR_CLONES void normalize_row(const float* __restrict__ from, int64_t width, float mean, float std,
                                      float* __restrict__ to, int64_t step) {
  for (int64_t x = 0; x < width; ++x) to[x * step] = (from[x] - mean) / std;
}

// Three channels at once into a channels_last row: the interleaving store the compiler vectorises
// with permutes, where a store every third float per channel would not vectorise.
SFPN_VECTOR_CLONES void normalize_rgb_row(const float* __restrict__ r, const float* __restrict__ g,
                                          const float* __restrict__ b, int64_t width, const float* mean,
                                          const float* std, float* __restrict__ to) {
  const float mr = mean[0], mg = mean[1], mb = mean[2], sr = std[0], sg = std[1], sb = std[2];
  for (int64_t x = 0; x < width; ++x) {
    to[3 * x] = (r[x] - mr) / sr;
    to[3 * x + 1] = (g[x] - mg) / sg;
    to[3 * x + 2] = (b[x] - mb) / sb;
  }
}

template <typename scalar_t>
void normalize_kernel(const std::vector<at::Tensor>& images, const float* mean, const float* std, bool channels_last,
                      at::Tensor& batch) {
  const int64_t N = batch.size(0), C = batch.size(1), H = batch.size(2), W = batch.size(3);
  scalar_t* out = batch.mutable_data_ptr<scalar_t>();
  // Where value (n, c, y, 0) lies.
  auto at = [&](int64_t n, int64_t c, int64_t y) {
    return out + n * C * H * W + (channels_last ? y * W * C + c : c * H * W + y * W);
  };
  const int64_t grain = std::max<int64_t>(1, kMinTaskValues / (W * C));
  at::parallel_for(0, N * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> row(W * C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, y = r % H;
      const int64_t h = images[n].size(1), w = images[n].size(2);
      if (y >= h) {  // a padding row: one run of W * C values, or C runs of W
        for (int64_t c = 0; c < (channels_last ? 1 : C); ++c) {
          std::memset(at(n, c, y), 0, sizeof(scalar_t) * W * (channels_last ? C : 1));
        }
        continue;
      }
      const float* image = images[n].const_data_ptr<float>() + y * w;
      if (channels_last) {
        if (C == 3) {
          normalize_rgb_row(image, image + h * w, image + 2 * h * w, w, mean, std, row.data());
        } else {
          for (int64_t c = 0; c < C; ++c) normalize_row(image + c * h * w, w, mean[c], std[c], row.data() + c, C);
        }
        sfpn::cpu::convert_rows(row.data(), 0, at(n, 0, y), 0, 1, w * C);
        std::memset(at(n, 0, y) + w * C, 0, sizeof(scalar_t) * (W - w) * C);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          normalize_row(image + c * h * w, w, mean[c], std[c], row.data(), 1);
          sfpn::cpu::convert_rows(row.data(), 0, at(n, c, y), 0, 1, w);
          std::memset(at(n, c, y) + w, 0, sizeof(scalar_t) * (W - w));
        }
      }
    }
  });
}

at::Tensor normalize_images(at::TensorList images, const at::Tensor& mean, const at::Tensor& std,
                            at::IntArrayRef size, at::ScalarType dtype, bool channels_last) {
  constexpr const char* op = "sfpn::normalize_images";
  TORCH_CHECK(!images.empty(), op, ": images must not be empty");
  TORCH_CHECK(size.size() == 2 && size[0] >= 0 && size[1] >= 0, op, ": size must be (H, W) >= 0, got ", size);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"mean", mean}, {"std", std}}) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), op, ": ", name,
                " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  }
  const int64_t C = mean.numel();
  TORCH_CHECK(C > 0 && std.numel() == C, op, ": mean and std must hold one value per channel, got ", mean.numel(),
              " and ", std.numel());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": dtype must be float32, bfloat16 or float16, got ", dtype);
  std::vector<at::Tensor> planes;
  planes.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& image = images[i];
    TORCH_CHECK(image.dim() == 3 && image.size(0) == C, op, ": images[", i, "] must be (", C, ", h, w), got shape ",
                image.sizes());
    TORCH_CHECK(image.scalar_type() == at::kFloat && image.device().is_cpu(), op, ": images[", i,
                "] must be a float32 CPU tensor, got ", image.scalar_type(), " on ", image.device());
    TORCH_CHECK(image.size(1) <= size[0] && image.size(2) <= size[1], op, ": images[", i, "] of size ",
                image.sizes().slice(1), " does not fit in size ", size);
    planes.push_back(image.contiguous());
  }
  const auto layout = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor batch = at::empty({static_cast<int64_t>(images.size()), C, size[0], size[1]},
                               planes[0].options().dtype(dtype).memory_format(layout));
  if (batch.numel() == 0) return batch;
  const at::Tensor means = mean.contiguous(), stds = std.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "sfpn::normalize_images", [&] {
    normalize_kernel<scalar_t>(planes, means.const_data_ptr<float>(), stds.const_data_ptr<float>(), channels_last,
                               batch);
  });
  return batch;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("normalize_images", &normalize_images);
}

}  // namespace sfpn::normalize_images::cpu
