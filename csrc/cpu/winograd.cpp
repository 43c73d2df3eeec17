// sfpn::winograd_conv2d on the CPU: a 3x3 convolution (stride 1, padding 1) by Winograd's F(4x4, 3x3),
// and its backward. The float32 3x3 convolutions of the detectors run at the FMA peak of the CPU
// (benchmarks/RESULTS.md, 2026-12-05 (morning)): only fewer FLOPs make them faster, and F(4x4,
// 3x3) does 36 multiplies for each 16 outputs of a channel pair where a direct convolution does 144.
//
// The map is cut into 4x4 output tiles; tile (ty, tx) reads the 6x6 input window whose top-left
// pixel is (4 ty - 1, 4 tx - 1), zeros outside the map. With the points 0, +-1, +-2 (Lavin & Gray,
// "Fast Algorithms for Convolutional Neural Networks", 2016) and the matrices B^T (6x6), G (6x3)
// and A^T (4x6) of sfpn/ops/winograd.py (whose reference is the same computation in PyTorch):
//   forward   V = B^T d B of each window d            tiles (36, T, C), T = N ceil(H/4) ceil(W/4)
//             M[p] = V[p] U[p] for each position p     U = G w G^T, the weight (36, C, K), given
//             y = A^T M A of each tile, plus the bias  inside the map, (N, K, H, W) channels_last
//   backward  dM = A dy A^T of each tile of dy (zeros outside the map), then
//             dV[p] = dM[p] U[p]^T, dx = B dV B^T of each tile summed into its window;
//             dU[p] = V[p]^T dM[p] (V computed again, not kept from the forward)
// Tiles are in (n, ty, tx) order, position p = 6 i + j; maps are NHWC, so that each step below
// works on a register of channels; the products are ATen's batched matrix product. The tiles, the
// products and the maps (2.25x the map's size for the tiles) come from recycled memory
// (recycled_memory.h): fresh, their page faults took a third of the products' time. For small
// filters on large maps the forward goes a block of tiles at a time instead, in cache throughout
// (kCachedWeightBytes).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>

#include "checks.h"
#include "cpu/recycled_memory.h"
#include "cpu/vector_clones.h"

namespace sfpn::winograd::cpu {
namespace {

constexpr int64_t kTile = 4;             // output pixels per tile side
constexpr int64_t kWindow = kTile + 2;   // input pixels per tile side
constexpr int64_t kPositions = kWindow * kWindow;
// Values per parallel task at least (tiles x 36 positions x channels): small maps run on one thread.
constexpr int64_t kMinTaskValues = int64_t(1) << 14;
// The forward goes a block of tiles at a time where the transformed filters (36 C K values) take at
// most this much (with the block's tiles and products they stay in a core's L2 cache) and the map
// has at least kMinBlockedTiles tiles: with fewer blocks than that gives, the blocks' own costs and
// their uneven share between two threads lost to the whole map's passes (32-64 channels at 32 x 40,
// batch 4, two threads: 0.75-0.9x; at 64 x 80 1.3x; Xeon model 207).
constexpr int64_t kCachedWeightBytes = int64_t(1) << 20;
constexpr int64_t kBlockTiles = 64;
constexpr int64_t kMinBlockedTiles = 1024;

struct Geometry {
  int64_t batch, channels, height, width, tiles_h, tiles_w;

  Geometry(int64_t n, int64_t c, int64_t h, int64_t w)
      : batch(n),
        channels(c),
        height(h),
        width(w),
        tiles_h((h + kTile - 1) / kTile),
        tiles_w((w + kTile - 1) / kTile) {}
  int64_t tiles() const { return batch * tiles_h * tiles_w; }
  // The tile's image and its window's top-left pixel (row, column), one pixel before its outputs'.
  void origin(int64_t tile, int64_t& n, int64_t& row, int64_t& col) const {
    n = tile / (tiles_h * tiles_w);
    row = (tile / tiles_w) % tiles_h * kTile - 1;
    col = tile % tiles_w * kTile - 1;
  }
  bool inside(int64_t row, int64_t col) const { return row >= 0 && row < height && col >= 0 && col < width; }
  // The offset of channel c of pixel (row, col) of image n in an (N, H, W, C) map.
  int64_t offset(int64_t n, int64_t row, int64_t col, int64_t c) const {
    return ((n * height + row) * width + col) * channels + c;
  }
};

// The four transforms of six (or four) values `s` apart into six (or four) values `t` apart, each
// a register of channels: B^T v, A^T v, A v and B v, with the matrices' zeros left out.
template <typename V>
[[gnu::always_inline]] inline void input_transform(const V* d, int s, V* r, int t) {
  r[0] = 4 * d[0] - 5 * d[2 * s] + d[4 * s];
  r[t] = -4 * (d[s] + d[2 * s]) + d[3 * s] + d[4 * s];
  r[2 * t] = 4 * (d[s] - d[2 * s]) - d[3 * s] + d[4 * s];
  r[3 * t] = 2 * (d[3 * s] - d[s]) - d[2 * s] + d[4 * s];
  r[4 * t] = 2 * (d[s] - d[3 * s]) - d[2 * s] + d[4 * s];
  r[5 * t] = 4 * d[s] - 5 * d[3 * s] + d[5 * s];
}

template <typename V>
[[gnu::always_inline]] inline void output_transform(const V* m, int s, V* r, int t) {
  const V plus1 = m[s] + m[2 * s], minus1 = m[s] - m[2 * s];
  const V plus2 = m[3 * s] + m[4 * s], minus2 = m[3 * s] - m[4 * s];
  r[0] = m[0] + plus1 + plus2;
  r[t] = minus1 + 2 * minus2;
  r[2 * t] = plus1 + 4 * plus2;
  r[3 * t] = minus1 + 8 * minus2 + m[5 * s];
}

template <typename V>
[[gnu::always_inline]] inline void output_adjoint(const V* g, int s, V* r, int t) {
  const V even1 = g[0] + g[2 * s], odd1 = g[s] + g[3 * s];
  const V even2 = g[0] + 4 * g[2 * s], odd2 = 2 * g[s] + 8 * g[3 * s];
  r[0] = g[0];
  r[t] = even1 + odd1;
  r[2 * t] = even1 - odd1;
  r[3 * t] = even2 + odd2;
  r[4 * t] = even2 - odd2;
  r[5 * t] = g[3 * s];
}

template <typename V>
[[gnu::always_inline]] inline void input_adjoint(const V* v, int s, V* r, int t) {
  r[0] = 4 * v[0];
  r[t] = 4 * (v[2 * s] - v[s] + v[5 * s]) + 2 * (v[4 * s] - v[3 * s]);
  r[2 * t] = -5 * v[0] - 4 * (v[s] + v[2 * s]) - v[3 * s] - v[4 * s];
  r[3 * t] = v[s] - v[2 * s] + 2 * (v[3 * s] - v[4 * s]) - 5 * v[5 * s];
  r[4 * t] = v[0] + v[s] + v[2 * s] + v[3 * s] + v[4 * s];
  r[5 * t] = v[5 * s];
}

// A register of channels c0.. of `from` (`width` of them valid, the rest zero), and back.
// A whole register is one load (the size a constant); only the last block of channels is partial,
// its other lanes zero. (Out through a reference: a vector return would take the baseline's ABI.)
template <typename scalar_t, typename V>
[[gnu::always_inline]] inline void load(V& v, const scalar_t* from, int64_t width) {
  if (width == sfpn::cpu::Lanes<scalar_t>::size) {
    std::memcpy(&v, from, sizeof v);
  } else {
    v = V{};
    std::memcpy(&v, from, width * sizeof(scalar_t));
  }
}

template <typename scalar_t, typename V>
[[gnu::always_inline]] inline void store(const V& v, scalar_t* to, int64_t width) {
  if (width == sfpn::cpu::Lanes<scalar_t>::size) {
    std::memcpy(to, &v, sizeof v);
  } else {
    std::memcpy(to, &v, width * sizeof(scalar_t));
  }
}


// The size x size patch at (row, col) of image n of `map` (N, H, W, C), channels c0.. (`width` of
// them), into `patch` (row-major), zeros outside the map.
template <int size, typename scalar_t, typename V>
[[gnu::always_inline]] inline void load_patch(V* patch, const scalar_t* map, const Geometry& g, int64_t n, int64_t row,
                                              int64_t col, int64_t c0, int64_t width) {
  for (int i = 0; i < size; ++i) {
    for (int j = 0; j < size; ++j) {
      if (g.inside(row + i, col + j)) {
        load(patch[i * size + j], map + g.offset(n, row + i, col + j, c0), width);
      } else {
        patch[i * size + j] = V{};
      }
    }
  }
}

// The tiles [begin, end) of x (N, H, W, C): V = B^T d B of each window d, into tiles (36, S, C)
// whose first row holds tile `first` (S = T and first = 0 for all of a map's tiles).
template <typename scalar_t>
SFPN_VECTOR_CLONES void transform_windows(const scalar_t* x, scalar_t* tiles, Geometry g, int64_t begin, int64_t end,
                                          int64_t first, int64_t S) {
  using V = sfpn::cpu::lanes_t<scalar_t>;
  constexpr int64_t lanes = sfpn::cpu::Lanes<scalar_t>::size;
  const int64_t C = g.channels;
  for (int64_t tile = begin; tile < end; ++tile) {
    int64_t n, row, col;
    g.origin(tile, n, row, col);
    for (int64_t c0 = 0; c0 < C; c0 += lanes) {
      const int64_t width = std::min(lanes, C - c0);
      V d[kPositions], columns[kPositions], v[kPositions];
      load_patch<kWindow>(d, x, g, n, row, col, c0, width);
      for (int j = 0; j < kWindow; ++j) input_transform(d + j, kWindow, columns + j, kWindow);
      for (int i = 0; i < kWindow; ++i) input_transform(columns + i * kWindow, 1, v + i * kWindow, 1);
      for (int p = 0; p < kPositions; ++p) store(v[p], tiles + (p * S + tile - first) * C + c0, width);
    }
  }
}

// The outputs of tiles [begin, end): y = A^T M A of each tile's products M (36, S, K, its first row
// tile `first`), plus bias (K) if any, into y (N, H, W, K) where inside the map.
template <typename scalar_t>
SFPN_VECTOR_CLONES void untile(const scalar_t* tiles, const scalar_t* bias, scalar_t* y, Geometry g, int64_t begin,
                               int64_t end, int64_t first, int64_t S) {
  using V = sfpn::cpu::lanes_t<scalar_t>;
  constexpr int64_t lanes = sfpn::cpu::Lanes<scalar_t>::size;
  const int64_t K = g.channels;
  for (int64_t tile = begin; tile < end; ++tile) {
    int64_t n, row, col;
    g.origin(tile, n, row, col);
    for (int64_t k0 = 0; k0 < K; k0 += lanes) {
      const int64_t width = std::min(lanes, K - k0);
      V m[kPositions], columns[kTile * kWindow], out[kTile * kTile];
      for (int p = 0; p < kPositions; ++p) load(m[p], tiles + (p * S + tile - first) * K + k0, width);
      for (int j = 0; j < kWindow; ++j) output_transform(m + j, kWindow, columns + j, kWindow);
      for (int a = 0; a < kTile; ++a) output_transform(columns + a * kWindow, 1, out + a * kTile, 1);
      V shift{};
      if (bias != nullptr) load(shift, bias + k0, width);
      for (int a = 0; a < kTile; ++a) {
        for (int b = 0; b < kTile; ++b) {
          if (g.inside(row + 1 + a, col + 1 + b)) {
            store(out[a * kTile + b] + shift, y + g.offset(n, row + 1 + a, col + 1 + b, k0), width);
          }
        }
      }
    }
  }
}

// The adjoint of untile for tiles [begin, end): A dy A^T of each tile dy of grad (N, H, W, K), zeros
// outside the map, into tiles (36, T, K).
template <typename scalar_t>
SFPN_VECTOR_CLONES void untile_adjoint(const scalar_t* grad, scalar_t* tiles, Geometry g, int64_t begin, int64_t end) {
  using V = sfpn::cpu::lanes_t<scalar_t>;
  constexpr int64_t lanes = sfpn::cpu::Lanes<scalar_t>::size;
  const int64_t K = g.channels, T = g.tiles();
  for (int64_t tile = begin; tile < end; ++tile) {
    int64_t n, row, col;
    g.origin(tile, n, row, col);
    for (int64_t k0 = 0; k0 < K; k0 += lanes) {
      const int64_t width = std::min(lanes, K - k0);
      V dy[kTile * kTile], columns[kWindow * kTile], m[kPositions];
      load_patch<kTile>(dy, grad, g, n, row + 1, col + 1, k0, width);
      for (int b = 0; b < kTile; ++b) output_adjoint(dy + b, kTile, columns + b, kTile);
      for (int i = 0; i < kWindow; ++i) output_adjoint(columns + i * kTile, 1, m + i * kWindow, 1);
      for (int p = 0; p < kPositions; ++p) store(m[p], tiles + (p * T + tile) * K + k0, width);
    }
  }
}

// The adjoint of transform_windows for the tiles of the tile rows `rows` (image n, tile row ty as n *
// tiles_h + ty) [begin, end): grad (36, T, C) summed into dx (N, H, W, C). Windows of one tile row
// overlap by two columns and are summed in order; the caller keeps the rows of one call two apart,
// so that no two threads sum into the same pixel.
template <typename scalar_t>
SFPN_VECTOR_CLONES void tiles_adjoint(const scalar_t* grad, scalar_t* dx, Geometry g, int64_t parity, int64_t begin,
                                      int64_t end) {
  using V = sfpn::cpu::lanes_t<scalar_t>;
  constexpr int64_t lanes = sfpn::cpu::Lanes<scalar_t>::size;
  const int64_t C = g.channels, T = g.tiles(), half = (g.tiles_h + 1 - parity) / 2;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t first = (r / half * g.tiles_h + r % half * 2 + parity) * g.tiles_w;
    for (int64_t tile = first; tile < first + g.tiles_w; ++tile) {
      int64_t n, row, col;
      g.origin(tile, n, row, col);
      for (int64_t c0 = 0; c0 < C; c0 += lanes) {
        const int64_t width = std::min(lanes, C - c0);
        V v[kPositions], columns[kPositions], d[kPositions];
        for (int p = 0; p < kPositions; ++p) load(v[p], grad + (p * T + tile) * C + c0, width);
        for (int j = 0; j < kWindow; ++j) input_adjoint(v + j, kWindow, columns + j, kWindow);
        for (int i = 0; i < kWindow; ++i) input_adjoint(columns + i * kWindow, 1, d + i * kWindow, 1);
        for (int i = 0; i < kWindow; ++i) {
          for (int j = 0; j < kWindow; ++j) {
            if (g.inside(row + i, col + j)) {
              scalar_t* to = dx + g.offset(n, row + i, col + j, c0);
              V sum;
              load(sum, to, width);
              store(sum + d[i * kWindow + j], to, width);
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The ops: the transforms above around one batched matrix product per tile position.

int64_t grain_of(int64_t channels) {
  return std::max<int64_t>(1, kMinTaskValues / (kPositions * std::max<int64_t>(channels, 1)));
}

at::Tensor empty_tiles(const Geometry& g, const at::TensorOptions& options) {
  return memory::empty_recycled({kPositions, g.tiles(), g.channels}, options, at::MemoryFormat::Contiguous);
}

at::Tensor empty_map(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return memory::empty_recycled(sizes, options, at::MemoryFormat::ChannelsLast);
}

// x (N, C, H, W) -> its tiles (36, T, C).
at::Tensor tiles_of(const at::Tensor& x, const Geometry& g) {
  at::Tensor tiles = empty_tiles(g, x.options());
  const at::Tensor nhwc = x.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sfpn::winograd_conv2d", [&] {
    const scalar_t* in = nhwc.const_data_ptr<scalar_t>();
    scalar_t* out = tiles.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.tiles(), grain_of(g.channels),
                     [&](int64_t begin, int64_t end) { transform_windows(in, out, g, begin, end, 0, g.tiles()); });
  });
  return tiles;
}

void check_arguments(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  checks::check_tensor(op, "x", x, 4, "(N, C, H, W)");
  // Half precision would round the transforms' sums of up to 36 products too coarsely to be useful.
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "sfpn::", op,
              ": x must be float32 or float64, got ", x.scalar_type());
  checks::check_tensor(op, "weight", weight, 3, "(36, C, K)");
  checks::check_same_device(op, "weight", weight, "x", x);
  TORCH_CHECK(weight.size(0) == kPositions && weight.size(1) == x.size(1), "sfpn::", op,
              ": weight must be (36, C, K) with x's C = ", x.size(1), ", got shape ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "sfpn::", op, ": weight must have x's dtype (",
              x.scalar_type(), "), got ", weight.scalar_type());
}

at::Tensor winograd_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_arguments("winograd_conv2d", x, weight);
  const int64_t K = weight.size(2);
  if (bias.has_value()) {
    checks::check_same_device("winograd_conv2d", "bias", *bias, "x", x);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == K && bias->scalar_type() == x.scalar_type(),
                "sfpn::winograd_conv2d: bias must be (K) = (", K, ") of x's dtype ", x.scalar_type(), ", got shape ",
                bias->sizes(), " of dtype ", bias->scalar_type());
  }
  const Geometry in(x.size(0), x.size(1), x.size(2), x.size(3)), out(x.size(0), K, x.size(2), x.size(3));
  at::Tensor y = empty_map({out.batch, K, out.height, out.width}, x.options());
  if (y.numel() == 0) return y;
  const at::Tensor shift = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (weight.numel() * weight.element_size() <= kCachedWeightBytes && out.tiles() >= kMinBlockedTiles) {
    // Few channels: the transforms would move more memory than the products take time. The tiles a
    // block at a time instead, the blocks spread over the threads: a block's tiles and products
    // stay in cache from the input's transform through the product (one thread's) to the output's.
    const at::Tensor nhwc = x.contiguous(at::MemoryFormat::ChannelsLast), filters = weight.contiguous();
    const int64_t T = out.tiles();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sfpn::winograd_conv2d", [&] {
      const scalar_t* from = nhwc.const_data_ptr<scalar_t>();
      const scalar_t* b = shift.defined() ? shift.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* to = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, (T + kBlockTiles - 1) / kBlockTiles, 1, [&](int64_t b0, int64_t b1) {
        // Below autograd, as the kernel itself: a worker thread does not inherit the dispatch state.
        const at::AutoDispatchBelowADInplaceOrView below_autograd;
        for (int64_t block = b0; block < b1; ++block) {
          const int64_t first = block * kBlockTiles, last = std::min(T, first + kBlockTiles);
          at::Tensor tiles = at::empty({kPositions, last - first, in.channels}, x.options());
          at::Tensor products = at::empty({kPositions, last - first, K}, x.options());
          transform_windows(from, tiles.mutable_data_ptr<scalar_t>(), in, first, last, first, last - first);
          at::bmm_out(products, tiles, filters);
          untile(products.const_data_ptr<scalar_t>(), b, to, out, first, last, first, last - first);
        }
      });
    });
    return y;
  }
  at::Tensor products = empty_tiles(out, x.options());  // (36, T, K)
  at::bmm_out(products, tiles_of(x, in), weight);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sfpn::winograd_conv2d", [&] {
    const scalar_t* from = products.const_data_ptr<scalar_t>();
    const scalar_t* b = shift.defined() ? shift.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* to = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.tiles(), grain_of(K), [&](int64_t begin, int64_t end) {
      untile(from, b, to, out, begin, end, 0, out.tiles());
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> winograd_conv2d_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         std::array<bool, 3> needs) {
  check_arguments("winograd_conv2d_backward", x, weight);
  checks::check_tensor("winograd_conv2d_backward", "grad", grad, 4, "(N, K, H, W)");
  TORCH_CHECK(grad.size(0) == x.size(0) && grad.size(1) == weight.size(2) && grad.size(2) == x.size(2) &&
                  grad.size(3) == x.size(3) && grad.scalar_type() == x.scalar_type(),
              "sfpn::winograd_conv2d_backward: grad must be (N, K, H, W) = (", x.size(0), ", ", weight.size(2), ", ",
              x.size(2), ", ", x.size(3), ") of dtype ", x.scalar_type(), ", got shape ", grad.sizes(), " of dtype ",
              grad.scalar_type());
  const Geometry in(x.size(0), x.size(1), x.size(2), x.size(3)), out(x.size(0), weight.size(2), x.size(2), x.size(3));
  // A gradient not asked for is an empty tensor, as the schema returns three (the reference's too).
  at::Tensor grad_x = at::empty({0}, x.options()), grad_weight = grad_x, grad_bias = grad_x;
  if (needs[2]) grad_bias = grad.sum({0, 2, 3});
  if (!needs[0] && !needs[1]) return {grad_x, grad_weight, grad_bias};
  at::Tensor grad_products = empty_tiles(out, grad.options());  // (36, T, K)
  if (grad_products.numel() > 0) {
    const at::Tensor nhwc = grad.contiguous(at::MemoryFormat::ChannelsLast);
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sfpn::winograd_conv2d_backward", [&] {
      const scalar_t* from = nhwc.const_data_ptr<scalar_t>();
      scalar_t* to = grad_products.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, out.tiles(), grain_of(out.channels),
                       [&](int64_t begin, int64_t end) { untile_adjoint(from, to, out, begin, end); });
    });
  }
  if (needs[0]) {
    grad_x = empty_map(x.sizes(), x.options()).zero_();
    at::Tensor grad_tiles = empty_tiles(in, x.options());  // (36, T, C)
    at::bmm_out(grad_tiles, grad_products, weight.transpose(1, 2));
    if (grad_x.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sfpn::winograd_conv2d_backward", [&] {
        const scalar_t* from = grad_tiles.const_data_ptr<scalar_t>();
        scalar_t* to = grad_x.mutable_data_ptr<scalar_t>();
        // The even tile rows, then the odd ones: the windows of tile rows two apart do not meet.
        for (int64_t parity = 0; parity < 2; ++parity) {
          const int64_t rows = in.batch * ((in.tiles_h + 1 - parity) / 2);
          at::parallel_for(0, rows, std::max<int64_t>(1, grain_of(in.channels) / in.tiles_w),
                           [&](int64_t begin, int64_t end) { tiles_adjoint(from, to, in, parity, begin, end); });
        }
      });
    }
  }
  if (needs[1]) grad_weight = at::bmm(tiles_of(x, in).transpose(1, 2), grad_products);  // (36, C, K)
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(sfpn, CPU, m) {
  m.impl("winograd_conv2d", &winograd_conv2d);
  m.impl("winograd_conv2d_backward", &winograd_conv2d_backward);
}

}  // namespace sfpn::winograd::cpu
