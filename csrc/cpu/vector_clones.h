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

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

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

// A register's worth of acc_t lanes in GCC's vector extension: one AVX-512 register in the
// x86-64-v4 clone, two AVX2 ones or four SSE ones in the others. A loop that keeps its sums in
// these is sure to keep them in registers, where a sum array in memory makes every update wait on
// the last one's store. The helpers are always inlined: a vector crossing a call would take the
// baseline's calling convention.
template <typename acc_t>
struct Lanes {
  typedef acc_t type __attribute__((vector_size(64)));
  static constexpr int64_t size = 64 / sizeof(acc_t);
};
template <typename acc_t>
using lanes_t = typename Lanes<acc_t>::type;

// Two registers' worth of channels, widened from scalar_t to acc_t sums and back. `load` fills
// `first` and `second` from `channels` values; `store` writes the two back in channel order. bf16
// is widened without shuffles: each 32-bit word of two bf16 values gives the even channel (its low
// half, shifted up) and the odd one (its high half, masked), so `first` holds the even channels and
// `second` the odd ones, and only `store` interleaves them again, once per sum.
template <typename scalar_t, typename acc_t>
struct LanePair {
  static constexpr int64_t channels = 2 * Lanes<acc_t>::size;

  [[gnu::always_inline]] static void load(const scalar_t* from, lanes_t<acc_t>& first, lanes_t<acc_t>& second) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(&first, from, sizeof first);
      std::memcpy(&second, from + Lanes<acc_t>::size, sizeof second);
    } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      static_assert(std::is_same_v<acc_t, float>);
      typedef uint32_t words_t __attribute__((vector_size(64)));  // sized by hand: GCC refuses dependent sizes here
      words_t words;
      std::memcpy(&words, from, sizeof words);
      const words_t even = words << 16, odd = words & 0xFFFF0000u;
      std::memcpy(&first, &even, sizeof first);
      std::memcpy(&second, &odd, sizeof second);
    } else {
      static_assert(std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>);
      typedef _Float16 halves_t __attribute__((vector_size(32)));
      halves_t halves;
      std::memcpy(&halves, from, sizeof halves);
      first = __builtin_convertvector(halves, lanes_t<acc_t>);
      std::memcpy(&halves, from + 16, sizeof halves);
      second = __builtin_convertvector(halves, lanes_t<acc_t>);
    }
  }

  [[gnu::always_inline]] static void store(const lanes_t<acc_t>& first, const lanes_t<acc_t>& second, acc_t* to) {
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      const lanes_t<acc_t> low = __builtin_shufflevector(first, second, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6,
                                                         22, 7, 23);
      const lanes_t<acc_t> high = __builtin_shufflevector(first, second, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13,
                                                          29, 14, 30, 15, 31);
      std::memcpy(to, &low, sizeof low);
      std::memcpy(to + Lanes<acc_t>::size, &high, sizeof high);
    } else {
      std::memcpy(to, &first, sizeof first);
      std::memcpy(to + Lanes<acc_t>::size, &second, sizeof second);
    }
  }
};

}  // namespace sfpn::cpu
