// The overlap test shared by the CPU and CUDA NMS kernels, written so both compute bit-identical
// IoUs (and so match sfpn.ops.nms's reference and torchvision's float32 kernels):
//   inter = max(min(x2a, x2b) - max(x1a, x1b), 0) * max(min(y2a, y2b) - max(y1a, y1b), 0)
//   iou   = inter / ((area_a + area_b) - inter),   area = (x2 - x1) * (y2 - y1)
// in the op's accumulation type (float for half/bfloat16/float boxes, double for double).
// On the GPU the products use round-to-nearest intrinsics, which nvcc never contracts into an FMA
// (a contracted `sum - w * h` would round differently from the CPU).
//
// Non-finite coordinates: a NaN or infinite coordinate makes that box's area NaN or infinite, so
// the union is NaN or infinite and the IoU is NaN or 0: `iou > threshold` is false for any
// threshold >= 0, whatever min/max do with NaN. Such a box neither suppresses nor is suppressed.
#pragma once

#include <c10/macros/Macros.h>

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

}  // namespace sfpn::nms
