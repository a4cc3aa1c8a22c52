// The CPU launchers of smlp_kernels._C: plain params structs in, results written in place.
//
// csrc/bindings.cpp checks every argument (dtype, rank, shape, size limits) and fills these
// structs; the kernels trust them. Every tensor is a typed pointer with sizes and strides in
// elements (int64, any non-negative strides: transposed views, zero-stride expanded tensors).
// An absent optional tensor has data == nullptr.
//
// The kernels compute in T (float or double) and are deterministic whatever the thread
// count or schedule: every reduction runs in a fixed order, no atomics.

#pragma once

#include <cstdint>

namespace smlp::cpu {

template <typename T, int N>
struct View {
  T* data = nullptr;
  int64_t size[N] = {};
  int64_t stride[N] = {};
};

template <typename T>
struct MixFwdParams {
  View<const T, 4> x;           // (B, C, H, W)
  View<const T, 2> row_weight;  // (W, W)
  View<const T, 1> row_bias;    // (W,) or absent
  View<const T, 2> col_weight;  // (H, H)
  View<const T, 1> col_bias;    // (H,) or absent
  View<const T, 2> f_id;        // (C_out, C)
  View<const T, 2> f_row;       // (C_out, C)
  View<const T, 2> f_col;       // (C_out, C)
  View<T, 4> y;                 // (B, C_out, H, W), overwritten
};

template <typename T>
struct MixWgradParams {
  View<const T, 4> g;  // (B, C_out, H, W)
  View<const T, 4> x;  // (B, C, H, W)
  View<const T, 2> row_weight;
  View<const T, 1> row_bias;
  View<const T, 2> col_weight;
  View<const T, 1> col_bias;
  View<const T, 2> f_id;
  View<const T, 2> f_row;
  View<const T, 2> f_col;
  View<T, 2> d_fuse;        // (C_out, 3C), overwritten
  View<T, 2> d_row_weight;  // (W, W)
  View<T, 1> d_row_bias;    // (W,)
  View<T, 2> d_col_weight;  // (H, H)
  View<T, 1> d_col_bias;    // (H,)
};

template <typename T>
struct AxisMixFwdParams {
  View<const T, 4> x;       // (B, C, H, W)
  View<const T, 2> weight;  // (W, W) for axis 3, (H, H) for axis 2
  View<const T, 1> bias;    // or absent
  View<T, 4> y;             // (B, C, H, W), overwritten
  int axis = 3;             // 3: mix along W (row mix), 2: along H (column mix)
};

template <typename T>
struct AxisMixWgradParams {
  View<const T, 4> g;   // (B, C, H, W)
  View<const T, 4> x;   // (B, C, H, W)
  View<T, 2> d_weight;  // overwritten
  View<T, 1> d_bias;    // overwritten
  int axis = 3;
};

// y = F_id x + R(F_row x) + K(F_col x) + s_row[o] row_bias[w] + s_col[o] col_bias[h]
template <typename T>
void mix_fwd(const MixFwdParams<T>& p);

// d_fuse = [sum g x^T | sum g r^T | sum g k^T] and the row/column weight and bias gradients.
template <typename T>
void mix_wgrad(const MixWgradParams<T>& p);

template <typename T>
void axis_mix_fwd(const AxisMixFwdParams<T>& p);

template <typename T>
void axis_mix_wgrad(const AxisMixWgradParams<T>& p);

// How many threads the calling thread's latest launch ran on: small launches run on fewer
// threads than OpenMP's team size (see threads_for in kernels.h).
int last_launch_threads();

// The largest H and W the kernels take (the size of their packed spatial weights).
inline constexpr int64_t kMaxSide = 128;

extern template void mix_fwd<float>(const MixFwdParams<float>&);
extern template void mix_fwd<double>(const MixFwdParams<double>&);
extern template void mix_wgrad<float>(const MixWgradParams<float>&);
extern template void mix_wgrad<double>(const MixWgradParams<double>&);
extern template void axis_mix_fwd<float>(const AxisMixFwdParams<float>&);
extern template void axis_mix_fwd<double>(const AxisMixFwdParams<double>&);
extern template void axis_mix_wgrad<float>(const AxisMixWgradParams<float>&);
extern template void axis_mix_wgrad<double>(const AxisMixWgradParams<double>&);

}  // namespace smlp::cpu
