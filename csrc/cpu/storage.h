// The element types tensors are stored in, and the conversions to and from the type the
// kernels compute in: float for float32, bfloat16 and float16, double for float64.
//
// 16-bit tensors are read once into float (packing), computed on in float (or, for
// bfloat16 at the avx512bf16 level, with vdpbf16ps on bfloat16 pairs: see gemm_dot in
// kernels.h) and rounded once when stored, to nearest even, as torch rounds.
#pragma once

#include "cpu/isa.h"

namespace smlp::cpu::SMLP_CPU_ISA {

struct bf16 {
  std::uint16_t bits;
};
struct f16 {
  std::uint16_t bits;
};

// The compute type of storage type S.
template <typename S>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};
template <typename S>
using Compute = typename ComputeOf<S>::type;

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// bfloat16 is the upper half of a float32.
inline float to_float(bf16 v) { return bits_to_float(static_cast<std::uint32_t>(v.bits) << 16); }

// Round to nearest even; a NaN stays a (quiet) NaN, infinities stay infinite.
inline bf16 to_bf16(float f) {
  const std::uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>(rounded >> 16)};
}

// float16 through the compiler's _Float16 (F16C instructions where the level has them, the
// runtime library's IEEE conversions otherwise): round to nearest even, as torch.
inline float to_float(f16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, sizeof h);
  return static_cast<float>(h);
}

inline f16 to_f16(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  f16 v;
  std::memcpy(&v.bits, &h, sizeof v.bits);
  return v;
}

// S -> its compute type T, and back.
template <typename T, typename S>
inline T load_as(S v) {
  if constexpr (std::is_same_v<S, bf16> || std::is_same_v<S, f16>) {
    return static_cast<T>(to_float(v));
  } else {
    return static_cast<T>(v);
  }
}

template <typename S, typename T>
inline S store_as(T v) {
  if constexpr (std::is_same_v<S, bf16>) {
    return to_bf16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<S, f16>) {
    return to_f16(static_cast<float>(v));
  } else {
    return static_cast<S>(v);
  }
}

// dst[i] = src[i] for i < n, converted (a plain copy when the types agree).
template <typename T, typename S>
inline void load_row(const S* src, std::int64_t n, T* dst) {
  if constexpr (std::is_same_v<S, T>) {
    std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
  } else {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = load_as<T>(src[i]);
  }
}

template <typename S, typename T>
inline void store_row(const T* src, std::int64_t n, S* dst) {
  if constexpr (std::is_same_v<S, T>) {
    std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
  } else {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = store_as<S>(src[i]);
  }
}

}  // namespace smlp::cpu::SMLP_CPU_ISA
