// What the binding file may call on the CUDA side. Plain C++ types only: this header is
// included by csrc/bindings.cpp, which is compiled by the host compiler without CUDA
// headers, so a build without CUDA never needs them.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/launchers.h"  // the kernel launchers: the binding includes this header only

namespace smlp::cuda {

struct RuntimeInfo {
  int device_count = 0;
  std::string error;  // "" when every query succeeded, else the CUDA error string
  int runtime_version = 0;  // cudaRuntimeGetVersion, e.g. 13000
  int driver_version = 0;   // cudaDriverGetVersion; 0 when no driver is installed
};

// Never throws for a missing GPU or driver: the failure is reported in `error`.
RuntimeInfo query_runtime();

#if SMLP_TEST_HOOKS
// Launches a one-thread kernel on `stream` (a cudaStream_t passed as an integer; 0 is
// the legacy default stream) that writes value + 1 to device memory, copies it back and
// returns it. Proves that the cubins load and run on the current device.
// Throws std::runtime_error carrying the CUDA error string on any failure.
int probe(int value, std::uintptr_t stream);
#endif

}  // namespace smlp::cuda
