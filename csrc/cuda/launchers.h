// The CUDA launchers as the binding file sees them: the shared params structs of csrc/tensor.h
// and plain C++ types only (no CUDA headers), so csrc/bindings.cpp compiles with the host
// compiler. The binding has checked every argument (compute dtype float32, float16 or
// bfloat16, weight gradients in float32, H, W <= kMaxSide, shapes, strides); the launchers in
// mix_fwd.cu and mix_wgrad.cu pick a kernel configuration, launch and check each launch.
#pragma once

#include <cstdint>

#include "tensor.h"

namespace smlp::cuda {

// H and W of the kernels' tiles are bounded by shared memory: 1 <= H, W <= kMaxSide.
inline constexpr std::int64_t kMaxSide = 128;

// Each launcher runs on `stream` (a cudaStream_t as an integer, 0 = legacy default stream)
// on the calling thread's current device, which must own the tensors (the op layer makes x's
// device current). CUDA failures throw std::runtime_error carrying cudaGetErrorString, the
// launcher's and the kernel's names.
void mix_fwd(const MixFwdParams& params, std::uintptr_t stream);
void mix_wgrad(const MixWgradParams& params, std::uintptr_t stream);
void axis_mix_fwd(const AxisMixFwdParams& params, std::uintptr_t stream);
void axis_mix_wgrad(const AxisMixWgradParams& params, std::uintptr_t stream);

}  // namespace smlp::cuda
