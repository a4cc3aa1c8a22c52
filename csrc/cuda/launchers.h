// The CUDA launchers as the binding file sees them: plain C++ types only (no CUDA headers),
// so csrc/bindings.cpp compiles with the host compiler. The binding validates the Python
// arguments (sizes, dtypes, strides) and fills these structs; the launchers in mix_fwd.cu and
// mix_wgrad.cu pick a kernel configuration, launch on the given stream and check each launch.
//
// Every tensor is a device address plus sizes and strides in elements (int64, any
// non-negative strides: transposed weight views, channels_last, expanded tensors).
#pragma once

#include <cstdint>

namespace smlp::cuda {

// dtype codes of the launcher ABI (csrc/bindings.cpp, smlp_kernels/cpp_backends.py).
enum DTypeCode : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// H and W of the kernels' tiles are bounded by shared memory: 1 <= H, W <= kMaxSpatial.
constexpr std::int64_t kMaxSpatial = 128;

struct TensorRef {
  std::uintptr_t ptr = 0;  // 0 marks an absent optional tensor
  int ndim = 0;
  std::int64_t sizes[4] = {0, 0, 0, 0};
  std::int64_t strides[4] = {0, 0, 0, 0};
};

// y = F_id x + F_row (R x + row_bias) + F_col (K x + col_bias).
struct MixFwdParams {
  int dtype = kFloat32;  // of x, the parameters and y
  std::int64_t batch = 0, channels = 0, out_channels = 0, height = 0, width = 0;
  TensorRef x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col, y;
};

// The five weight gradients of smlp_mix; every output is float32 and overwritten.
struct MixWgradParams {
  int dtype = kFloat32;  // of g, x and the parameters
  bool deterministic = false;
  std::int64_t batch = 0, channels = 0, out_channels = 0, height = 0, width = 0;
  TensorRef g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col;
  TensorRef d_fuse, d_row_weight, d_row_bias, d_col_weight, d_col_bias;
};

// axis 3: y = x mixed along W (+ bias[w]); axis 2: along H (+ bias[h]).
struct AxisMixFwdParams {
  int dtype = kFloat32;
  int axis = 3;
  std::int64_t batch = 0, channels = 0, height = 0, width = 0;
  TensorRef x, weight, bias, y;
};

struct AxisMixWgradParams {
  int dtype = kFloat32;
  int axis = 3;
  bool deterministic = false;
  std::int64_t batch = 0, channels = 0, height = 0, width = 0;
  TensorRef g, x, d_weight, d_bias;  // d_weight, d_bias: float32, overwritten
};

// Each launcher runs on `stream` (a cudaStream_t as an integer, 0 = legacy default stream)
// on the device that owns x. Argument errors throw std::invalid_argument, CUDA failures
// std::runtime_error carrying cudaGetErrorString and the kernel's name.
void mix_fwd(const MixFwdParams& params, std::uintptr_t stream);
void mix_wgrad(const MixWgradParams& params, std::uintptr_t stream);
void axis_mix_fwd(const AxisMixFwdParams& params, std::uintptr_t stream);
void axis_mix_wgrad(const AxisMixWgradParams& params, std::uintptr_t stream);

}  // namespace smlp::cuda
