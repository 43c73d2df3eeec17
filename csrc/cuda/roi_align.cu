// RoIAlign on CUDA, forward and backward, for one level (sfpn::roi_align) and for a whole
// pyramid in one launch (sfpn::multilevel_roi_align); argument checks and the operators are
// shared with the CPU in roi_align.h.
//
// Forward: one thread per output element (RoI, channel, bin); the RoI's level is chosen in the
// thread (torchvision's LevelMapper rule), the level pointers travel by value in the launch.
// Backward, default: one thread per output gradient element, float atomics into the input
// gradient (fp16/bf16 accumulate in an fp32 buffer). Backward, deterministic: every (RoI, bin,
// sample, bilinear corner) tap is listed with its input pixel, the list is sorted stably by pixel,
// and one thread per (pixel run, channel) sums the run in that fixed order and stores the result
// once: no atomics, the same bits on every run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>

#include <limits>

#include "roi_align.h"
#include "cuda/launch.cuh"  // last: the emulated build's CUDA names follow every other header

namespace sfpn::roi_align::cuda {
namespace {

// Feature maps (or their gradients) of every level, passed by value to a kernel. `offset` numbers
// the pixels (channel excluded) of the whole pyramid: level l's start, N * H * W per level.
template <typename T>
struct LevelMaps {
  T* data[kMaxLevels];
  int64_t height[kMaxLevels];
  int64_t width[kMaxLevels];
  int64_t offset[kMaxLevels];
  double scale[kMaxLevels];
  int64_t count;
  int64_t batch_size;
};

template <typename T, typename U>
LevelMaps<T> level_maps(const std::vector<U*>& data, int64_t batch_size, at::IntArrayRef heights,
                        at::IntArrayRef widths, at::ArrayRef<double> scales) {
  TORCH_CHECK(data.size() <= static_cast<size_t>(kMaxLevels), "roi_align: at most ", kMaxLevels,
              " levels per launch, got ", data.size());
  LevelMaps<T> maps{};
  maps.count = static_cast<int64_t>(data.size());
  maps.batch_size = batch_size;
  for (size_t l = 0; l < data.size(); ++l) {
    maps.data[l] = data[l];
    maps.height[l] = heights[l];
    maps.width[l] = widths[l];
    maps.scale[l] = scales[l];
    maps.offset[l] = l == 0 ? 0 : maps.offset[l - 1] + batch_size * heights[l - 1] * widths[l - 1];
  }
  return maps;
}

// A RoI [batch, x1, y1, x2, y2] must have a batch index in [0, N) and finite coordinates. The
// kernels assert it on the device: a check on the host would cost a device-to-host sync per call.
template <typename acc_t>
__device__ __forceinline__ void assert_valid_roi(const acc_t* roi, int64_t batch_size) {
  CUDA_KERNEL_ASSERT_MSG(roi[0] >= acc_t(0) && roi[0] < static_cast<acc_t>(batch_size),
                         "roi_align: a RoI's batch index lies outside [0, N)");
  // x - x is 0 for a finite x, NaN for an infinite or NaN one.
  CUDA_KERNEL_ASSERT_MSG(roi[1] - roi[1] == acc_t(0) && roi[2] - roi[2] == acc_t(0) && roi[3] - roi[3] == acc_t(0) &&
                             roi[4] - roi[4] == acc_t(0),
                         "roi_align: a RoI has a non-finite coordinate");
}

struct BinIndex {
  int64_t roi, channel, ph, pw;
};

__device__ __forceinline__ BinIndex unravel(int64_t index, int64_t channels, int64_t pooled_h, int64_t pooled_w) {
  BinIndex b;
  b.pw = index % pooled_w;
  index /= pooled_w;
  b.ph = index % pooled_h;
  index /= pooled_h;
  b.channel = index % channels;
  b.roi = index / channels;
  return b;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(int64_t total, LevelMaps<const scalar_t> levels, const acc_t* __restrict__ rois,
                               int64_t channels, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                               bool aligned, LevelMapper mapper, scalar_t* __restrict__ out) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const BinIndex b = unravel(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    assert_valid_roi(roi, levels.batch_size);
    const int64_t level = mapper(roi + 1);
    const int64_t height = levels.height[level], width = levels.width[level];
    const RoiGrid<acc_t> g =
        roi_grid(roi + 1, static_cast<acc_t>(levels.scale[level]), pooled_h, pooled_w, sampling_ratio, aligned);
    const scalar_t* plane =
        levels.data[level] + (static_cast<int64_t>(roi[0]) * channels + b.channel) * height * width;
    acc_t sum = 0;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      int64_t y0, y1;
      acc_t wy0, wy1;
      if (!axis_taps(sample_coord(g.start_h, g.bin_h, b.ph, iy, g.grid_h), height, y0, y1, wy0, wy1)) continue;
      const scalar_t* row0 = plane + y0 * width;
      const scalar_t* row1 = plane + y1 * width;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        int64_t x0, x1;
        acc_t wx0, wx1;
        if (!axis_taps(sample_coord(g.start_w, g.bin_w, b.pw, ix, g.grid_w), width, x0, x1, wx0, wx1)) continue;
        sum += wy0 * (wx0 * static_cast<acc_t>(row0[x0]) + wx1 * static_cast<acc_t>(row0[x1])) +
               wy1 * (wx0 * static_cast<acc_t>(row1[x0]) + wx1 * static_cast<acc_t>(row1[x1]));
      }
    }
    const int64_t count = g.grid_h * g.grid_w;
    out[index] = static_cast<scalar_t>(count > 0 ? sum / static_cast<acc_t>(count) : sum);
  }
}

// Atomic backward: grad_levels hold acc_t (the input dtype for fp32/fp64, fp32 otherwise).
template <typename scalar_t, typename acc_t>
__global__ void backward_atomic_kernel(int64_t total, const scalar_t* __restrict__ grad, const acc_t* __restrict__ rois,
                                       int64_t channels, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                       bool aligned, LevelMapper mapper, LevelMaps<acc_t> grad_levels) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const BinIndex b = unravel(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    assert_valid_roi(roi, grad_levels.batch_size);
    const acc_t g_out = static_cast<acc_t>(grad[index]);
    if (g_out == acc_t(0)) continue;
    const int64_t level = mapper(roi + 1);
    const int64_t height = grad_levels.height[level], width = grad_levels.width[level];
    const RoiGrid<acc_t> g =
        roi_grid(roi + 1, static_cast<acc_t>(grad_levels.scale[level]), pooled_h, pooled_w, sampling_ratio, aligned);
    acc_t* plane = grad_levels.data[level] + (static_cast<int64_t>(roi[0]) * channels + b.channel) * height * width;
    const int64_t count = g.grid_h * g.grid_w;
    const acc_t g_sample = count > 0 ? g_out / static_cast<acc_t>(count) : g_out;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      int64_t y0, y1;
      acc_t wy0, wy1;
      if (!axis_taps(sample_coord(g.start_h, g.bin_h, b.ph, iy, g.grid_h), height, y0, y1, wy0, wy1)) continue;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        int64_t x0, x1;
        acc_t wx0, wx1;
        if (!axis_taps(sample_coord(g.start_w, g.bin_w, b.pw, ix, g.grid_w), width, x0, x1, wx0, wx1)) continue;
        atomicAdd(plane + y0 * width + x0, g_sample * wy0 * wx0);
        atomicAdd(plane + y0 * width + x1, g_sample * wy0 * wx1);
        atomicAdd(plane + y1 * width + x0, g_sample * wy1 * wx0);
        atomicAdd(plane + y1 * width + x1, g_sample * wy1 * wx1);
      }
    }
  }
}

// ---- deterministic backward ------------------------------------------------------------------
// A tap's key is its input pixel across the pyramid, channel excluded:
// offset[level] + (batch * H + y) * W + x. Taps of samples outside the map get kNoPixel.
constexpr int64_t kNoPixel = std::numeric_limits<int64_t>::max();

template <typename acc_t>
__global__ void count_taps_kernel(int64_t num_rois, const acc_t* __restrict__ rois, LevelMaps<acc_t> levels,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                  LevelMapper mapper, int64_t* __restrict__ taps_per_roi) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < num_rois;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t* roi = rois + k * 5;
    assert_valid_roi(roi, levels.batch_size);
    const int64_t level = mapper(roi + 1);
    const RoiGrid<acc_t> g =
        roi_grid(roi + 1, static_cast<acc_t>(levels.scale[level]), pooled_h, pooled_w, sampling_ratio, aligned);
    taps_per_roi[k] = 4 * g.grid_h * g.grid_w * pooled_h * pooled_w;
  }
}

// One thread per (RoI, bin): lists the bin's taps from (tap_end[k - 1]) + bin * 4 * grid_h * grid_w.
// count_taps_kernel has asserted every RoI valid.
template <typename acc_t>
__global__ void list_taps_kernel(int64_t num_bins, const acc_t* __restrict__ rois, LevelMaps<acc_t> levels,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                 LevelMapper mapper, const int64_t* __restrict__ tap_end, int64_t* __restrict__ pixel,
                                 int32_t* __restrict__ tap_roi, int32_t* __restrict__ tap_bin,
                                 acc_t* __restrict__ tap_weight) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < num_bins;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bins = pooled_h * pooled_w, k = index / bins, bin = index % bins;
    const int64_t ph = bin / pooled_w, pw = bin % pooled_w;
    const acc_t* roi = rois + k * 5;
    const int64_t level = mapper(roi + 1);
    const int64_t height = levels.height[level], width = levels.width[level];
    const RoiGrid<acc_t> g =
        roi_grid(roi + 1, static_cast<acc_t>(levels.scale[level]), pooled_h, pooled_w, sampling_ratio, aligned);
    const int64_t samples = g.grid_h * g.grid_w;
    const int64_t first = (k > 0 ? tap_end[k - 1] : 0) + bin * 4 * samples;
    const int64_t image = levels.offset[level] + static_cast<int64_t>(roi[0]) * height * width;
    const acc_t inv_count = samples > 0 ? acc_t(1) / static_cast<acc_t>(samples) : acc_t(1);
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      int64_t y[2];
      acc_t wy[2];
      const bool y_inside =
          axis_taps(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height, y[0], y[1], wy[0], wy[1]);
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        int64_t x[2];
        acc_t wx[2];
        const bool inside = y_inside &&
                            axis_taps(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width, x[0], x[1], wx[0], wx[1]);
        const int64_t base = first + 4 * (iy * g.grid_w + ix);
        for (int corner = 0; corner < 4; ++corner) {
          const int cy = corner >> 1, cx = corner & 1;
          pixel[base + corner] = inside ? image + y[cy] * width + x[cx] : kNoPixel;
          tap_roi[base + corner] = static_cast<int32_t>(k);
          tap_bin[base + corner] = static_cast<int32_t>(bin);
          tap_weight[base + corner] = inside ? wy[cy] * wx[cx] * inv_count : acc_t(0);
        }
      }
    }
  }
}

// One thread per (sorted tap, channel), channels fastest so that a warp shares its tap metadata.
// The first tap of each run of equal pixels sums the run in sorted (= listing) order and stores
// the pixel's gradient; pixels no tap reaches keep their zero.
template <typename scalar_t, typename acc_t>
__global__ void reduce_taps_kernel(int64_t total, int64_t num_taps, int64_t channels, int64_t bins,
                                   const int64_t* __restrict__ sorted_pixel, const int64_t* __restrict__ order,
                                   const int32_t* __restrict__ tap_roi, const int32_t* __restrict__ tap_bin,
                                   const acc_t* __restrict__ tap_weight, const scalar_t* __restrict__ grad,
                                   LevelMaps<scalar_t> grad_levels) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = index / channels, c = index % channels;
    const int64_t key = sorted_pixel[j];
    if (key == kNoPixel || (j > 0 && sorted_pixel[j - 1] == key)) continue;
    acc_t sum = 0;
    for (int64_t i = j; i < num_taps && sorted_pixel[i] == key; ++i) {
      const int64_t tap = order[i];
      sum += tap_weight[tap] * static_cast<acc_t>(grad[(tap_roi[tap] * channels + c) * bins + tap_bin[tap]]);
    }
    int64_t level = 0;
    while (level + 1 < grad_levels.count && grad_levels.offset[level + 1] <= key) ++level;
    const int64_t plane_size = grad_levels.height[level] * grad_levels.width[level];
    const int64_t in_level = key - grad_levels.offset[level], batch = in_level / plane_size;
    grad_levels.data[level][(batch * channels + c) * plane_size + in_level % plane_size] = static_cast<scalar_t>(sum);
  }
}

at::Tensor forward(at::TensorList levels, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_h,
                   int64_t pooled_w, int64_t sampling_ratio, bool aligned, const LevelMapper& mapper) {
  ForwardArgs args = forward_args(levels, rois, pooled_h, pooled_w);
  const at::Tensor& first = levels[0];
  const gpu::DeviceGuard guard(first.device());
  const int64_t total = args.output.numel();
  if (total == 0) return args.output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "sfpn::roi_align", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> data;
    for (const at::Tensor& level : args.levels) data.push_back(level.const_data_ptr<scalar_t>());
    gpu::launch<forward_kernel<scalar_t, acc_t>>(gpu::grid_stride(total), gpu::current_stream(),
        total, level_maps<const scalar_t>(data, first.size(0), args.heights, args.widths, scales),
        args.rois.const_data_ptr<acc_t>(), first.size(1), pooled_h, pooled_w, sampling_ratio, aligned, mapper,
        args.output.mutable_data_ptr<scalar_t>());
  });
  return args.output;
}

std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales,
                                 int64_t batch_size, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
                                 int64_t sampling_ratio, bool aligned, const LevelMapper& mapper, bool deterministic,
                                 bool channels_last) {
  const BackwardArgs args = backward_args(grad, rois);
  TORCH_CHECK(scales.size() <= static_cast<size_t>(kMaxLevels), "roi_align_backward: at most ", kMaxLevels,
              " levels");
  const gpu::DeviceGuard guard(grad.device());
  const gpu::Stream stream = gpu::current_stream();
  const int64_t num_rois = grad.size(0), pooled_h = grad.size(2), pooled_w = grad.size(3);
  const int64_t num_levels = static_cast<int64_t>(scales.size());
  const bool low_precision = grad.scalar_type() == at::kHalf || grad.scalar_type() == at::kBFloat16;
  // The atomic path accumulates fp16/bf16 in fp32; the deterministic one stores each pixel once.
  const auto accumulate_type = low_precision && !deterministic ? at::kFloat : grad.scalar_type();
  std::vector<at::Tensor> grad_levels;
  for (int64_t l = 0; l < num_levels; ++l) {
    grad_levels.push_back(at::zeros({batch_size, channels, heights[l], widths[l]}, grad.options().dtype(accumulate_type)));
  }
  // The kernels write planar maps: the gradients leave in grad's dtype (the atomic path sums
  // fp16/bf16 in fp32) and the layout asked for, in one copy where either differs.
  const auto leave = [&] {
    const auto layout = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    for (at::Tensor& g : grad_levels) g = g.to(grad.scalar_type(), false, false, layout);
    return grad_levels;
  };
  const int64_t total = args.grad.numel();
  if (total == 0) return leave();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sfpn::roi_align_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* roi_data = args.rois.const_data_ptr<acc_t>();
    std::vector<acc_t*> no_data(num_levels, nullptr);
    const LevelMaps<acc_t> geometry = level_maps<acc_t>(no_data, batch_size, heights, widths, scales);
    if (!deterministic) {
      std::vector<acc_t*> data;
      for (at::Tensor& g : grad_levels) data.push_back(g.mutable_data_ptr<acc_t>());
      gpu::launch<backward_atomic_kernel<scalar_t, acc_t>>(gpu::grid_stride(total), stream,
          total, args.grad.const_data_ptr<scalar_t>(), roi_data, channels, pooled_h, pooled_w, sampling_ratio, aligned,
          mapper, level_maps<acc_t>(data, batch_size, heights, widths, scales));
      return;
    }
    // 1. taps per RoI and their running total (one host sync for the count), 2. the taps,
    // 3. a stable sort by pixel, 4. the fixed-order reduction.
    const auto long_options = grad.options().dtype(at::kLong);
    at::Tensor taps_per_roi = at::empty({num_rois}, long_options);
    gpu::launch<count_taps_kernel<acc_t>>(gpu::grid_stride(num_rois), stream,
        num_rois, roi_data, geometry, pooled_h, pooled_w, sampling_ratio, aligned, mapper,
        taps_per_roi.mutable_data_ptr<int64_t>());
    const at::Tensor tap_end = at::cumsum(taps_per_roi, 0);
    const int64_t num_taps = tap_end[num_rois - 1].item<int64_t>();
    if (num_taps == 0) return;
    at::Tensor pixel = at::empty({num_taps}, long_options);
    at::Tensor tap_roi = at::empty({num_taps}, grad.options().dtype(at::kInt));
    at::Tensor tap_bin = at::empty({num_taps}, grad.options().dtype(at::kInt));
    at::Tensor tap_weight = at::empty({num_taps}, grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const int64_t num_bins = num_rois * pooled_h * pooled_w;
    gpu::launch<list_taps_kernel<acc_t>>(gpu::grid_stride(num_bins), stream,
        num_bins, roi_data, geometry, pooled_h, pooled_w, sampling_ratio, aligned, mapper,
        tap_end.const_data_ptr<int64_t>(), pixel.mutable_data_ptr<int64_t>(), tap_roi.mutable_data_ptr<int32_t>(),
        tap_bin.mutable_data_ptr<int32_t>(), tap_weight.mutable_data_ptr<acc_t>());
    const auto [sorted_pixel, order] = at::sort(pixel, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    std::vector<scalar_t*> data;
    for (at::Tensor& g : grad_levels) data.push_back(g.mutable_data_ptr<scalar_t>());
    const int64_t work = num_taps * channels;
    gpu::launch<reduce_taps_kernel<scalar_t, acc_t>>(gpu::grid_stride(work), stream,
        work, num_taps, channels, pooled_h * pooled_w, sorted_pixel.const_data_ptr<int64_t>(),
        order.const_data_ptr<int64_t>(), tap_roi.const_data_ptr<int32_t>(), tap_bin.const_data_ptr<int32_t>(),
        tap_weight.const_data_ptr<acc_t>(), args.grad.const_data_ptr<scalar_t>(),
        level_maps<scalar_t>(data, batch_size, heights, widths, scales));
  });
  return leave();
}

}  // namespace

SFPN_CUDA_OPS(m) {
  register_roi_align_ops<forward, backward>(m);
}

}  // namespace sfpn::roi_align::cuda
