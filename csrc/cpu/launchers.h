// The CPU launchers as the binding file sees them: the shared params structs of csrc/tensor.h
// in, results written in place. csrc/bindings.cpp has checked every argument (compute dtype
// float32 or float64, weight gradients in the compute dtype, H, W <= kMaxSide, shapes,
// strides); the kernels trust the structs. They are deterministic whatever the thread count
// or schedule: every reduction runs in a fixed order, no atomics.
#pragma once

#include <cstdint>

#include "tensor.h"

namespace smlp::cpu {

// The largest H and W the kernels take (the size of their packed spatial weights).
inline constexpr std::int64_t kMaxSide = 128;

// y = F_id x + R(F_row x) + K(F_col x) + s_row[o] row_bias[w] + s_col[o] col_bias[h]
void mix_fwd(const MixFwdParams& p);

// d_fuse = [sum g x^T | sum g r^T | sum g k^T] and the row/column weight and bias gradients.
void mix_wgrad(const MixWgradParams& p);

void axis_mix_fwd(const AxisMixFwdParams& p);

void axis_mix_wgrad(const AxisMixWgradParams& p);

// How many threads the calling thread's latest launch ran on: small launches run on fewer
// threads than OpenMP's team size (see threads_for in kernels.h).
int last_launch_threads();

}  // namespace smlp::cpu
