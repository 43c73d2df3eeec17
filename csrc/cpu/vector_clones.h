// SFPN_VECTOR_CLONES: compiles a hot CPU loop for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3) and
// the baseline, the loader choosing the best one this CPU runs (GCC's function multiversioning,
// an ifunc resolved once). The extension itself is built without -march flags, so that it runs
// on any x86-64 (its build machine need not be the one it runs on), and the baseline alone
// vectorises with SSE2: four floats a step. On the AMD EPYC (Zen 5) the cross entropy's loop ran
// 3x faster with AVX-512, the class map's 1.8x (benchmarks/RESULTS.md, 2026-12-03).
//
// Put it on a named function (template) holding the whole loop, not on a lambda, and keep what
// it calls inline: a callee outside the clone runs at the baseline. A clone must not throw (no
// TORCH_CHECK, no allocation): GCC 12 calls it as nothrow, so an exception thrown in it ends the
// process. Return what went wrong and check it after the call; allocate before it.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SFPN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SFPN_VECTOR_CLONES
#endif

namespace sfpn::cpu {

// `rows` rows of `width` values from `from` (rows `from_stride` apart) to `to` (`to_stride`
// apart), converted: how a kernel lands its float sums in a bf16/fp16 map (or copies fp32 ones),
// a row of a plane or a block of channels of every NHWC pixel.
template <typename from_t, typename to_t>
SFPN_VECTOR_CLONES void convert_rows(const from_t* from, int64_t from_stride, to_t* to, int64_t to_stride, int64_t rows,
                                     int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    const from_t* __restrict__ source = from + r * from_stride;
    to_t* __restrict__ target = to + r * to_stride;
    for (int64_t i = 0; i < width; ++i) target[i] = static_cast<to_t>(source[i]);
  }
}

}  // namespace sfpn::cpu
