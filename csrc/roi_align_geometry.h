// RoIAlign sampling geometry shared by the CPU and CUDA kernels, single- and multi-level.
//
// Every rule here reproduces torchvision's RoIAlign (csrc/ops/*/roi_align_kernel.*) and its
// MultiScaleRoIAlign level mapper, so that our results match theirs. One observation drives the
// CPU kernels: the bilinear weight of a sample factorises into a row weight times a column weight,
// and so does torchvision's "sample outside the map counts zero" rule. The taps of a bin along
// each axis can therefore be computed once per RoI and shared by every channel.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace sfpn::roi_align {

// Pyramid levels one multi-level launch takes (FPN uses 4 or 5).
constexpr int kMaxLevels = 8;

// Where the bins of one RoI lie on its feature map, in input pixels.
template <typename T>
struct RoiGrid {
  T start_h, start_w;      // top-left corner of the RoI
  T bin_h, bin_w;          // size of one output bin
  int64_t grid_h, grid_w;  // samples per bin along each axis (0 for an empty adaptive grid)
};

// `box` points at [x1, y1, x2, y2] in image coordinates.
template <typename T>
C10_HOST_DEVICE inline RoiGrid<T> roi_grid(
    const T* box, T spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoiGrid<T> g;
  g.start_w = box[0] * spatial_scale - offset;
  g.start_h = box[1] * spatial_scale - offset;
  T roi_w = box[2] * spatial_scale - offset - g.start_w;
  T roi_h = box[3] * spatial_scale - offset - g.start_h;
  if (!aligned) {  // legacy mode: force malformed RoIs to be at least 1x1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_h);
  g.bin_w = roi_w / static_cast<T>(pooled_w);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(roi_h / static_cast<T>(pooled_h)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(roi_w / static_cast<T>(pooled_w)));
  if (g.grid_h < 0) g.grid_h = 0;  // an inverted box in aligned mode
  if (g.grid_w < 0) g.grid_w = 0;
  return g;
}

// Coordinate of sample `i` (of `grid`) inside bin `p` along one axis.
template <typename T>
C10_HOST_DEVICE inline T sample_coord(T start, T bin, int64_t p, int64_t i, int64_t grid) {
  return start + static_cast<T>(p) * bin + static_cast<T>(i + T(0.5)) * bin / static_cast<T>(grid);
}

// The two taps of linear interpolation at `v` along an axis of `size` pixels. Returns false when
// the sample lies more than one pixel outside the map (it then contributes zero); clamps otherwise.
template <typename T>
C10_HOST_DEVICE inline bool axis_taps(T v, int64_t size, int64_t& low, int64_t& high, T& w_low, T& w_high) {
  if (v < T(-1) || v > static_cast<T>(size)) return false;
  if (v <= T(0)) v = T(0);
  low = static_cast<int64_t>(v);
  if (low >= size - 1) {
    low = high = size - 1;
    v = static_cast<T>(low);
  } else {
    high = low + 1;
  }
  w_high = v - static_cast<T>(low);
  w_low = T(1) - w_high;
  return true;
}

// torchvision's LevelMapper (FPN paper, eq. 1): the pyramid level of a box of image-space area A
// is floor(canonical_level + log2(sqrt(A) / canonical_scale) + 1e-6), clamped to
// [k_min, k_max]; returned as an index into the levels (0 for k_min). A single level maps to 0.
struct LevelMapper {
  int64_t k_min = 0, k_max = 0;
  double canonical_scale = 224;
  int64_t canonical_level = 4;

  template <typename T>
  C10_HOST_DEVICE int64_t operator()(const T* box) const {
    if (k_max == k_min) return 0;
    const T size = sqrt((box[2] - box[0]) * (box[3] - box[1]));
    const T level =
        floor(static_cast<T>(canonical_level) + log2(size / static_cast<T>(canonical_scale)) + static_cast<T>(1e-6));
    if (!(level >= static_cast<T>(k_min))) return 0;  // also a NaN from an inverted box
    if (level > static_cast<T>(k_max)) return k_max - k_min;
    return static_cast<int64_t>(level) - k_min;
  }
};

// The pyramid level k of a feature map of scale 2^-k, as torchvision infers it.
inline int64_t level_of_scale(double scale) {
  return static_cast<int64_t>(-std::log2(static_cast<float>(scale)));
}

// The mapper of levels whose scales run from `first_scale` (finest) to `last_scale` (coarsest).
inline LevelMapper make_level_mapper(double first_scale, double last_scale, double canonical_scale,
                                     int64_t canonical_level) {
  return LevelMapper{level_of_scale(first_scale), level_of_scale(last_scale), canonical_scale, canonical_level};
}

}  // namespace sfpn::roi_align
