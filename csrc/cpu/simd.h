// Portable SIMD vectors for the CPU kernels: GCC/Clang vector extensions, so one kernel
// source serves float and double and every instruction set level (cpu/isa.h).
//
// The register budget follows the level: AVX-512 has 32 vector registers, so the kernels
// keep 24 accumulators; AVX2 and SSE have 16, so they keep 12.

#pragma once

#include "cpu/isa.h"

namespace smlp::cpu::SMLP_CPU_ISA {

#if SMLP_CPU_AVX512
inline constexpr int kVecBytes = 64;
inline constexpr int kAccRegs = 24;
#elif SMLP_CPU_AVX
inline constexpr int kVecBytes = 32;
inline constexpr int kAccRegs = 12;
#elif defined(__aarch64__)
inline constexpr int kVecBytes = 16;
inline constexpr int kAccRegs = 24;
#else
inline constexpr int kVecBytes = 16;
inline constexpr int kAccRegs = 12;
#endif

template <typename T>
struct Simd {
  typedef T V __attribute__((vector_size(kVecBytes)));
  static constexpr int kLanes = kVecBytes / static_cast<int>(sizeof(T));

  static inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static inline void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  // A broadcast (folded into the FMA's memory operand where it can be). Not `V{} + a`:
  // 0 + a is not a no-op for a = -0, so the compiler must keep an extra add.
  static inline V set1(T a) {
#if SMLP_CPU_AVX512
    if constexpr (sizeof(T) == 4) return reinterpret_cast<V>(_mm512_set1_ps(a));
    if constexpr (sizeof(T) == 8) return reinterpret_cast<V>(_mm512_set1_pd(a));
#elif SMLP_CPU_AVX
    if constexpr (sizeof(T) == 4) return reinterpret_cast<V>(_mm256_set1_ps(a));
    if constexpr (sizeof(T) == 8) return reinterpret_cast<V>(_mm256_set1_pd(a));
#endif
    V v;
    for (int l = 0; l < kLanes; ++l) v[l] = a;
    return v;
  }
  static inline V zero() { return V{}; }

  // The first n lanes (0 < n <= kLanes) to p[0 .. n-1]; memory after them is untouched.
  static inline void store_n(T* p, V v, int n) {
#if SMLP_CPU_AVX512
    if constexpr (sizeof(T) == 4) {
      _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u),
                            reinterpret_cast<__m512>(v));
      return;
    } else if constexpr (sizeof(T) == 8) {
      _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u),
                            reinterpret_cast<__m512d>(v));
      return;
    }
#endif
    for (int l = 0; l < n; ++l) p[l] = v[l];
  }

  // Lanes 0 .. n-1 to p[0], p[stride], ...
  static inline void store_strided(T* p, int64_t stride, V v, int n) {
    for (int l = 0; l < n; ++l) p[l * stride] = v[l];
  }

  // Lanes summed in a fixed order (pairwise halves), so the result is reproducible.
  static inline T hsum(V v) {
    T lanes[kLanes];
    std::memcpy(lanes, &v, sizeof v);
    for (int width = kLanes / 2; width >= 1; width /= 2) {
      for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    }
    return lanes[0];
  }
};

}  // namespace smlp::cpu::SMLP_CPU_ISA
