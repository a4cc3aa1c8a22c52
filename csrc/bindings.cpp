// The one pybind11 binding file of smlp_kernels._C.
//
// No torch here: Python passes data pointers, sizes, strides, a dtype code and the CUDA
// stream handle as integers, so one build serves every torch version. Kernel entry points
// check those arguments here, in one place, and fill the plain params structs that the
// CPU and CUDA kernels take (strides and offsets as int64).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/fma_peak.h"
#include "cpu/smlp_cpu.h"

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
  py::dict out;
  out["dtype"] = dtype;
  out["flop_per_s"] = r.flop_per_s;
  out["isa"] = r.isa;
  out["instruction"] = r.instruction;
  out["threads"] = r.threads;
  out["lanes"] = r.lanes;
  out["chains"] = r.chains;
  out["flops_per_step"] = r.flops_per_step;
  out["iterations"] = r.iterations;
  out["trials"] = r.trials;
  out["cpu_seconds"] = r.cpu_seconds;
  out["flop_per_s_wall"] = r.flop_per_s_wall;
  out["wall_seconds"] = r.wall_seconds;
  out["checksum"] = r.checksum;
  return out;
}

std::vector<std::string> cpu_fma_peak_isas(const std::string& dtype) {
  return smlp::cpu::fma_peak_isas(peak_kind(dtype));
}

// ---- The launcher ABI, shared by the cpu_* and cuda_* launchers ----
namespace abi {

// (data_ptr, dtype_code, sizes, strides), strides in elements.
using TensorArg =
    std::tuple<std::uintptr_t, int, std::vector<std::int64_t>, std::vector<std::int64_t>>;
using OptionalTensorArg = std::optional<TensorArg>;

// The dtype codes Python passes (smlp_kernels/cpp_backends.py, DTYPE_CODES).
enum DTypeCode : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

std::string dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat64: return "float64";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "unknown dtype code " + std::to_string(code);
  }
}

std::string shape_str(const std::vector<std::int64_t>& v) {
  std::string s = "(";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

// Raises the ValueError every launcher error becomes: "<launcher>: <argument>: <what>".
class ArgError {
 public:
  explicit ArgError(const char* fn) : fn_(fn) {}

  [[noreturn]] void fail(const char* arg, const std::string& what) const {
    throw std::invalid_argument(std::string(fn_) + ": " + arg + ": " + what);
  }

 private:
  const char* fn_;
};

}  // namespace abi

// ---- BEGIN CPU launcher helpers (csrc/cpu) ----
// The cpu_* launchers: check the TensorArg tuples of the launcher ABI, fill the params
// structs of csrc/cpu/smlp_cpu.h, release the GIL and run. Errors name the argument.
namespace cpu_launch {

using abi::OptionalTensorArg;
using abi::TensorArg;
using abi::dtype_name;
using abi::shape_str;
using abi::kFloat32;
using abi::kFloat64;

struct Arg {
  const char* name = "";
  std::uintptr_t ptr = 0;
  int dtype = -1;
  std::vector<int64_t> sizes, strides;
  bool present = false;
};

class Checker : public abi::ArgError {
 public:
  using ArgError::ArgError;

  Arg tensor(const char* name, const TensorArg& t, size_t ndim) const {
    Arg a;
    a.name = name;
    a.ptr = std::get<0>(t);
    a.dtype = std::get<1>(t);
    a.sizes = std::get<2>(t);
    a.strides = std::get<3>(t);
    a.present = true;
    if (a.dtype < 0 || a.dtype > 3) {
      fail(name, "unknown dtype code " + std::to_string(a.dtype) +
                     " (0 float32, 1 float64, 2 float16, 3 bfloat16)");
    }
    if (a.sizes.size() != ndim) {
      fail(name, "expected " + std::to_string(ndim) + " dimensions, got sizes " +
                     shape_str(a.sizes));
    }
    if (a.strides.size() != ndim) {
      fail(name, "sizes " + shape_str(a.sizes) + " but strides " + shape_str(a.strides));
    }
    for (int64_t s : a.sizes) {
      if (s < 1) fail(name, "every size must be >= 1, got " + shape_str(a.sizes));
    }
    for (int64_t s : a.strides) {
      if (s < 0) fail(name, "strides must be >= 0, got " + shape_str(a.strides));
    }
    if (a.ptr == 0) fail(name, "null data pointer");
    return a;
  }

  Arg optional(const char* name, const OptionalTensorArg& t, size_t ndim) const {
    if (!t.has_value()) {
      Arg a;
      a.name = name;
      return a;
    }
    return tensor(name, *t, ndim);
  }

  void shape(const Arg& a, const std::vector<int64_t>& expected, const char* meaning) const {
    if (a.present && a.sizes != expected) {
      fail(a.name, std::string("expected shape ") + meaning + " = " + shape_str(expected) +
                       ", got " + shape_str(a.sizes));
    }
  }

  void dtype(const Arg& a, int expected, const char* rule) const {
    if (a.present && a.dtype != expected) {
      fail(a.name, "dtype " + dtype_name(a.dtype) + ", expected " + dtype_name(expected) + " (" +
                       rule + ")");
    }
  }

  // Outputs are written in parallel: no two elements may share memory.
  void output(const Arg& a) const {
    for (size_t d = 0; d < a.sizes.size(); ++d) {
      if (a.sizes[d] > 1 && a.strides[d] == 0) {
        fail(a.name, "an output must not have zero strides, got strides " +
                         shape_str(a.strides));
      }
    }
  }

  void side(const char* name, const char* what, int64_t v) const {
    if (v < 1 || v > smlp::cpu::kMaxSide) {
      fail(name, std::string(what) + " = " + std::to_string(v) + " is out of range 1.." +
                     std::to_string(smlp::cpu::kMaxSide));
    }
  }

  // The compute dtype: x's, float32 or float64 on the CPU.
  int compute_dtype(const Arg& x) const {
    if (x.dtype != kFloat32 && x.dtype != kFloat64) {
      fail(x.name, "the CPU kernels compute in float32 or float64, got " + dtype_name(x.dtype));
    }
    return x.dtype;
  }
};

template <typename T, int N>
smlp::cpu::View<T, N> view(const Arg& a) {
  smlp::cpu::View<T, N> v;
  if (!a.present) return v;
  v.data = reinterpret_cast<T*>(a.ptr);
  for (int d = 0; d < N; ++d) {
    v.size[d] = a.sizes[d];
    v.stride[d] = a.strides[d];
  }
  return v;
}

// Shapes shared by the mix launchers; returns C_out.
int64_t check_mix_params(const Checker& ck, const Arg& x, const Arg& rw, const Arg& rb,
                         const Arg& cw, const Arg& cb, const Arg& f_id, const Arg& f_row,
                         const Arg& f_col) {
  const int64_t C = x.sizes[1], H = x.sizes[2], W = x.sizes[3];
  ck.side(x.name, "H", H);
  ck.side(x.name, "W", W);
  ck.shape(rw, {W, W}, "(W, W)");
  ck.shape(rb, {W}, "(W,)");
  ck.shape(cw, {H, H}, "(H, H)");
  ck.shape(cb, {H}, "(H,)");
  const int64_t Co = f_id.sizes[0];
  ck.shape(f_id, {Co, C}, "(C_out, C)");
  ck.shape(f_row, {Co, C}, "(C_out, C)");
  ck.shape(f_col, {Co, C}, "(C_out, C)");
  const char* rule = "x, g and the parameters share the compute dtype";
  for (const Arg* a : {&rw, &rb, &cw, &cb, &f_id, &f_row, &f_col}) ck.dtype(*a, x.dtype, rule);
  return Co;
}

template <typename T>
void run_mix_fwd(const Arg& x, const Arg& rw, const Arg& rb, const Arg& cw, const Arg& cb,
                 const Arg& f_id, const Arg& f_row, const Arg& f_col, const Arg& y) {
  smlp::cpu::MixFwdParams<T> p;
  p.x = view<const T, 4>(x);
  p.row_weight = view<const T, 2>(rw);
  p.row_bias = view<const T, 1>(rb);
  p.col_weight = view<const T, 2>(cw);
  p.col_bias = view<const T, 1>(cb);
  p.f_id = view<const T, 2>(f_id);
  p.f_row = view<const T, 2>(f_row);
  p.f_col = view<const T, 2>(f_col);
  p.y = view<T, 4>(y);
  py::gil_scoped_release release;
  smlp::cpu::mix_fwd<T>(p);
}

void mix_fwd(const TensorArg& x_, const TensorArg& rw_, const OptionalTensorArg& rb_,
             const TensorArg& cw_, const OptionalTensorArg& cb_, const TensorArg& f_id_,
             const TensorArg& f_row_, const TensorArg& f_col_, const TensorArg& y_,
             std::uintptr_t /*stream*/) {
  const Checker ck("cpu_mix_fwd");
  const Arg x = ck.tensor("x", x_, 4);
  const Arg rw = ck.tensor("row_weight", rw_, 2), rb = ck.optional("row_bias", rb_, 1);
  const Arg cw = ck.tensor("col_weight", cw_, 2), cb = ck.optional("col_bias", cb_, 1);
  const Arg f_id = ck.tensor("f_id", f_id_, 2), f_row = ck.tensor("f_row", f_row_, 2);
  const Arg f_col = ck.tensor("f_col", f_col_, 2), y = ck.tensor("y", y_, 4);
  const int dtype = ck.compute_dtype(x);
  const int64_t Co = check_mix_params(ck, x, rw, rb, cw, cb, f_id, f_row, f_col);
  ck.shape(y, {x.sizes[0], Co, x.sizes[2], x.sizes[3]}, "(B, C_out, H, W)");
  ck.dtype(y, dtype, "y has the compute dtype");
  ck.output(y);
  if (dtype == kFloat32) {
    run_mix_fwd<float>(x, rw, rb, cw, cb, f_id, f_row, f_col, y);
  } else {
    run_mix_fwd<double>(x, rw, rb, cw, cb, f_id, f_row, f_col, y);
  }
}

template <typename T>
void run_mix_wgrad(const Arg& g, const Arg& x, const Arg& rw, const Arg& rb, const Arg& cw,
                   const Arg& cb, const Arg& f_id, const Arg& f_row, const Arg& f_col,
                   const Arg& d_fuse, const Arg& d_rw, const Arg& d_rb, const Arg& d_cw,
                   const Arg& d_cb) {
  smlp::cpu::MixWgradParams<T> p;
  p.g = view<const T, 4>(g);
  p.x = view<const T, 4>(x);
  p.row_weight = view<const T, 2>(rw);
  p.row_bias = view<const T, 1>(rb);
  p.col_weight = view<const T, 2>(cw);
  p.col_bias = view<const T, 1>(cb);
  p.f_id = view<const T, 2>(f_id);
  p.f_row = view<const T, 2>(f_row);
  p.f_col = view<const T, 2>(f_col);
  p.d_fuse = view<T, 2>(d_fuse);
  p.d_row_weight = view<T, 2>(d_rw);
  p.d_row_bias = view<T, 1>(d_rb);
  p.d_col_weight = view<T, 2>(d_cw);
  p.d_col_bias = view<T, 1>(d_cb);
  py::gil_scoped_release release;
  smlp::cpu::mix_wgrad<T>(p);
}

void mix_wgrad(const TensorArg& g_, const TensorArg& x_, const TensorArg& rw_,
               const OptionalTensorArg& rb_, const TensorArg& cw_, const OptionalTensorArg& cb_,
               const TensorArg& f_id_, const TensorArg& f_row_, const TensorArg& f_col_,
               const TensorArg& d_fuse_, const TensorArg& d_rw_, const TensorArg& d_rb_,
               const TensorArg& d_cw_, const TensorArg& d_cb_, bool /*deterministic*/,
               std::uintptr_t /*stream*/) {
  // Always deterministic on the CPU (fixed-order reductions), so the flag changes nothing.
  const Checker ck("cpu_mix_wgrad");
  const Arg g = ck.tensor("g", g_, 4), x = ck.tensor("x", x_, 4);
  const Arg rw = ck.tensor("row_weight", rw_, 2), rb = ck.optional("row_bias", rb_, 1);
  const Arg cw = ck.tensor("col_weight", cw_, 2), cb = ck.optional("col_bias", cb_, 1);
  const Arg f_id = ck.tensor("f_id", f_id_, 2), f_row = ck.tensor("f_row", f_row_, 2);
  const Arg f_col = ck.tensor("f_col", f_col_, 2);
  const Arg d_fuse = ck.tensor("d_fuse", d_fuse_, 2);
  const Arg d_rw = ck.tensor("d_row_weight", d_rw_, 2), d_rb = ck.tensor("d_row_bias", d_rb_, 1);
  const Arg d_cw = ck.tensor("d_col_weight", d_cw_, 2), d_cb = ck.tensor("d_col_bias", d_cb_, 1);
  const int dtype = ck.compute_dtype(x);
  const int64_t Co = check_mix_params(ck, x, rw, rb, cw, cb, f_id, f_row, f_col);
  const int64_t B = x.sizes[0], C = x.sizes[1], H = x.sizes[2], W = x.sizes[3];
  ck.shape(g, {B, Co, H, W}, "(B, C_out, H, W)");
  ck.dtype(g, dtype, "x, g and the parameters share the compute dtype");
  ck.shape(d_fuse, {Co, 3 * C}, "(C_out, 3C)");
  ck.shape(d_rw, {W, W}, "(W, W)");
  ck.shape(d_rb, {W}, "(W,)");
  ck.shape(d_cw, {H, H}, "(H, H)");
  ck.shape(d_cb, {H}, "(H,)");
  for (const Arg* a : {&d_fuse, &d_rw, &d_rb, &d_cw, &d_cb}) {
    ck.dtype(*a, dtype, "weight gradients are float32, float64 for a float64 compute dtype");
    ck.output(*a);
  }
  if (dtype == kFloat32) {
    run_mix_wgrad<float>(g, x, rw, rb, cw, cb, f_id, f_row, f_col, d_fuse, d_rw, d_rb, d_cw,
                         d_cb);
  } else {
    run_mix_wgrad<double>(g, x, rw, rb, cw, cb, f_id, f_row, f_col, d_fuse, d_rw, d_rb, d_cw,
                          d_cb);
  }
}

int64_t check_axis(const Checker& ck, int axis, const Arg& x) {
  if (axis != 2 && axis != 3) {
    ck.fail("axis", "must be 3 (row mix, along W) or 2 (column mix, along H), got " +
                        std::to_string(axis));
  }
  ck.side(x.name, "H", x.sizes[2]);
  ck.side(x.name, "W", x.sizes[3]);
  return x.sizes[axis];
}

template <typename T>
void run_axis_mix_fwd(const Arg& x, const Arg& weight, const Arg& bias, const Arg& y, int axis) {
  smlp::cpu::AxisMixFwdParams<T> p;
  p.x = view<const T, 4>(x);
  p.weight = view<const T, 2>(weight);
  p.bias = view<const T, 1>(bias);
  p.y = view<T, 4>(y);
  p.axis = axis;
  py::gil_scoped_release release;
  smlp::cpu::axis_mix_fwd<T>(p);
}

void axis_mix_fwd(const TensorArg& x_, const TensorArg& weight_, const OptionalTensorArg& bias_,
                  const TensorArg& y_, int axis, std::uintptr_t /*stream*/) {
  const Checker ck("cpu_axis_mix_fwd");
  const Arg x = ck.tensor("x", x_, 4), weight = ck.tensor("weight", weight_, 2);
  const Arg bias = ck.optional("bias", bias_, 1), y = ck.tensor("y", y_, 4);
  const int dtype = ck.compute_dtype(x);
  const int64_t n = check_axis(ck, axis, x);
  ck.shape(weight, {n, n}, axis == 3 ? "(W, W)" : "(H, H)");
  ck.shape(bias, {n}, axis == 3 ? "(W,)" : "(H,)");
  ck.shape(y, x.sizes, "x's (B, C, H, W)");
  const char* rule = "x and the parameters share the compute dtype";
  for (const Arg* a : {&weight, &bias, &y}) ck.dtype(*a, dtype, rule);
  ck.output(y);
  if (dtype == kFloat32) {
    run_axis_mix_fwd<float>(x, weight, bias, y, axis);
  } else {
    run_axis_mix_fwd<double>(x, weight, bias, y, axis);
  }
}

template <typename T>
void run_axis_mix_wgrad(const Arg& g, const Arg& x, const Arg& d_weight, const Arg& d_bias,
                        int axis) {
  smlp::cpu::AxisMixWgradParams<T> p;
  p.g = view<const T, 4>(g);
  p.x = view<const T, 4>(x);
  p.d_weight = view<T, 2>(d_weight);
  p.d_bias = view<T, 1>(d_bias);
  p.axis = axis;
  py::gil_scoped_release release;
  smlp::cpu::axis_mix_wgrad<T>(p);
}

void axis_mix_wgrad(const TensorArg& g_, const TensorArg& x_, const TensorArg& d_weight_,
                    const TensorArg& d_bias_, int axis, bool /*deterministic*/,
                    std::uintptr_t /*stream*/) {
  const Checker ck("cpu_axis_mix_wgrad");
  const Arg g = ck.tensor("g", g_, 4), x = ck.tensor("x", x_, 4);
  const Arg d_weight = ck.tensor("d_weight", d_weight_, 2);
  const Arg d_bias = ck.tensor("d_bias", d_bias_, 1);
  const int dtype = ck.compute_dtype(x);
  const int64_t n = check_axis(ck, axis, x);
  ck.shape(g, x.sizes, "x's (B, C, H, W)");
  ck.dtype(g, dtype, "x and g share the compute dtype");
  ck.shape(d_weight, {n, n}, axis == 3 ? "(W, W)" : "(H, H)");
  ck.shape(d_bias, {n}, axis == 3 ? "(W,)" : "(H,)");
  for (const Arg* a : {&d_weight, &d_bias}) {
    ck.dtype(*a, dtype, "weight gradients are float32, float64 for a float64 compute dtype");
    ck.output(*a);
  }
  if (dtype == kFloat32) {
    run_axis_mix_wgrad<float>(g, x, d_weight, d_bias, axis);
  } else {
    run_axis_mix_wgrad<double>(g, x, d_weight, d_bias, axis);
  }
}

}  // namespace cpu_launch
// ---- END CPU launcher helpers ----

// ---- BEGIN CUDA launcher helpers (csrc/cuda) ----
// The cuda_* launchers: check the TensorArg tuples of the launcher ABI (namespace abi), fill
// the params structs of csrc/cuda/launchers.h and run with the GIL released. Every error
// names the launcher and the argument. Without CUDA the launchers exist and raise.
#if SMLP_WITH_CUDA
namespace cuda_launch {

namespace sc = smlp::cuda;

using abi::OptionalTensorArg;
using abi::TensorArg;
using abi::dtype_name;
using abi::shape_str;
// The CUDA launchers' dtype codes are the ABI's.
static_assert(sc::kFloat32 == abi::kFloat32 && sc::kFloat64 == abi::kFloat64 &&
              sc::kFloat16 == abi::kFloat16 && sc::kBFloat16 == abi::kBFloat16);

class Checker : public abi::ArgError {
 public:
  using ArgError::ArgError;

  // The sizes of a 4-D input (x or g) after checking its rank.
  std::vector<std::int64_t> sizes4(const char* name, const TensorArg& t) const {
    const auto& sizes = std::get<2>(t);
    if (sizes.size() != 4) {
      fail(name, "expected 4 dimensions (B, C, H, W), got sizes " + shape_str(sizes));
    }
    return sizes;
  }

  // The compute dtype, from x: float32, float16 or bfloat16.
  int compute_dtype(const char* name, const TensorArg& t) const {
    const int code = std::get<1>(t);
    if (code == sc::kFloat64) {
      fail(name, "float64 is not supported by the CUDA kernels (float32, float16, bfloat16)");
    }
    if (code != sc::kFloat32 && code != sc::kFloat16 && code != sc::kBFloat16) {
      fail(name, dtype_name(code) + " (0 float32, 1 float64, 2 float16, 3 bfloat16)");
    }
    return code;
  }

  void dims(const char* name, std::int64_t batch, std::int64_t channels, std::int64_t height,
            std::int64_t width) const {
    if (batch < 1) fail(name, "B = " + std::to_string(batch) + " must be >= 1");
    if (channels < 1) fail(name, "C = " + std::to_string(channels) + " must be >= 1");
    for (const auto& [what, v] : {std::pair<const char*, std::int64_t>{"H", height},
                                  std::pair<const char*, std::int64_t>{"W", width}}) {
      if (v < 1 || v > sc::kMaxSpatial) {
        fail(name, std::string(what) + " = " + std::to_string(v) + " is out of range 1.." +
                       std::to_string(sc::kMaxSpatial) + " of the CUDA kernels");
      }
    }
  }

  // A tensor of exactly `shape` and `dtype`; outputs must not alias themselves.
  sc::TensorRef tensor(const char* name, const TensorArg& t,
                       const std::vector<std::int64_t>& shape, const char* meaning, int dtype,
                       const char* dtype_rule, bool output = false) const {
    const auto& [ptr, code, sizes, strides] = t;
    if (sizes != shape) {
      fail(name, std::string("expected shape ") + meaning + " = " + shape_str(shape) +
                     ", got " + shape_str(sizes));
    }
    if (strides.size() != sizes.size()) {
      fail(name, "sizes " + shape_str(sizes) + " but strides " + shape_str(strides));
    }
    if (code != dtype) {
      fail(name, "dtype " + dtype_name(code) + ", expected " + dtype_name(dtype) + " (" +
                     dtype_rule + ")");
    }
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      if (strides[d] < 0) fail(name, "strides must be >= 0, got " + shape_str(strides));
      if (output && sizes[d] > 1 && strides[d] == 0) {
        fail(name, "an output must not have zero strides, got " + shape_str(strides));
      }
    }
    if (ptr == 0) fail(name, "null data pointer");
    sc::TensorRef ref;
    ref.ptr = ptr;
    ref.ndim = static_cast<int>(sizes.size());
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      ref.sizes[d] = sizes[d];
      ref.strides[d] = strides[d];
    }
    return ref;
  }

  sc::TensorRef optional(const char* name, const OptionalTensorArg& t,
                         const std::vector<std::int64_t>& shape, const char* meaning, int dtype,
                         const char* dtype_rule) const {
    if (!t.has_value()) return sc::TensorRef{};
    return tensor(name, *t, shape, meaning, dtype, dtype_rule);
  }

  // C_out from f_id, after checking that it is 2-D.
  std::int64_t out_channels(const char* name, const TensorArg& f_id) const {
    const auto& sizes = std::get<2>(f_id);
    if (sizes.size() != 2 || sizes[0] < 1) {
      fail(name, "expected shape (C_out, C) with C_out >= 1, got " + shape_str(sizes));
    }
    return sizes[0];
  }
};

constexpr const char* kSameDtype = "x, g and every parameter share x's dtype";
constexpr const char* kGradDtype = "weight gradients are float32";

// The parameters shared by cuda_mix_fwd and cuda_mix_wgrad, checked against x's sizes.
struct MixParams {
  sc::TensorRef row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col;
  std::int64_t out_channels;
};

MixParams check_mix_params(const Checker& ck, int dtype, std::int64_t C, std::int64_t H,
                           std::int64_t W, const TensorArg& row_weight,
                           const OptionalTensorArg& row_bias, const TensorArg& col_weight,
                           const OptionalTensorArg& col_bias, const TensorArg& f_id,
                           const TensorArg& f_row, const TensorArg& f_col) {
  MixParams p;
  p.row_weight = ck.tensor("row_weight", row_weight, {W, W}, "(W, W)", dtype, kSameDtype);
  p.row_bias = ck.optional("row_bias", row_bias, {W}, "(W,)", dtype, kSameDtype);
  p.col_weight = ck.tensor("col_weight", col_weight, {H, H}, "(H, H)", dtype, kSameDtype);
  p.col_bias = ck.optional("col_bias", col_bias, {H}, "(H,)", dtype, kSameDtype);
  p.out_channels = ck.out_channels("f_id", f_id);
  const std::int64_t Co = p.out_channels;
  p.f_id = ck.tensor("f_id", f_id, {Co, C}, "(C_out, C)", dtype, kSameDtype);
  p.f_row = ck.tensor("f_row", f_row, {Co, C}, "(C_out, C)", dtype, kSameDtype);
  p.f_col = ck.tensor("f_col", f_col, {Co, C}, "(C_out, C)", dtype, kSameDtype);
  return p;
}

void mix_fwd(const TensorArg& x, const TensorArg& row_weight, const OptionalTensorArg& row_bias,
             const TensorArg& col_weight, const OptionalTensorArg& col_bias,
             const TensorArg& f_id, const TensorArg& f_row, const TensorArg& f_col,
             const TensorArg& y, std::uintptr_t stream) {
  const Checker ck("cuda_mix_fwd");
  const auto s = ck.sizes4("x", x);
  const std::int64_t B = s[0], C = s[1], H = s[2], W = s[3];
  const int dtype = ck.compute_dtype("x", x);
  ck.dims("x", B, C, H, W);
  sc::MixFwdParams p;
  p.dtype = dtype;
  p.batch = B;
  p.channels = C;
  p.height = H;
  p.width = W;
  p.x = ck.tensor("x", x, s, "(B, C, H, W)", dtype, kSameDtype);
  const MixParams m = check_mix_params(ck, dtype, C, H, W, row_weight, row_bias, col_weight,
                                       col_bias, f_id, f_row, f_col);
  p.out_channels = m.out_channels;
  p.row_weight = m.row_weight;
  p.row_bias = m.row_bias;
  p.col_weight = m.col_weight;
  p.col_bias = m.col_bias;
  p.f_id = m.f_id;
  p.f_row = m.f_row;
  p.f_col = m.f_col;
  p.y = ck.tensor("y", y, {B, m.out_channels, H, W}, "(B, C_out, H, W)", dtype, kSameDtype,
                  true);
  sc::mix_fwd(p, stream);
}

void mix_wgrad(const TensorArg& g, const TensorArg& x, const TensorArg& row_weight,
               const OptionalTensorArg& row_bias, const TensorArg& col_weight,
               const OptionalTensorArg& col_bias, const TensorArg& f_id, const TensorArg& f_row,
               const TensorArg& f_col, const TensorArg& d_fuse, const TensorArg& d_row_weight,
               const TensorArg& d_row_bias, const TensorArg& d_col_weight,
               const TensorArg& d_col_bias, bool deterministic, std::uintptr_t stream) {
  const Checker ck("cuda_mix_wgrad");
  const auto s = ck.sizes4("x", x);
  const std::int64_t B = s[0], C = s[1], H = s[2], W = s[3];
  const int dtype = ck.compute_dtype("x", x);
  ck.dims("x", B, C, H, W);
  sc::MixWgradParams p;
  p.dtype = dtype;
  p.deterministic = deterministic;
  p.batch = B;
  p.channels = C;
  p.height = H;
  p.width = W;
  p.x = ck.tensor("x", x, s, "(B, C, H, W)", dtype, kSameDtype);
  const MixParams m = check_mix_params(ck, dtype, C, H, W, row_weight, row_bias, col_weight,
                                       col_bias, f_id, f_row, f_col);
  const std::int64_t Co = m.out_channels;
  p.out_channels = Co;
  p.row_weight = m.row_weight;
  p.row_bias = m.row_bias;
  p.col_weight = m.col_weight;
  p.col_bias = m.col_bias;
  p.f_id = m.f_id;
  p.f_row = m.f_row;
  p.f_col = m.f_col;
  p.g = ck.tensor("g", g, {B, Co, H, W}, "(B, C_out, H, W)", dtype, kSameDtype);
  p.d_fuse = ck.tensor("d_fuse", d_fuse, {Co, 3 * C}, "(C_out, 3C)", sc::kFloat32, kGradDtype,
                       true);
  p.d_row_weight = ck.tensor("d_row_weight", d_row_weight, {W, W}, "(W, W)", sc::kFloat32,
                             kGradDtype, true);
  p.d_row_bias =
      ck.tensor("d_row_bias", d_row_bias, {W}, "(W,)", sc::kFloat32, kGradDtype, true);
  p.d_col_weight = ck.tensor("d_col_weight", d_col_weight, {H, H}, "(H, H)", sc::kFloat32,
                             kGradDtype, true);
  p.d_col_bias =
      ck.tensor("d_col_bias", d_col_bias, {H}, "(H,)", sc::kFloat32, kGradDtype, true);
  sc::mix_wgrad(p, stream);
}

// The mixed axis' length: W for axis 3 (row mix), H for axis 2 (column mix).
std::int64_t axis_length(const Checker& ck, int axis, std::int64_t H, std::int64_t W) {
  if (axis != 2 && axis != 3) {
    ck.fail("axis", "must be 3 (row mix, along W) or 2 (column mix, along H), got " +
                        std::to_string(axis));
  }
  return axis == 3 ? W : H;
}

void axis_mix_fwd(const TensorArg& x, const TensorArg& weight, const OptionalTensorArg& bias,
                  const TensorArg& y, int axis, std::uintptr_t stream) {
  const Checker ck("cuda_axis_mix_fwd");
  const auto s = ck.sizes4("x", x);
  const std::int64_t B = s[0], C = s[1], H = s[2], W = s[3];
  const int dtype = ck.compute_dtype("x", x);
  ck.dims("x", B, C, H, W);
  const std::int64_t n = axis_length(ck, axis, H, W);
  const char* square = axis == 3 ? "(W, W)" : "(H, H)";
  sc::AxisMixFwdParams p;
  p.dtype = dtype;
  p.axis = axis;
  p.batch = B;
  p.channels = C;
  p.height = H;
  p.width = W;
  p.x = ck.tensor("x", x, s, "(B, C, H, W)", dtype, kSameDtype);
  p.weight = ck.tensor("weight", weight, {n, n}, square, dtype, kSameDtype);
  p.bias = ck.optional("bias", bias, {n}, axis == 3 ? "(W,)" : "(H,)", dtype, kSameDtype);
  p.y = ck.tensor("y", y, s, "(B, C, H, W)", dtype, kSameDtype, true);
  sc::axis_mix_fwd(p, stream);
}

void axis_mix_wgrad(const TensorArg& g, const TensorArg& x, const TensorArg& d_weight,
                    const TensorArg& d_bias, int axis, bool deterministic,
                    std::uintptr_t stream) {
  const Checker ck("cuda_axis_mix_wgrad");
  const auto s = ck.sizes4("x", x);
  const std::int64_t B = s[0], C = s[1], H = s[2], W = s[3];
  const int dtype = ck.compute_dtype("x", x);
  ck.dims("x", B, C, H, W);
  const std::int64_t n = axis_length(ck, axis, H, W);
  sc::AxisMixWgradParams p;
  p.dtype = dtype;
  p.axis = axis;
  p.deterministic = deterministic;
  p.batch = B;
  p.channels = C;
  p.height = H;
  p.width = W;
  p.x = ck.tensor("x", x, s, "(B, C, H, W)", dtype, kSameDtype);
  p.g = ck.tensor("g", g, s, "(B, C, H, W)", dtype, kSameDtype);
  p.d_weight = ck.tensor("d_weight", d_weight, {n, n}, axis == 3 ? "(W, W)" : "(H, H)",
                         sc::kFloat32, kGradDtype, true);
  p.d_bias = ck.tensor("d_bias", d_bias, {n}, axis == 3 ? "(W,)" : "(H,)", sc::kFloat32,
                       kGradDtype, true);
  sc::axis_mix_wgrad(p, stream);
}

}  // namespace cuda_launch
#endif  // SMLP_WITH_CUDA
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

  // ---- BEGIN CPU launcher defs ----
  m.def("cpu_mix_fwd", &cpu_launch::mix_fwd, py::arg("x"), py::arg("row_weight"),
        py::arg("row_bias"), py::arg("col_weight"), py::arg("col_bias"), py::arg("f_id"),
        py::arg("f_row"), py::arg("f_col"), py::arg("y"), py::arg("stream") = 0,
        "Fused sMLP forward on CPU tensors (float32/float64), written into y (B, C_out, H, W): "
        "y = F_id x + R(F_row x) + K(F_col x) + biases. Every tensor is a TensorArg "
        "(data_ptr, dtype_code, sizes, strides), biases may be None. With g, transposed "
        "weights and no biases it is the input gradient.");
  m.def("cpu_mix_wgrad", &cpu_launch::mix_wgrad, py::arg("g"), py::arg("x"),
        py::arg("row_weight"), py::arg("row_bias"), py::arg("col_weight"), py::arg("col_bias"),
        py::arg("f_id"), py::arg("f_row"), py::arg("f_col"), py::arg("d_fuse"),
        py::arg("d_row_weight"), py::arg("d_row_bias"), py::arg("d_col_weight"),
        py::arg("d_col_bias"), py::arg("deterministic") = false, py::arg("stream") = 0,
        "Weight gradients of the fused sMLP op on CPU tensors; overwrites d_fuse (C_out, 3C), "
        "d_row_weight, d_row_bias, d_col_weight, d_col_bias. Always deterministic.");
  m.def("cpu_axis_mix_fwd", &cpu_launch::axis_mix_fwd, py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("y"), py::arg("axis"), py::arg("stream") = 0,
        "Row mix (axis=3, along W) or column mix (axis=2, along H) of CPU tensors into y.");
  m.def("cpu_axis_mix_wgrad", &cpu_launch::axis_mix_wgrad, py::arg("g"), py::arg("x"),
        py::arg("d_weight"), py::arg("d_bias"), py::arg("axis"),
        py::arg("deterministic") = false, py::arg("stream") = 0,
        "Weight and bias gradients of the row mix (axis=3) or column mix (axis=2); "
        "overwrites d_weight and d_bias. Always deterministic.");
  m.def("cpu_last_launch_threads", &smlp::cpu::last_launch_threads,
        "How many threads the calling thread's latest cpu_* launch ran on (launches of little "
        "work run on fewer threads than torch.get_num_threads()).");
  // ---- END CPU launcher defs ----

  // ---- BEGIN CUDA launcher defs ----
#if SMLP_WITH_CUDA
  // Validation and launch run with the GIL released (pure C++ after argument conversion).
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.def("cuda_mix_fwd", &cuda_launch::mix_fwd, py::arg("x"), py::arg("row_weight"),
        py::arg("row_bias"), py::arg("col_weight"), py::arg("col_bias"), py::arg("f_id"),
        py::arg("f_row"), py::arg("f_col"), py::arg("y"), py::arg("stream") = 0, no_gil,
        "Fused sMLP forward on CUDA tensors (float32/float16/bfloat16), written into y "
        "(B, C_out, H, W) on `stream`: y = F_id x + F_row r + F_col k with r, k the row and "
        "column mixes (biases included). Every tensor is a TensorArg (data_ptr, dtype_code, "
        "sizes, strides), biases may be None. With g, transposed weight views and no biases "
        "it is the input gradient.");
  m.def("cuda_mix_wgrad", &cuda_launch::mix_wgrad, py::arg("g"), py::arg("x"),
        py::arg("row_weight"), py::arg("row_bias"), py::arg("col_weight"), py::arg("col_bias"),
        py::arg("f_id"), py::arg("f_row"), py::arg("f_col"), py::arg("d_fuse"),
        py::arg("d_row_weight"), py::arg("d_row_bias"), py::arg("d_col_weight"),
        py::arg("d_col_bias"), py::arg("deterministic") = false, py::arg("stream") = 0, no_gil,
        "Weight gradients of the fused sMLP op on CUDA tensors; overwrites the float32 "
        "d_fuse (C_out, 3C), d_row_weight, d_row_bias, d_col_weight, d_col_bias. "
        "deterministic=True: fixed-order reductions, bitwise reproducible; False: atomics.");
  m.def("cuda_axis_mix_fwd", &cuda_launch::axis_mix_fwd, py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("y"), py::arg("axis"), py::arg("stream") = 0, no_gil,
        "Row mix (axis=3, along W) or column mix (axis=2, along H) of CUDA tensors into y.");
  m.def("cuda_axis_mix_wgrad", &cuda_launch::axis_mix_wgrad, py::arg("g"), py::arg("x"),
        py::arg("d_weight"), py::arg("d_bias"), py::arg("axis"),
        py::arg("deterministic") = false, py::arg("stream") = 0, no_gil,
        "Weight and bias gradients (float32, overwritten) of the row mix (axis=3) or column "
        "mix (axis=2) on CUDA tensors.");
#else
  for (const char* name :
       {"cuda_mix_fwd", "cuda_mix_wgrad", "cuda_axis_mix_fwd", "cuda_axis_mix_wgrad"}) {
    m.def(
        name,
        [](const py::args&, const py::kwargs&) { throw std::runtime_error(kBuiltWithoutCuda); },
        "Unavailable: the extension was built without CUDA (raises RuntimeError).");
  }
#endif
  // ---- END CUDA launcher defs ----
}
