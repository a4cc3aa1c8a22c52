// Host helpers of the launcher layer (included by the .cu files only): every CUDA call and
// every launch is checked, and a failure becomes std::runtime_error with the CUDA error string
// and what failed (the kernel's name for a launch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>

#include "cuda/common.cuh"
#include "cuda/launchers.h"

namespace smlp::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const std::string& what) {
  // Clears a non-sticky error so that it does not resurface in an unrelated call.
  (void)cudaGetLastError();
  throw std::runtime_error(what + " failed: " + cudaGetErrorString(status) + " (" +
                           cudaGetErrorName(status) + ")");
}

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw_cuda_error(status, what);
}

// The calling thread's current device: the op layer has made x's device current.
inline int current_device() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

inline int device_attribute(cudaDeviceAttr attribute, int device, const char* what) {
  int value = 0;
  check_cuda(cudaDeviceGetAttribute(&value, attribute, device), what);
  return value;
}

inline std::size_t max_dynamic_smem(int device) {
  return static_cast<std::size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                                   device, "cudaDeviceGetAttribute"));
}

inline int sm_count(int device) {
  return device_attribute(cudaDevAttrMultiProcessorCount, device, "cudaDeviceGetAttribute");
}

// Upper bound on the number of splits of a weight-gradient reduction: `fallback`, or in a
// test build (SMLP_TEST_HOOKS) the environment variable SMLP_CUDA_MAX_SPLITS (a positive
// integer) when it is smaller. Tests use it to make one block walk many items; it changes the
// summation order, not the result's math.
inline std::int64_t max_splits(std::int64_t fallback) {
#if SMLP_TEST_HOOKS
  const char* env = std::getenv("SMLP_CUDA_MAX_SPLITS");
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long long value = std::strtoll(env, &end, 10);
  if (end == env || *end != '\0' || value < 1) {
    throw std::invalid_argument("SMLP_CUDA_MAX_SPLITS must be a positive integer, got '" +
                                std::string(env) + "'");
  }
  return value < fallback ? value : fallback;
#else
  return fallback;
#endif
}

// Sets the kernel's dynamic shared-memory limit, launches it and checks the launch.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), const std::string& name, unsigned grid,
            std::size_t smem_bytes, int device, cudaStream_t stream, Args&&... args) {
  const std::size_t limit = max_dynamic_smem(device);
  if (smem_bytes > limit) {
    throw std::runtime_error(name + ": needs " + std::to_string(smem_bytes) +
                             " bytes of shared memory per block, the device allows " +
                             std::to_string(limit));
  }
  // The device's limit rather than this launch's size: a permission only, and two host
  // threads launching the kernel with different sizes cannot undo each other's setting.
  check_cuda(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(limit)),
             ("cudaFuncSetAttribute for " + name).c_str());
  launch_kernel(kernel, grid, kThreads, smem_bytes, stream, std::forward<Args>(args)...);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) throw_cuda_error(status, "launch of " + name);
}

// Runs body(T{}) for the compute dtype's element type T (float, __half or __nv_bfloat16; the
// binding admits no other); a CUDA failure's message gets the launcher's name in front.
template <typename Body>
void run_launcher(const char* fn, DType dtype, Body&& body) {
  try {
    switch (dtype) {
      case kFloat16: return body(__half{});
      case kBFloat16: return body(__nv_bfloat16{});
      default: return body(float{});
    }
  } catch (const std::runtime_error& error) {
    throw std::runtime_error(std::string(fn) + ": " + error.what());
  }
}

// A stream-ordered device buffer, freed on every path out of the launcher.
class StreamBuffer {
 public:
  StreamBuffer(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes > 0) check_cuda(cudaMallocAsync(&ptr_, bytes, stream), "cudaMallocAsync");
  }
  ~StreamBuffer() {
    if (ptr_ != nullptr) (void)cudaFreeAsync(ptr_, stream_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  float* floats() const { return static_cast<float*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

template <typename T>
T* data(const TensorRef& t) {
  return reinterpret_cast<T*>(t.ptr);
}

// A kernel argument pair from t: its address (null when t is absent) and its first N
// strides, or its one stride.
template <typename P, int N>
void bind(P*& ptr, index_t (&strides)[N], const TensorRef& t) {
  ptr = data<P>(t);
  for (int i = 0; i < N; ++i) strides[i] = t.strides[i];
}
template <typename P>
void bind(P*& ptr, index_t& stride, const TensorRef& t) {
  ptr = data<P>(t);
  stride = t.strides[0];
}

inline cudaStream_t as_stream(std::uintptr_t handle) {
  return reinterpret_cast<cudaStream_t>(handle);
}

// The largest number of batch images per launch that keeps the grid under 2^31 - 1 blocks.
inline std::int64_t batches_per_launch(std::int64_t blocks_per_image, const char* fn) {
  const std::int64_t max_grid = 2147483647;
  if (blocks_per_image > max_grid) {
    throw std::invalid_argument(std::string(fn) + ": one image needs more than 2^31 - 1 blocks");
  }
  return max_grid / blocks_per_image;
}

}  // namespace smlp::cuda::detail
