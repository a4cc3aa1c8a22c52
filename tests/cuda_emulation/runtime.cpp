// The CUDA runtime calls of the launchers, emulated on host memory (see cuda_emulation.h).
#include <cstdlib>
#include <cstring>

#include "cuda_emulation.h"

cudaError_t cudaGetLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  *value = attribute == cudaDevAttrMultiProcessorCount ? smlp_emu::device().sm_count
                                                       : smlp_emu::device().max_smem_optin;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }

cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t) {
  // NaN bytes: a workspace slot that no block writes poisons the sum.
  *ptr = std::malloc(bytes);
  if (*ptr == nullptr) return cudaErrorMemoryAllocation;
  std::memset(*ptr, 0xff, bytes);
  return cudaSuccess;
}

cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) {
  std::free(ptr);
  return cudaSuccess;
}
