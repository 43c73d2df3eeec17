// The overlap test shared by the CPU and CUDA NMS kernels, written so both compute bit-identical
// IoUs (and so match sfpn.ops.nms's reference and torchvision's float32 kernels):
//   inter = max(min(x2a, x2b) - max(x1a, x1b), 0) * max(min(y2a, y2b) - max(y1a, y1b), 0)
//   iou   = inter / ((area_a + area_b) - inter),   area = (x2 - x1) * (y2 - y1)
// in the op's accumulation type (float for half/bfloat16/float boxes, double for double), and
// compared with the threshold as torchvision's CPU kernel does: `double(iou) > iou_threshold`
// (see threshold_in, which makes that comparison in the IoU's own type).
// On the GPU the products use round-to-nearest intrinsics, which nvcc never contracts into an FMA
// (a contracted `sum - w * h` would round differently from the CPU).
//
// Non-finite coordinates: a NaN or infinite coordinate makes that box's area NaN or infinite, so
// the union is NaN or infinite and the IoU is NaN or 0: `iou > threshold` is false for any
// threshold >= 0, whatever min/max do with NaN. Such a box neither suppresses nor is suppressed.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace sfpn::nms {

// Boxes per mask word (CUDA) and rows per tile.
constexpr int kBoxesPerWord = 64;

C10_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

C10_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
C10_HOST_DEVICE inline T box_area(T x1, T y1, T x2, T y2) {
  return mul_rn(x2 - x1, y2 - y1);
}

// Whether box a = (ax1, ay1, ax2, ay2) with area `area_a` overlaps box b with IoU > threshold.
template <typename T>
C10_HOST_DEVICE inline bool iou_above(
    T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b, T threshold) {
  const T left = ax1 > bx1 ? ax1 : bx1;
  const T right = ax2 < bx2 ? ax2 : bx2;
  const T top = ay1 > by1 ? ay1 : by1;
  const T bottom = ay2 < by2 ? ay2 : by2;
  const T width = right - left > T(0) ? right - left : T(0);
  const T height = bottom - top > T(0) ? bottom - top : T(0);
  const T inter = mul_rn(width, height);
  return inter / ((area_a + area_b) - inter) > threshold;
}

// The threshold to compare a T IoU with, from the op's double `iou_threshold`: the largest T not
// above it, so that `iou > threshold_in<T>(t)` exactly when `double(iou) > t` for every T value
// (the next T above the result is above t). torchvision compares its float IoU with the double
// threshold; rounding the threshold to the nearest float instead would keep a pair whose IoU is
// float(0.3) = 0.30000001 at threshold 0.3, which torchvision suppresses. Host only.
template <typename T>
T threshold_in(double iou_threshold) {
  constexpr T kInfinity = std::numeric_limits<T>::infinity();
  constexpr double kMax = static_cast<double>(std::numeric_limits<T>::max());
  // Outside T's finite range the cast would overflow; these thresholds compare as the bounds do.
  if (iou_threshold > kMax) return iou_threshold == std::numeric_limits<double>::infinity() ? kInfinity : T(kMax);
  if (iou_threshold < -kMax) return -kInfinity;
  const T nearest = static_cast<T>(iou_threshold);  // NaN stays NaN: no IoU is above it either way
  return static_cast<double>(nearest) > iou_threshold ? std::nextafter(nearest, -kInfinity) : nearest;
}

}  // namespace sfpn::nms
