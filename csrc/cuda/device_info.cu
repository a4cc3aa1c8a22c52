#include "cuda/device_info.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace smlp::cuda {
#if SMLP_TEST_HOOKS
namespace {

// House rule: every CUDA call and every launch is checked, and a failure becomes an
// exception that pybind11 turns into a Python RuntimeError with the CUDA error string.
std::string describe(cudaError_t status, const char* what) {
  return std::string(what) + " failed: " + cudaGetErrorString(status) + " (" +
         cudaGetErrorName(status) + ")";
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    // Clears a non-sticky error so that it does not resurface in an unrelated call.
    (void)cudaGetLastError();
    throw std::runtime_error(describe(status, what));
  }
}

__global__ void probe_kernel(int* out, int value) { *out = value + 1; }

// Frees the device buffer on every path out of probe(), including exceptions.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes) { check(cudaMalloc(&ptr_, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { (void)cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

}  // namespace
#endif  // SMLP_TEST_HOOKS

RuntimeInfo query_runtime() {
  RuntimeInfo info;
  // The versions are queried first: both work without a device, and the runtime version
  // even without a driver.
  if (cudaRuntimeGetVersion(&info.runtime_version) != cudaSuccess) {
    info.runtime_version = 0;
  }
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) {
    info.driver_version = 0;
  }
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    info.device_count = 0;
    info.error = cudaGetErrorString(status);
  } else {
    info.device_count = count;
  }
  return info;
}

#if SMLP_TEST_HOOKS
int probe(int value, std::uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  DeviceBuffer out(sizeof(int));
  probe_kernel<<<1, 1, 0, stream>>>(static_cast<int*>(out.get()), value);
  check(cudaGetLastError(), "probe_kernel launch");
  int result = 0;
  check(cudaMemcpyAsync(&result, out.get(), sizeof(int), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return result;
}
#endif  // SMLP_TEST_HOOKS

}  // namespace smlp::cuda
