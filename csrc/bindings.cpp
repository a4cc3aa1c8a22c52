// The one pybind11 binding file of smlp_kernels._C.
//
// No torch here: Python passes data pointers, sizes, strides, a dtype code and the CUDA
// stream handle as integers, so one build serves every torch version. The launchers' arguments
// are checked here, once for both devices, and fill the params structs of csrc/tensor.h that
// the CPU and CUDA kernels take (strides as int64).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/fma_peak.h"
#include "cpu/launchers.h"
#include "cuda/launchers.h"  // plain C++: the CUDA rules are data even in a build without CUDA
#include "tensor.h"

#if SMLP_WITH_CUDA
#include "cuda/device_info.h"
#endif

#if !defined(SMLP_VERSION) || !defined(SMLP_WITH_CUDA) || !defined(SMLP_WITH_OPENMP) || \
    !defined(SMLP_CUDA_ARCHS) || !defined(SMLP_CUDA_VERSION) || !defined(SMLP_CXX_COMPILER) || \
    !defined(SMLP_TEST_HOOKS)
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
  info["test_hooks"] = static_cast<bool>(SMLP_TEST_HOOKS);
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

#if SMLP_TEST_HOOKS
int cuda_probe(int value, std::uintptr_t stream) {
#if SMLP_WITH_CUDA
  return smlp::cuda::probe(value, stream);
#else
  (void)value;
  (void)stream;
  throw std::runtime_error(kBuiltWithoutCuda);
#endif
}
#endif  // SMLP_TEST_HOOKS

// ---- The CPU's peak multiply-add rate (csrc/cpu/fma_peak.h), for smlp-bench's roofline ----
smlp::cpu::PeakKind peak_kind(const std::string& dtype) {
  if (dtype == "fp32") return smlp::cpu::PeakKind::kFloat32;
  if (dtype == "fp64") return smlp::cpu::PeakKind::kFloat64;
  if (dtype == "bf16") return smlp::cpu::PeakKind::kBFloat16Dot;
  throw std::invalid_argument("cpu_fma_peak: dtype must be fp32, fp64 or bf16, got '" + dtype +
                              "'");
}

py::dict cpu_fma_peak(const std::string& dtype, int threads, const std::string& isa,
                      double min_seconds, int trials) {
  const smlp::cpu::PeakKind kind = peak_kind(dtype);
  smlp::cpu::FmaPeakResult r;
  {
    py::gil_scoped_release release;  // the threads run for a while; Python need not wait
    r = smlp::cpu::fma_peak(kind, isa, threads, min_seconds, trials);
  }
  using namespace py::literals;
  return py::dict("dtype"_a = dtype, "flop_per_s"_a = r.flop_per_s, "isa"_a = r.isa,
                  "instruction"_a = r.instruction, "threads"_a = r.threads, "lanes"_a = r.lanes,
                  "chains"_a = r.chains, "flops_per_step"_a = r.flops_per_step,
                  "iterations"_a = r.iterations, "trials"_a = r.trials,
                  "cpu_seconds"_a = r.cpu_seconds, "flop_per_s_wall"_a = r.flop_per_s_wall,
                  "wall_seconds"_a = r.wall_seconds, "checksum"_a = r.checksum);
}

std::vector<std::string> cpu_fma_peak_isas(const std::string& dtype) {
  return smlp::cpu::fma_peak_isas(peak_kind(dtype));
}

// ---- The launchers: one checker for both devices ----
//
// Every tensor crosses as a TensorArg (data_ptr, dtype_code, sizes, strides), strides in
// elements; optional ones as None. The checker validates the tuples against x's sizes and
// fills the params structs of csrc/tensor.h, which the CPU and CUDA launchers both take.
// What differs per device is plain data (DeviceRules). Every error is a ValueError
// "<launcher>: <argument>: <what>".

using TensorArg =
    std::tuple<std::uintptr_t, int, std::vector<std::int64_t>, std::vector<std::int64_t>>;
using OptionalTensorArg = std::optional<TensorArg>;
using Sizes = std::vector<std::int64_t>;
using smlp::DType;
using smlp::TensorRef;

const char* dtype_name(DType dtype) {
  constexpr const char* kNames[] = {"float32", "float64", "float16", "bfloat16"};
  return kNames[dtype];
}

bool valid_dtype(int code) { return code >= smlp::kFloat32 && code <= smlp::kBFloat16; }

std::string shape_str(const Sizes& v) {
  std::string s = "(";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

// What the launchers of one device take.
struct DeviceRules {
  const char* prefix;   // launcher names: "<prefix>_mix_fwd", ...
  const char* kernels;  // the kernels' name in messages: "CPU", "CUDA"
  std::vector<DType> compute_dtypes;
  bool dx_in_wgrad;  // mix_wgrad can also write the input gradient dx
  bool prologue;     // mix_fwd can apply the BatchNorm -> GELU prologue (scale, shift)
  std::int64_t max_side;

  bool computes_in(DType dtype) const {
    return std::find(compute_dtypes.begin(), compute_dtypes.end(), dtype) !=
           compute_dtypes.end();
  }
  // "float32, float16 or bfloat16"
  std::string compute_names() const {
    std::string s;
    for (std::size_t i = 0; i < compute_dtypes.size(); ++i) {
      s += (i == 0 ? "" : i + 1 == compute_dtypes.size() ? " or " : ", ");
      s += dtype_name(compute_dtypes[i]);
    }
    return s;
  }
};

const DeviceRules kCpuRules{"cpu",
                            "CPU",
                            {smlp::kFloat32, smlp::kFloat64, smlp::kFloat16, smlp::kBFloat16},
                            true,
                            true,
                            smlp::cpu::kMaxSide};
const DeviceRules kCudaRules{"cuda", "CUDA", {smlp::kFloat32, smlp::kFloat16, smlp::kBFloat16},
                             false, false, smlp::cuda::kMaxSide};

constexpr const char* kSameDtype = "x, g and every parameter share x's dtype";

class Checker {
 public:
  Checker(const DeviceRules& rules, const char* launcher)
      : rules_(rules), fn_(std::string(rules.prefix) + "_" + launcher) {}

  [[noreturn]] void fail(const char* arg, const std::string& what) const {
    throw std::invalid_argument(fn_ + ": " + arg + ": " + what);
  }

  // x (or g where it fixes the sizes): 4-D in a compute dtype of the device, B, C >= 1,
  // 1 <= H, W <= max_side. Fills the problem's dtype and sizes.
  TensorRef problem(const char* name, const TensorArg& t, smlp::Problem& pr) const {
    const auto& [ptr, code, sizes, strides] = t;
    const DType dtype = valid(name, code);
    if (!rules_.computes_in(dtype)) {
      fail(name, std::string(dtype_name(dtype)) + " is not supported: the " + rules_.kernels +
                     " kernels compute in " + rules_.compute_names());
    }
    if (sizes.size() != 4) {
      fail(name, "expected 4 dimensions (B, C, H, W), got sizes " + shape_str(sizes));
    }
    if (sizes[0] < 1 || sizes[1] < 1) {
      fail(name, "every size must be >= 1, got " + shape_str(sizes));
    }
    for (const auto& [what, v] : {std::pair<const char*, std::int64_t>{"H", sizes[2]},
                                  std::pair<const char*, std::int64_t>{"W", sizes[3]}}) {
      if (v < 1 || v > rules_.max_side) {
        fail(name, std::string(what) + " = " + std::to_string(v) + " is out of range 1.." +
                       std::to_string(rules_.max_side) + " of the " + rules_.kernels +
                       " kernels");
      }
    }
    pr.dtype = dtype;
    pr.batch = sizes[0];
    pr.channels = sizes[1];
    pr.height = sizes[2];
    pr.width = sizes[3];
    return input(name, t, sizes, "(B, C, H, W)", pr);
  }

  // An input of exactly `shape` in the compute dtype.
  TensorRef input(const char* name, const TensorArg& t, const Sizes& shape, const char* meaning,
                  const smlp::Problem& pr) const {
    return tensor(name, t, shape, meaning, pr.dtype, kSameDtype, false);
  }

  TensorRef optional(const char* name, const OptionalTensorArg& t, const Sizes& shape,
                     const char* meaning, const smlp::Problem& pr) const {
    return t.has_value() ? input(name, *t, shape, meaning, pr) : TensorRef{};
  }

  // An output in the compute dtype; outputs are written in parallel, so no two of their
  // elements may share memory.
  TensorRef output(const char* name, const TensorArg& t, const Sizes& shape, const char* meaning,
                   const smlp::Problem& pr) const {
    return tensor(name, t, shape, meaning, pr.dtype, kSameDtype, true);
  }

  // float32, or float64 when the compute dtype is float64: the weight gradients' dtype and
  // the prologue's.
  static DType float_dtype(const smlp::Problem& pr) {
    return pr.dtype == smlp::kFloat64 ? smlp::kFloat64 : smlp::kFloat32;
  }

  // A weight-gradient output, in float_dtype.
  TensorRef wgrad(const char* name, const TensorArg& t, const Sizes& shape, const char* meaning,
                  const smlp::Problem& pr) const {
    return tensor(name, t, shape, meaning, float_dtype(pr),
                  "weight gradients are float32, float64 for a float64 x", true);
  }

  // A prologue input (scale, shift), in float_dtype.
  TensorRef float_input(const char* name, const TensorArg& t, const Sizes& shape,
                        const char* meaning, const smlp::Problem& pr) const {
    return tensor(name, t, shape, meaning, float_dtype(pr),
                  "the prologue's scale and shift are float32, float64 for a float64 x", false);
  }

  // C_out from f_id, after checking that it is 2-D.
  std::int64_t out_channels(const char* name, const TensorArg& f_id) const {
    const auto& sizes = std::get<2>(f_id);
    if (sizes.size() != 2 || sizes[0] < 1) {
      fail(name, "expected shape (C_out, C) with C_out >= 1, got " + shape_str(sizes));
    }
    return sizes[0];
  }

  // The mixed axis' length: W for axis 3 (row mix), H for axis 2 (column mix).
  std::int64_t axis_length(int axis, const smlp::Problem& pr) const {
    if (axis != 2 && axis != 3) {
      fail("axis", "must be 3 (row mix, along W) or 2 (column mix, along H), got " +
                       std::to_string(axis));
    }
    return axis == 3 ? pr.width : pr.height;
  }

 private:
  DType valid(const char* name, int code) const {
    if (!valid_dtype(code)) {
      fail(name, "unknown dtype code " + std::to_string(code) +
                     " (0 float32, 1 float64, 2 float16, 3 bfloat16)");
    }
    return static_cast<DType>(code);
  }

  TensorRef tensor(const char* name, const TensorArg& t, const Sizes& shape, const char* meaning,
                   DType dtype, const char* dtype_rule, bool is_output) const {
    const auto& [ptr, code, sizes, strides] = t;
    const DType got = valid(name, code);
    if (sizes != shape) {
      fail(name, std::string("expected shape ") + meaning + " = " + shape_str(shape) +
                     ", got " + shape_str(sizes));
    }
    if (strides.size() != sizes.size()) {
      fail(name, "sizes " + shape_str(sizes) + " but strides " + shape_str(strides));
    }
    if (got != dtype) {
      fail(name, std::string("dtype ") + dtype_name(got) + ", expected " + dtype_name(dtype) +
                     " (" + dtype_rule + ")");
    }
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      if (strides[d] < 0) fail(name, "strides must be >= 0, got " + shape_str(strides));
      if (is_output && sizes[d] > 1 && strides[d] == 0) {
        fail(name, "an output must not have zero strides, got strides " + shape_str(strides));
      }
    }
    if (ptr == 0) fail(name, "null data pointer");
    TensorRef ref;
    ref.ptr = ptr;
    ref.dtype = got;
    ref.ndim = static_cast<int>(sizes.size());
    std::copy(sizes.begin(), sizes.end(), ref.sizes);
    std::copy(strides.begin(), strides.end(), ref.strides);
    return ref;
  }

  const DeviceRules& rules_;
  std::string fn_;
};

// x and the parameters of the fused op, in the order their errors are reported.
void check_mix_inputs(const Checker& ck, smlp::MixInputs& p, const TensorArg& x,
                      const TensorArg& row_weight, const OptionalTensorArg& row_bias,
                      const TensorArg& col_weight, const OptionalTensorArg& col_bias,
                      const TensorArg& f_id, const TensorArg& f_row, const TensorArg& f_col) {
  p.x = ck.problem("x", x, p);
  const std::int64_t C = p.channels, H = p.height, W = p.width;
  p.row_weight = ck.input("row_weight", row_weight, {W, W}, "(W, W)", p);
  p.row_bias = ck.optional("row_bias", row_bias, {W}, "(W,)", p);
  p.col_weight = ck.input("col_weight", col_weight, {H, H}, "(H, H)", p);
  p.col_bias = ck.optional("col_bias", col_bias, {H}, "(H,)", p);
  p.out_channels = ck.out_channels("f_id", f_id);
  const std::int64_t Co = p.out_channels;
  p.f_id = ck.input("f_id", f_id, {Co, C}, "(C_out, C)", p);
  p.f_row = ck.input("f_row", f_row, {Co, C}, "(C_out, C)", p);
  p.f_col = ck.input("f_col", f_col, {Co, C}, "(C_out, C)", p);
}

// A device's launchers after the checks: the CPU ones ignore the stream.
struct Device {
  const DeviceRules& rules;
  void (*mix_fwd)(const smlp::MixFwdParams&, std::uintptr_t);
  void (*mix_wgrad)(const smlp::MixWgradParams&, std::uintptr_t);
  void (*axis_mix_fwd)(const smlp::AxisMixFwdParams&, std::uintptr_t);
  void (*axis_mix_wgrad)(const smlp::AxisMixWgradParams&, std::uintptr_t);
};

const Device kCpu{
    kCpuRules,
    [](const smlp::MixFwdParams& p, std::uintptr_t) { smlp::cpu::mix_fwd(p); },
    [](const smlp::MixWgradParams& p, std::uintptr_t) { smlp::cpu::mix_wgrad(p); },
    [](const smlp::AxisMixFwdParams& p, std::uintptr_t) { smlp::cpu::axis_mix_fwd(p); },
    [](const smlp::AxisMixWgradParams& p, std::uintptr_t) { smlp::cpu::axis_mix_wgrad(p); },
};
#if SMLP_WITH_CUDA
const Device kCuda{kCudaRules, &smlp::cuda::mix_fwd, &smlp::cuda::mix_wgrad,
                   &smlp::cuda::axis_mix_fwd, &smlp::cuda::axis_mix_wgrad};
#endif

template <const Device& dev>
void mix_fwd(const TensorArg& x, const TensorArg& row_weight,
             const OptionalTensorArg& row_bias, const TensorArg& col_weight,
             const OptionalTensorArg& col_bias, const TensorArg& f_id, const TensorArg& f_row,
             const TensorArg& f_col, const TensorArg& y, std::uintptr_t stream,
             const OptionalTensorArg& scale, const OptionalTensorArg& shift) {
  const Checker ck(dev.rules, "mix_fwd");
  smlp::MixFwdParams p;
  check_mix_inputs(ck, p, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col);
  p.y = ck.output("y", y, {p.batch, p.out_channels, p.height, p.width}, "(B, C_out, H, W)", p);
  if (scale.has_value() || shift.has_value()) {
    const char* name = scale.has_value() ? "scale" : "shift";
    if (!dev.rules.prologue) {
      ck.fail(name, std::string("the ") + dev.rules.kernels + " kernels have no fused prologue");
    }
    if (!scale.has_value() || !shift.has_value()) {
      ck.fail(scale.has_value() ? "shift" : "scale", "the prologue needs both scale and shift");
    }
    p.scale = ck.float_input("scale", *scale, {p.channels}, "(C,)", p);
    p.shift = ck.float_input("shift", *shift, {p.channels}, "(C,)", p);
  }
  dev.mix_fwd(p, stream);
}

template <const Device& dev>
void mix_wgrad(const TensorArg& g, const TensorArg& x,
               const TensorArg& row_weight, const OptionalTensorArg& row_bias,
               const TensorArg& col_weight, const OptionalTensorArg& col_bias,
               const TensorArg& f_id, const TensorArg& f_row, const TensorArg& f_col,
               const TensorArg& d_fuse, const TensorArg& d_row_weight,
               const TensorArg& d_row_bias, const TensorArg& d_col_weight,
               const TensorArg& d_col_bias, const OptionalTensorArg& dx, bool deterministic,
               std::uintptr_t stream) {
  const Checker ck(dev.rules, "mix_wgrad");
  smlp::MixWgradParams p;
  check_mix_inputs(ck, p, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col);
  const std::int64_t B = p.batch, C = p.channels, Co = p.out_channels, H = p.height,
                     W = p.width;
  p.deterministic = deterministic;
  p.g = ck.input("g", g, {B, Co, H, W}, "(B, C_out, H, W)", p);
  p.d_fuse = ck.wgrad("d_fuse", d_fuse, {Co, 3 * C}, "(C_out, 3C)", p);
  p.d_row_weight = ck.wgrad("d_row_weight", d_row_weight, {W, W}, "(W, W)", p);
  p.d_row_bias = ck.wgrad("d_row_bias", d_row_bias, {W}, "(W,)", p);
  p.d_col_weight = ck.wgrad("d_col_weight", d_col_weight, {H, H}, "(H, H)", p);
  p.d_col_bias = ck.wgrad("d_col_bias", d_col_bias, {H}, "(H,)", p);
  if (dx.has_value()) {
    if (!dev.rules.dx_in_wgrad) {
      ck.fail("dx", std::string("the ") + dev.rules.kernels +
                        " kernels compute the input gradient with mix_fwd: pass None");
    }
    p.dx = ck.output("dx", *dx, {B, C, H, W}, "x's (B, C, H, W)", p);
  }
  dev.mix_wgrad(p, stream);
}

template <const Device& dev>
void axis_mix_fwd(const TensorArg& x, const TensorArg& weight,
                  const OptionalTensorArg& bias, const TensorArg& y, int axis,
                  std::uintptr_t stream) {
  const Checker ck(dev.rules, "axis_mix_fwd");
  smlp::AxisMixFwdParams p;
  p.x = ck.problem("x", x, p);
  const std::int64_t n = ck.axis_length(axis, p);
  p.axis = axis;
  p.weight = ck.input("weight", weight, {n, n}, axis == 3 ? "(W, W)" : "(H, H)", p);
  p.bias = ck.optional("bias", bias, {n}, axis == 3 ? "(W,)" : "(H,)", p);
  p.y = ck.output("y", y, std::get<2>(x), "x's (B, C, H, W)", p);
  dev.axis_mix_fwd(p, stream);
}

template <const Device& dev>
void axis_mix_wgrad(const TensorArg& g, const TensorArg& x,
                    const TensorArg& d_weight, const TensorArg& d_bias, int axis,
                    bool deterministic, std::uintptr_t stream) {
  const Checker ck(dev.rules, "axis_mix_wgrad");
  smlp::AxisMixWgradParams p;
  p.x = ck.problem("x", x, p);
  const std::int64_t n = ck.axis_length(axis, p);
  p.axis = axis;
  p.deterministic = deterministic;
  p.g = ck.input("g", g, std::get<2>(x), "x's (B, C, H, W)", p);
  p.d_weight = ck.wgrad("d_weight", d_weight, {n, n}, axis == 3 ? "(W, W)" : "(H, H)", p);
  p.d_bias = ck.wgrad("d_bias", d_bias, {n}, axis == 3 ? "(W,)" : "(H,)", p);
  dev.axis_mix_wgrad(p, stream);
}

// Defines <prefix>_mix_fwd, _mix_wgrad, _axis_mix_fwd and _axis_mix_wgrad for `dev`; checks
// and launch run with the GIL released (pure C++ after argument conversion).
template <const Device& dev>
void def_launchers(py::module_& m) {
  const std::string prefix = std::string(dev.rules.prefix) + "_";
  const std::string on = std::string(" on ") + dev.rules.kernels + " tensors (" +
                         dev.rules.compute_names() + ")";
  const std::string wgrad_dtype = "float32 (float64 for a float64 x)";
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.def((prefix + "mix_fwd").c_str(), &mix_fwd<dev>,
        py::arg("x"), py::arg("row_weight"), py::arg("row_bias"), py::arg("col_weight"),
        py::arg("col_bias"), py::arg("f_id"), py::arg("f_row"), py::arg("f_col"), py::arg("y"),
        py::arg("stream") = 0, py::arg("scale") = py::none(), py::arg("shift") = py::none(),
        no_gil,
        ("Fused sMLP forward" + on + ", written into y (B, C_out, H, W) on `stream` (a "
         "cudaStream_t as an int; ignored on the CPU): y = F_id x + F_row r + F_col k with "
         "r, k the row and column mixes (biases included). Every tensor is a TensorArg "
         "(data_ptr, dtype_code, sizes, strides), biases may be None. With g, transposed "
         "weight views and no biases it is the input gradient. " +
         (dev.rules.prologue
              ? "With scale and shift ((C,), float32; float64 for a float64 x) the mix of "
                "gelu(x * scale[c] + shift[c]) (exact GELU, rounded to x's dtype)."
              : "scale and shift must be None (no fused prologue).")).c_str());
  m.def((prefix + "mix_wgrad").c_str(), &mix_wgrad<dev>,
        py::arg("g"), py::arg("x"), py::arg("row_weight"), py::arg("row_bias"),
        py::arg("col_weight"), py::arg("col_bias"), py::arg("f_id"), py::arg("f_row"),
        py::arg("f_col"), py::arg("d_fuse"), py::arg("d_row_weight"), py::arg("d_row_bias"),
        py::arg("d_col_weight"), py::arg("d_col_bias"), py::arg("dx") = py::none(),
        py::arg("deterministic") = false, py::arg("stream") = 0, no_gil,
        ("Weight gradients of the fused sMLP op" + on + "; overwrites the " + wgrad_dtype +
         " d_fuse (C_out, 3C), d_row_weight, d_row_bias, d_col_weight, d_col_bias. " +
         (dev.rules.dx_in_wgrad
              ? "With dx (x's shape and dtype), also writes the input gradient there, from "
                "the F^T g it computes anyway. "
              : "dx must be None (the input gradient is mix_fwd on g). ") +
         "deterministic=True: bitwise reproducible (always so on the CPU).").c_str());
  m.def((prefix + "axis_mix_fwd").c_str(), &axis_mix_fwd<dev>,
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"), py::arg("axis"),
        py::arg("stream") = 0, no_gil,
        ("Row mix (axis=3, along W) or column mix (axis=2, along H)" + on + " into y.").c_str());
  m.def((prefix + "axis_mix_wgrad").c_str(), &axis_mix_wgrad<dev>,
        py::arg("g"), py::arg("x"), py::arg("d_weight"), py::arg("d_bias"), py::arg("axis"),
        py::arg("deterministic") = false, py::arg("stream") = 0, no_gil,
        ("Weight and bias gradients (" + wgrad_dtype + ", overwritten) of the row mix "
         "(axis=3) or column mix (axis=2)" + on + ".").c_str());
}

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

#if SMLP_TEST_HOOKS
  m.def("cuda_probe", &cuda_probe, py::arg("value"), py::arg("stream") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "Run a one-thread kernel on `stream` (a cudaStream_t as an int, e.g. "
        "torch.cuda.current_stream().cuda_stream) that returns value + 1. Raises "
        "RuntimeError with the CUDA error string when there is no usable device.");
#endif

  m.def("cpu_fma_peak", &cpu_fma_peak, py::arg("dtype"), py::arg("threads") = 0,
        py::arg("isa") = "auto", py::arg("min_seconds") = 0.05, py::arg("trials") = 3,
        "The CPU's peak multiply-add rate on `threads` OpenMP threads (0: OpenMP's default): "
        "every thread runs independent FMA chains on vector registers, no memory traffic. "
        "dtype 'fp32' or 'fp64' (vector FMA, 2 FLOPs per lane) or 'bf16' (AVX512-BF16 "
        "vdpbf16ps, 2 bf16 products per fp32 lane: 4 FLOPs per lane). isa 'auto' (the widest "
        "the CPU has) or one of cpu_fma_peak_isas(dtype) (ValueError for one it lacks). "
        "Returns a dict: flop_per_s (the best of `trials` trials of about min_seconds, each "
        "thread's work over its own CPU time, summed), flop_per_s_wall (the best team rate "
        "by the wall clock), isa, instruction, threads, lanes, chains, flops_per_step, "
        "iterations, trials, cpu_seconds, wall_seconds, checksum.");
  m.def("cpu_fma_peak_isas", &cpu_fma_peak_isas, py::arg("dtype"),
        "The instruction sets cpu_fma_peak can use for dtype on this CPU, widest first "
        "(x86: avx512, avx2, sse; bf16: avx512bf16 or none).");

  def_launchers<kCpu>(m);
  m.def("cpu_last_launch_threads", &smlp::cpu::last_launch_threads,
        "How many threads the calling thread's latest cpu_* launch ran on (launches of little "
        "work run on fewer threads than torch.get_num_threads()).");
  m.def(
      "cpu_isa",
      []() {
        return py::dict(py::arg("selected") = smlp::cpu::cpu_isa_selected(),
                        py::arg("built") = smlp::cpu::cpu_isa_levels_built(),
                        py::arg("supported") = smlp::cpu::cpu_isa_levels_supported());
      },
      "The CPU kernels' instruction set levels, best first: dict with built (compiled into "
      "this module), supported (those this CPU can run) and selected (what the next cpu_* "
      "launch uses: SMLP_CPU_ISA if set, a level's name or 'auto', else the best supported). "
      "Levels: avx512bf16 (AVX-512 with vdpbf16ps for bfloat16), avx512, avx2 (with FMA and "
      "F16C), baseline (the architecture's base instruction set). ValueError naming "
      "SMLP_CPU_ISA for a level that is unknown, not built or not supported.");
#if SMLP_WITH_CUDA
  def_launchers<kCuda>(m);
#else
  for (const char* name :
       {"cuda_mix_fwd", "cuda_mix_wgrad", "cuda_axis_mix_fwd", "cuda_axis_mix_wgrad"}) {
    m.def(
        name,
        [](const py::args&, const py::kwargs&) { throw std::runtime_error(kBuiltWithoutCuda); },
        "Unavailable: the extension was built without CUDA (raises RuntimeError).");
  }
#endif
}
