// The one description of the launchers' arguments, shared by the CPU (csrc/cpu) and CUDA
// (csrc/cuda) kernels: a tensor as a TensorRef, the dtype codes, and the params struct of
// each of the four launchers.
//
// Plain C++ only (no torch, no CUDA headers). csrc/bindings.cpp checks the Python arguments
// once, for both devices, and fills these structs; the kernels trust them. Every tensor is an
// address with sizes and strides in elements (int64, any non-negative strides: transposed
// weight views, channels_last, zero-stride expanded tensors).
#pragma once

#include <cstdint>

namespace smlp {

// The dtype codes Python passes (smlp_kernels/cpp_backends.py, DTYPE_CODES).
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct TensorRef {
  std::uintptr_t ptr = 0;  // 0 marks an absent optional tensor
  DType dtype = kFloat32;
  int ndim = 0;
  std::int64_t sizes[4] = {0, 0, 0, 0};
  std::int64_t strides[4] = {0, 0, 0, 0};

  bool present() const { return ptr != 0; }
};

// The sizes every launcher has, from x (B, C, H, W), and the compute dtype: x's dtype, which
// g and the parameters share. The weight gradients' dtype is the device's (float32 on CUDA,
// the compute dtype on the CPU).
struct Problem {
  DType dtype = kFloat32;
  std::int64_t batch = 0, channels = 0, height = 0, width = 0;
};

// The fused op's inputs: y = F_id x + F_row (R x + row_bias) + F_col (K x + col_bias).
struct MixInputs : Problem {
  std::int64_t out_channels = 0;
  TensorRef x;           // (B, C, H, W)
  TensorRef row_weight;  // (W, W)
  TensorRef row_bias;    // (W,) or absent
  TensorRef col_weight;  // (H, H)
  TensorRef col_bias;    // (H,) or absent
  TensorRef f_id, f_row, f_col;  // (C_out, C) each
};

// mix_fwd: y (B, C_out, H, W), overwritten. With scale and shift (CPU only), the mix of
// x' = gelu(x * scale[c] + shift[c]) (exact GELU, computed in float32, float64 for a float64
// x, and rounded to x's dtype) instead of x: the fused BatchNorm -> GELU prologue.
struct MixFwdParams : MixInputs {
  TensorRef y;
  TensorRef scale, shift;  // (C,) in float32 (float64 for a float64 x), or both absent
};

// The five weight gradients of the fused op given g (B, C_out, H, W), and on the CPU also
// the input gradient dx if present; outputs overwritten.
struct MixWgradParams : MixInputs {
  bool deterministic = false;
  TensorRef g;
  TensorRef dx;      // (B, C, H, W) in the compute dtype, or absent (CUDA: always absent)
  TensorRef d_fuse;  // (C_out, 3C)
  TensorRef d_row_weight, d_row_bias, d_col_weight, d_col_bias;
};

// axis 3: y = x mixed along W (+ bias[w]), the row mix; axis 2: along H (+ bias[h]).
struct AxisMixFwdParams : Problem {
  int axis = 3;
  TensorRef x, weight, bias, y;  // weight (n, n), bias (n,) or absent, n = W or H
};

struct AxisMixWgradParams : Problem {
  int axis = 3;
  bool deterministic = false;
  TensorRef g, x, d_weight, d_bias;  // d_weight, d_bias overwritten
};

}  // namespace smlp
