// Host check of the CUDA kernels' per-element logic (csrc/cuda/resize_kernels.cuh): sample() and
// adjoint() against a dense-matrix model of the resize, Y = Mh X Mw^T and its adjoint
// Mh^T G Mw, built from the shared taps (which the Python tests check against F.interpolate).
// Built and run by tests/native/test_resize_logic.py, so that the CUDA code is tested without a GPU.
// Exit status 0 when every element agrees.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/resize_kernels.cuh"

using sfpn::resize::Axis;

namespace {

// The dense (out, in) matrix of one axis of the resize.
std::vector<double> dense(const Axis<double>& axis) {
  std::vector<double> matrix(axis.out_size * axis.in_size, 0.0);
  for (int64_t o = 0; o < axis.out_size; ++o) {
    const auto taps = axis.taps_of(o);
    matrix[o * axis.in_size + taps.index0] += taps.weight0;
    matrix[o * axis.in_size + taps.index1] += taps.weight1;
  }
  return matrix;
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  std::normal_distribution<double> normal;
  const int heights[] = {1, 2, 3, 5, 7, 8, 13, 16, 25, 42};
  const int in_widths[] = {1, 4, 7};
  const int out_widths[] = {1, 3, 8, 14};
  long checks = 0, failures = 0;
  for (int linear = 0; linear < 2; ++linear) {
    for (int corners = 0; corners <= linear; ++corners) {
      for (int ih : heights) for (int iw : in_widths) for (int oh : heights) for (int ow : out_widths) {
        const Axis<double> rows(ih, oh, linear, corners), cols(iw, ow, linear, corners);
        const std::vector<double> mh = dense(rows), mw = dense(cols);
        std::vector<double> x(ih * iw), g(oh * ow);
        for (double& v : x) v = normal(rng);
        for (double& v : g) v = normal(rng);
        for (int y = 0; y < oh; ++y) {
          for (int c = 0; c < ow; ++c) {
            double want = 0;
            for (int i = 0; i < ih; ++i)
              for (int j = 0; j < iw; ++j) want += mh[y * ih + i] * mw[c * iw + j] * x[i * iw + j];
            const double got = sfpn::resize::cuda::sample(x.data(), iw, rows.taps_of(y), cols.taps_of(c));
            ++checks;
            if (std::fabs(got - want) > 1e-9 && failures++ < 10)
              std::printf("sample mode=%d corners=%d (%d,%d)->(%d,%d) at (%d,%d): %g, want %g\n", linear, corners,
                  ih, iw, oh, ow, y, c, got, want);
          }
        }
        for (int i = 0; i < ih; ++i) {
          for (int j = 0; j < iw; ++j) {
            double want = 0;
            for (int y = 0; y < oh; ++y)
              for (int c = 0; c < ow; ++c) want += mh[y * ih + i] * mw[c * iw + j] * g[y * ow + c];
            const double got = sfpn::resize::cuda::adjoint(g.data(), rows, cols, i, j);
            ++checks;
            if (std::fabs(got - want) > 1e-9 && failures++ < 10)
              std::printf("adjoint mode=%d corners=%d (%d,%d)->(%d,%d) at (%d,%d): %g, want %g\n", linear, corners,
                  ih, iw, oh, ow, i, j, got, want);
          }
        }
      }
    }
  }
  std::printf("%ld checks, %ld failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
