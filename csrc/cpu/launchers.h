// The CPU launchers as the binding file sees them: the shared params structs of csrc/tensor.h
// in, results written in place. csrc/bindings.cpp has checked every argument (compute dtype
// float32 or float64, weight gradients in the compute dtype, H, W <= kMaxSide, shapes,
// strides); the kernels trust the structs. They are deterministic whatever the thread count
// or schedule: every reduction runs in a fixed order, no atomics.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace smlp::cpu {

// The largest H and W the kernels take (the size of their packed spatial weights).
inline constexpr std::int64_t kMaxSide = 128;

// y = F_id x + R(F_row x) + K(F_col x) + s_row[o] row_bias[w] + s_col[o] col_bias[h]
void mix_fwd(const MixFwdParams& p);

// d_fuse = [sum g x^T | sum g r^T | sum g k^T] and the row/column weight and bias gradients;
// and, if p.dx is present, the input gradient dx (the forward's transpose applied to g).
void mix_wgrad(const MixWgradParams& p);

void axis_mix_fwd(const AxisMixFwdParams& p);

void axis_mix_wgrad(const AxisMixWgradParams& p);

// How many threads the calling thread's latest launch ran on: small launches run on fewer
// threads than OpenMP's team size (see threads_for in kernels.h).
int last_launch_threads();

// The instruction set levels (cpu/isa.h), best first, as "name" strings: those built into
// this module, and those of them the running CPU can use.
std::vector<std::string> cpu_isa_levels_built();
std::vector<std::string> cpu_isa_levels_supported();

// The level the next launch on the calling thread runs at: SMLP_CPU_ISA if set (a level's
// name, or "auto"), else the best level the CPU supports. Throws std::invalid_argument
// naming SMLP_CPU_ISA for an unknown name, a level not built in, or one the CPU lacks.
std::string cpu_isa_selected();

}  // namespace smlp::cpu
