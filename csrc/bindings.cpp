// The one pybind11 binding file of smlp_kernels._C.
//
// No torch here: Python passes data pointers, sizes, strides, a dtype code and the CUDA
// stream handle as integers, so one build serves every torch version. Kernel entry points
// check those arguments here, in one place, and fill the plain params structs that the
// CPU and CUDA kernels take (strides and offsets as int64).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if SMLP_WITH_CUDA
#include "cuda/device_info.h"
#endif

#if !defined(SMLP_VERSION) || !defined(SMLP_WITH_CUDA) || !defined(SMLP_WITH_OPENMP) || \
    !defined(SMLP_CUDA_ARCHS) || !defined(SMLP_CUDA_VERSION) || !defined(SMLP_CXX_COMPILER)
#error "The build (CMakeLists.txt) must define the SMLP_* build-info macros"
#endif

namespace py = pybind11;

namespace {

constexpr const char* kBuiltWithoutCuda = "built without CUDA";

// SMLP_CUDA_ARCHS is comma separated ("80,90a"): a semicolon would split the CMake list.
std::vector<std::string> cuda_archs() {
  std::vector<std::string> archs;
  std::string current;
  for (const char* c = SMLP_CUDA_ARCHS; *c != '\0'; ++c) {
    if (*c == ',') {
      if (!current.empty()) archs.push_back(current);
      current.clear();
    } else {
      current.push_back(*c);
    }
  }
  if (!current.empty()) archs.push_back(current);
  return archs;
}

py::dict build_info() {
  py::dict info;
  info["version"] = SMLP_VERSION;
  info["with_cuda"] = static_cast<bool>(SMLP_WITH_CUDA);
  info["cuda_archs"] = cuda_archs();
  info["cuda_version"] = SMLP_CUDA_VERSION;
  info["openmp"] = static_cast<bool>(SMLP_WITH_OPENMP);
  info["compiler"] = SMLP_CXX_COMPILER;
  return info;
}

py::dict cuda_runtime_info() {
  py::dict info;
#if SMLP_WITH_CUDA
  const smlp::cuda::RuntimeInfo runtime = smlp::cuda::query_runtime();
  info["device_count"] = runtime.device_count;
  info["error"] = runtime.error;
  info["runtime_version"] = runtime.runtime_version;
  info["driver_version"] = runtime.driver_version;
#else
  info["device_count"] = 0;
  info["error"] = kBuiltWithoutCuda;
  info["runtime_version"] = 0;
  info["driver_version"] = 0;
#endif
  return info;
}

int cuda_probe(int value, std::uintptr_t stream) {
#if SMLP_WITH_CUDA
  return smlp::cuda::probe(value, stream);
#else
  (void)value;
  (void)stream;
  throw std::runtime_error(kBuiltWithoutCuda);
#endif
}

// ---- BEGIN CPU launcher helpers (csrc/cpu) ----
// ---- END CPU launcher helpers ----

// ---- BEGIN CUDA launcher helpers (csrc/cuda) ----
// ---- END CUDA launcher helpers ----

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled kernels of smlp_kernels; load it through smlp_kernels._extension.";

  m.def(
      "version", []() { return std::string(SMLP_VERSION); },
      "The smlp_kernels version this extension was built from.");

  m.def("build_info", &build_info,
        "How the extension was built: dict with version (str), with_cuda (bool), "
        "cuda_archs (list[str], e.g. ['80', '90a']), cuda_version (str, '' without CUDA), "
        "openmp (bool), compiler (str).");

  m.def("cuda_runtime_info", &cuda_runtime_info,
        "What the CUDA runtime sees: dict with device_count (int), error (str, '' if none), "
        "runtime_version (int) and driver_version (int, 0 without a driver). Never raises "
        "for a missing GPU or driver.");

  m.def("cuda_probe", &cuda_probe, py::arg("value"), py::arg("stream") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "Run a one-thread kernel on `stream` (a cudaStream_t as an int, e.g. "
        "torch.cuda.current_stream().cuda_stream) that returns value + 1. Raises "
        "RuntimeError with the CUDA error string when there is no usable device.");

  // ---- BEGIN CPU launcher defs ----
  // ---- END CPU launcher defs ----

  // ---- BEGIN CUDA launcher defs ----
  // ---- END CUDA launcher defs ----
}
