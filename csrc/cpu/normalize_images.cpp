// sfpn::normalize_images on the CPU: a detector's input batch in one pass. Each image (C, h, w)
// float32 is normalised, (x - mean) / std in float32 as the reference computes it, rounded once to
// the batch's dtype and written into its slot of the zero-padded (N, C, H, W) batch, NCHW or
// channels_last. Eagerly that is a subtraction, a division and a cast, each a fresh image, and a
// strided copy into the slot. Here a row of the image, planar or interleaved as it lies, is
// normalised into a row of floats laid out as the batch is, then cast into place; the padding is
// zeroed row by row. Schema, Python checks and reference: sfpn/ops/normalize_images.py.
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

// An image's values where they lie: (c, y, x) at data[c * channel + y * row + x * pixel]. Images are
// taken planar (C, h, w) or interleaved (h, w, C: a decoded image permuted, and what transforms
// keep of that layout), so that neither is transposed on the way to the batch.
struct Image {
  const float* data;
  int64_t h, w, channel, row, pixel;
};

// One channel of an image row: to[x * to_step] = (from[x * from_step] - mean) / std.
SFPN_VECTOR_CLONES void normalize_row(const float* __restrict__ from, int64_t from_step, int64_t width, float mean,
                                      float std, float* __restrict__ to, int64_t to_step) {
  for (int64_t x = 0; x < width; ++x) to[x * to_step] = (from[x * from_step] - mean) / std;
}

// The three channels of an image row into a channels_last row, each read every kStep floats (1:
// planar, 3: interleaved): grouped loads and stores, which the compiler vectorises with permutes
// where a store every third float, one channel at a time, stays scalar.
template <int64_t kStep>
SFPN_VECTOR_CLONES void normalize_rgb_row(const float* __restrict__ r, const float* __restrict__ g,
                                          const float* __restrict__ b, int64_t width, const float* mean,
                                          const float* std, float* __restrict__ to) {
  const float mr = mean[0], mg = mean[1], mb = mean[2], sr = std[0], sg = std[1], sb = std[2];
  for (int64_t x = 0; x < width; ++x) {
    to[3 * x] = (r[x * kStep] - mr) / sr;
    to[3 * x + 1] = (g[x * kStep] - mg) / sg;
    to[3 * x + 2] = (b[x * kStep] - mb) / sb;
  }
}

template <typename scalar_t>
void normalize_kernel(const std::vector<Image>& images, const float* mean, const float* std, bool channels_last,
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
      const Image& image = images[n];
      const int64_t w = image.w;
      if (y >= image.h) {  // a padding row: one run of W * C values, or C runs of W
        for (int64_t c = 0; c < (channels_last ? 1 : C); ++c) {
          std::memset(at(n, c, y), 0, sizeof(scalar_t) * W * (channels_last ? C : 1));
        }
        continue;
      }
      const float* from = image.data + y * image.row;
      if (channels_last) {
        if (C == 3 && image.pixel == 1) {
          normalize_rgb_row<1>(from, from + image.channel, from + 2 * image.channel, w, mean, std, row.data());
        } else if (C == 3) {
          normalize_rgb_row<3>(from, from + 1, from + 2, w, mean, std, row.data());
        } else {
          for (int64_t c = 0; c < C; ++c) {
            normalize_row(from + c * image.channel, image.pixel, w, mean[c], std[c], row.data() + c, C);
          }
        }
        sfpn::cpu::convert_rows(row.data(), 0, at(n, 0, y), 0, 1, w * C);
        std::memset(at(n, 0, y) + w * C, 0, sizeof(scalar_t) * (W - w) * C);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          normalize_row(from + c * image.channel, image.pixel, w, mean[c], std[c], row.data(), 1);
          sfpn::cpu::convert_rows(row.data(), 0, at(n, c, y), 0, 1, w);
          std::memset(at(n, c, y) + w, 0, sizeof(scalar_t) * (W - w));
        }
      }
    }
  });
}

// Whether `image` (C, h, w) lies interleaved, (h, w, C) contiguous.
bool interleaved(const at::Tensor& image) {
  return image.permute({1, 2, 0}).is_contiguous();
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
  std::vector<at::Tensor> kept;
  kept.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& image = images[i];
    TORCH_CHECK(image.dim() == 3 && image.size(0) == C, op, ": images[", i, "] must be (", C, ", h, w), got shape ",
                image.sizes());
    TORCH_CHECK(image.scalar_type() == at::kFloat && image.device().is_cpu(), op, ": images[", i,
                "] must be a float32 CPU tensor, got ", image.scalar_type(), " on ", image.device());
    TORCH_CHECK(image.size(1) <= size[0] && image.size(2) <= size[1], op, ": images[", i, "] of size ",
                image.sizes().slice(1), " does not fit in size ", size);
    // Kept as they lie when planar or interleaved; any other strides copied planar.
    kept.push_back(image.is_contiguous() || interleaved(image) ? image : image.contiguous());
  }
  const auto layout = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor batch = at::empty({static_cast<int64_t>(images.size()), C, size[0], size[1]},
                               kept[0].options().dtype(dtype).memory_format(layout));
  if (batch.numel() == 0) return batch;
  std::vector<Image> views;
  for (const at::Tensor& image : kept) {
    const int64_t h = image.size(1), w = image.size(2);
    views.push_back(image.is_contiguous() ? Image{image.const_data_ptr<float>(), h, w, h * w, w, 1}
                                          : Image{image.const_data_ptr<float>(), h, w, 1, w * C, C});
  }
  const at::Tensor means = mean.contiguous(), stds = std.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "sfpn::normalize_images", [&] {
    normalize_kernel<scalar_t>(views, means.const_data_ptr<float>(), stds.const_data_ptr<float>(), channels_last,
                               batch);
  });
  return batch;
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("normalize_images", &normalize_images);
}

}  // namespace sfpn::normalize_images::cpu
