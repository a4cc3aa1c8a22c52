// Runs the CUDA launchers (csrc/cuda/mix_fwd.cu, mix_wgrad.cu, compiled as C++ with
// -DSMLP_CUDA_EMULATION -DSMLP_TEST_HOOKS=1) on CPU threads and compares every output with a
// float64 reference. Prints one line per case and exits non-zero on the first failure. Driven by
// tests/test_cuda_emulation.py; usage: harness [quick|full].
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/launchers.h"
#include "tensor.h"

namespace sc = smlp::cuda;

namespace {

template <typename T>
smlp::DType dtype_code() {
  if constexpr (std::is_same<T, float>::value) return smlp::kFloat32;
  else if constexpr (std::is_same<T, __half>::value) return smlp::kFloat16;
  else return smlp::kBFloat16;
}

template <typename T>
T from_double(double v) {
  if constexpr (std::is_same<T, float>::value) return static_cast<float>(v);
  else if constexpr (std::is_same<T, __half>::value) return __float2half_rn(static_cast<float>(v));
  else return __float2bfloat16_rn(static_cast<float>(v));
}

template <typename T>
double to_double(T v) {
  if constexpr (std::is_same<T, float>::value) return v;
  else if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else return __bfloat162float(v);
}

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same<T, float>::value) return "f32";
  else if constexpr (std::is_same<T, __half>::value) return "f16";
  else return "bf16";
}

std::mt19937_64 rng(1234);

// A strided tensor in host memory with its logical values (row-major over `sizes`).
template <typename T>
struct Tensor {
  std::vector<std::int64_t> sizes, strides;
  std::int64_t offset = 0;
  std::vector<T> storage;
  std::vector<double> logical;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : sizes) n *= s;
    return n;
  }
  std::int64_t at(const std::vector<std::int64_t>& idx) const {
    std::int64_t o = offset;
    for (std::size_t d = 0; d < idx.size(); ++d) o += idx[d] * strides[d];
    return o;
  }
  smlp::TensorRef ref() {
    smlp::TensorRef r;
    r.ptr = reinterpret_cast<std::uintptr_t>(storage.data() + offset);
    r.dtype = dtype_code<T>();
    r.ndim = static_cast<int>(sizes.size());
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      r.sizes[d] = sizes[d];
      r.strides[d] = strides[d];
    }
    return r;
  }
  // Calls f(flat logical index, multi-index) for every element.
  void each(const std::function<void(std::int64_t, const std::vector<std::int64_t>&)>& f) const {
    std::vector<std::int64_t> idx(sizes.size(), 0);
    for (std::int64_t i = 0; i < numel(); ++i) {
      f(i, idx);
      for (int d = static_cast<int>(sizes.size()) - 1; d >= 0; --d) {
        if (++idx[d] < sizes[d]) break;
        idx[d] = 0;
      }
    }
  }
  // Reads the storage back into `logical`.
  void read_back() {
    logical.assign(numel(), 0.0);
    each([&](std::int64_t i, const auto& idx) { logical[i] = to_double(storage[at(idx)]); });
  }
};

// Layouts: "contiguous", "channels_last" (4-D), "sliced" (a strided view of a larger
// buffer), "transposed" (2-D: a view of the transpose), "expanded" (4-D: batch stride 0).
template <typename T>
Tensor<T> make(const std::vector<std::int64_t>& sizes, const std::string& layout, double scale,
               bool fill_random = true) {
  Tensor<T> t;
  t.sizes = sizes;
  const int nd = static_cast<int>(sizes.size());
  t.strides.assign(nd, 0);
  std::int64_t storage_size = 0;
  if (layout == "contiguous" || (layout != "sliced" && nd == 1)) {
    std::int64_t s = 1;
    for (int d = nd - 1; d >= 0; --d) {
      t.strides[d] = s;
      s *= sizes[d];
    }
    storage_size = s;
  } else if (layout == "channels_last") {
    const auto B = sizes[0], C = sizes[1], H = sizes[2], W = sizes[3];
    t.strides = {H * W * C, 1, W * C, C};
    storage_size = B * C * H * W;
  } else if (layout == "sliced") {
    // Every dimension doubled plus one, view at offset 1 with step 2 on the last dim and
    // step 2 on dim 1 (or 0 for 1-D).
    std::vector<std::int64_t> big(sizes);
    for (auto& b : big) b = 2 * b + 1;
    std::int64_t s = 1;
    std::vector<std::int64_t> bs(nd);
    for (int d = nd - 1; d >= 0; --d) {
      bs[d] = s;
      s *= big[d];
    }
    for (int d = 0; d < nd; ++d) t.strides[d] = bs[d] * ((d == nd - 1 || d == 1) ? 2 : 1);
    t.offset = 1;
    storage_size = s;
  } else if (layout == "transposed") {
    t.strides = {1, sizes[0]};
    storage_size = sizes[0] * sizes[1];
  } else if (layout == "expanded") {
    const auto C = sizes[1], H = sizes[2], W = sizes[3];
    t.strides = {0, H * W, W, 1};
    storage_size = C * H * W;
  } else {
    std::fprintf(stderr, "unknown layout %s\n", layout.c_str());
    std::exit(2);
  }
  t.storage.assign(storage_size + t.offset, from_double<T>(std::nan("")));
  t.logical.assign(t.numel(), 0.0);
  if (fill_random) {
    std::normal_distribution<double> normal(0.0, scale);
    t.each([&](std::int64_t i, const auto& idx) {
      const std::int64_t o = t.at(idx);
      // Expanded tensors share storage: the first write wins, later ones read it back.
      if (layout == "expanded" && idx[0] > 0) {
        t.logical[i] = to_double(t.storage[o]);
        return;
      }
      const T v = from_double<T>(normal(rng));
      t.storage[o] = v;
      t.logical[i] = to_double(v);
    });
  }
  return t;
}

int failures = 0;

void report(const std::string& name, double err, double scale, double tol, bool nan_seen) {
  const bool ok = !nan_seen && err <= tol * scale;
  std::printf("%s %-70s err %.3e scale %.3e tol %.1e%s\n", ok ? "PASS" : "FAIL", name.c_str(),
              err, scale, tol, nan_seen ? " (NaN)" : "");
  if (!ok) ++failures;
}

double compare(const std::vector<double>& got, const std::vector<double>& want, bool* nan_seen,
               double* scale) {
  double err = 0.0, s = 0.0;
  *nan_seen = false;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) *nan_seen = true;
    err = std::max(err, std::abs(got[i] - want[i]));
    s = std::max(s, std::abs(want[i]));
  }
  *scale = std::max(s, 1e-30);
  return err;
}

template <typename T>
double tolerance() {
  // fp32: summation order only. fp16/bf16: r, k and the outputs are rounded to T.
  if constexpr (std::is_same<T, float>::value) return 2e-5;
  else if constexpr (std::is_same<T, __half>::value) return 4e-3;
  else return 3e-2;
}

struct Shape {
  std::int64_t B, C, Co, H, W;
};

std::string shape_name(const Shape& s) {
  return "B" + std::to_string(s.B) + "-C" + std::to_string(s.C) + "-Co" + std::to_string(s.Co) +
         "-H" + std::to_string(s.H) + "-W" + std::to_string(s.W);
}

template <typename T>
void set_problem(smlp::Problem& p, const Shape& s) {
  p.dtype = dtype_code<T>();
  p.batch = s.B;
  p.channels = s.C;
  p.height = s.H;
  p.width = s.W;
}

// The fused op's inputs as the binding fills them; absent biases stay absent.
template <typename T>
void set_inputs(smlp::MixInputs& p, const Shape& s, Tensor<T>& x, Tensor<T>& rw, Tensor<T>* rb,
                Tensor<T>& cw, Tensor<T>* cb, Tensor<T>& f_id, Tensor<T>& f_row,
                Tensor<T>& f_col) {
  set_problem<T>(p, s);
  p.out_channels = s.Co;
  p.x = x.ref();
  p.row_weight = rw.ref();
  if (rb != nullptr) p.row_bias = rb->ref();
  p.col_weight = cw.ref();
  if (cb != nullptr) p.col_bias = cb->ref();
  p.f_id = f_id.ref();
  p.f_row = f_row.ref();
  p.f_col = f_col.ref();
}

// r and k of the reference (with biases when given), logical [B][C][H][W].
void mixes(const Shape& s, const std::vector<double>& x, const std::vector<double>& rw,
           const std::vector<double>* rb, const std::vector<double>& cw,
           const std::vector<double>* cb, std::vector<double>& r, std::vector<double>& k) {
  const auto C = s.C, H = s.H, W = s.W;
  r.assign(s.B * C * H * W, 0.0);
  k.assign(s.B * C * H * W, 0.0);
  for (std::int64_t b = 0; b < s.B; ++b)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t w = 0; w < W; ++w) {
          const std::int64_t base = ((b * C + c) * H) * W;
          double rs = rb ? (*rb)[w] : 0.0, ks = cb ? (*cb)[h] : 0.0;
          for (std::int64_t v = 0; v < W; ++v) rs += rw[w * W + v] * x[base + h * W + v];
          for (std::int64_t u = 0; u < H; ++u) ks += cw[h * H + u] * x[base + u * W + w];
          r[base + h * W + w] = rs;
          k[base + h * W + w] = ks;
        }
}

// ---------------------------------------------------------------------------------------
// cuda_mix_fwd, also called the input-gradient way (transposed views, no biases)
// ---------------------------------------------------------------------------------------
template <typename T>
void test_mix_fwd(const Shape& s, const std::string& layout, bool bias, bool weights_t,
                  const std::string& y_layout) {
  const auto B = s.B, C = s.C, Co = s.Co, H = s.H, W = s.W;
  auto x = make<T>({B, C, H, W}, layout, 1.0);
  // With weights_t the kernel receives transposed views: the tensors hold the transposes.
  const std::string wl = weights_t ? "transposed" : "contiguous";
  auto rw = make<T>({W, W}, weights_t ? "transposed" : "sliced", 1.0 / std::sqrt(double(W)));
  auto cw = make<T>({H, H}, wl, 1.0 / std::sqrt(double(H)));
  auto rb = make<T>({W}, "sliced", 1.0);
  auto cb = make<T>({H}, "contiguous", 1.0);
  auto f_id = make<T>({Co, C}, wl, 1.0 / std::sqrt(3.0 * C));
  auto f_row = make<T>({Co, C}, weights_t ? wl : "sliced", 1.0 / std::sqrt(3.0 * C));
  auto f_col = make<T>({Co, C}, wl, 1.0 / std::sqrt(3.0 * C));
  auto y = make<T>({B, Co, H, W}, y_layout, 0.0, false);

  smlp::MixFwdParams p;
  set_inputs(p, s, x, rw, bias ? &rb : nullptr, cw, bias ? &cb : nullptr, f_id, f_row, f_col);
  p.y = y.ref();
  sc::mix_fwd(p, 0);
  y.read_back();

  std::vector<double> r, k;
  mixes(s, x.logical, rw.logical, bias ? &rb.logical : nullptr, cw.logical,
        bias ? &cb.logical : nullptr, r, k);
  std::vector<double> want(B * Co * H * W, 0.0);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t c = 0; c < C; ++c) {
        const double a = f_id.logical[o * C + c], fr = f_row.logical[o * C + c],
                     fc = f_col.logical[o * C + c];
        for (std::int64_t q = 0; q < H * W; ++q) {
          const std::int64_t xi = (b * C + c) * H * W + q;
          want[(b * Co + o) * H * W + q] += a * x.logical[xi] + fr * r[xi] + fc * k[xi];
        }
      }
  bool nan_seen;
  double scale;
  const double err = compare(y.logical, want, &nan_seen, &scale);
  report(std::string("mix_fwd ") + dtype_name<T>() + " " + shape_name(s) + " x:" + layout +
             " y:" + y_layout + (bias ? " bias" : " nobias") + (weights_t ? " weights^T" : ""),
         err, scale, tolerance<T>(), nan_seen);
}

// ---------------------------------------------------------------------------------------
// cuda_mix_wgrad
// ---------------------------------------------------------------------------------------
template <typename T>
void test_mix_wgrad(const Shape& s, const std::string& layout, bool bias, bool deterministic) {
  const auto B = s.B, C = s.C, Co = s.Co, H = s.H, W = s.W;
  auto x = make<T>({B, C, H, W}, layout, 1.0);
  auto g = make<T>({B, Co, H, W}, layout == "expanded" ? "contiguous" : layout, 1.0);
  auto rw = make<T>({W, W}, "transposed", 1.0 / std::sqrt(double(W)));
  auto cw = make<T>({H, H}, "contiguous", 1.0 / std::sqrt(double(H)));
  auto rb = make<T>({W}, "contiguous", 1.0);
  auto cb = make<T>({H}, "sliced", 1.0);
  auto f_id = make<T>({Co, C}, "contiguous", 1.0 / std::sqrt(3.0 * C));
  auto f_row = make<T>({Co, C}, "sliced", 1.0 / std::sqrt(3.0 * C));
  auto f_col = make<T>({Co, C}, "transposed", 1.0 / std::sqrt(3.0 * C));
  auto d_fuse = make<float>({Co, 3 * C}, "sliced", 0.0, false);
  auto d_rw = make<float>({W, W}, "transposed", 0.0, false);
  auto d_rb = make<float>({W}, "sliced", 0.0, false);
  auto d_cw = make<float>({H, H}, "contiguous", 0.0, false);
  auto d_cb = make<float>({H}, "contiguous", 0.0, false);

  smlp::MixWgradParams p;
  set_inputs(p, s, x, rw, bias ? &rb : nullptr, cw, bias ? &cb : nullptr, f_id, f_row, f_col);
  p.deterministic = deterministic;
  p.g = g.ref();
  p.d_fuse = d_fuse.ref();
  p.d_row_weight = d_rw.ref();
  p.d_row_bias = d_rb.ref();
  p.d_col_weight = d_cw.ref();
  p.d_col_bias = d_cb.ref();
  sc::mix_wgrad(p, 0);
  for (auto* t : {&d_fuse, &d_rw, &d_rb, &d_cw, &d_cb}) t->read_back();

  std::vector<double> r, k;
  mixes(s, x.logical, rw.logical, bias ? &rb.logical : nullptr, cw.logical,
        bias ? &cb.logical : nullptr, r, k);
  const std::int64_t HW = H * W;
  std::vector<double> want_fuse(Co * 3 * C, 0.0), want_rw(W * W, 0.0), want_rb(W, 0.0),
      want_cw(H * H, 0.0), want_cb(H, 0.0);
  std::vector<double> gr(C * HW), gk(C * HW);
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t c = 0; c < C; ++c) {
        double sx = 0, sr = 0, sk = 0;
        for (std::int64_t q = 0; q < HW; ++q) {
          const double gv = g.logical[(b * Co + o) * HW + q];
          const std::int64_t xi = (b * C + c) * HW + q;
          sx += gv * x.logical[xi];
          sr += gv * r[xi];
          sk += gv * k[xi];
        }
        want_fuse[o * 3 * C + c] += sx;
        want_fuse[o * 3 * C + C + c] += sr;
        want_fuse[o * 3 * C + 2 * C + c] += sk;
      }
    std::fill(gr.begin(), gr.end(), 0.0);
    std::fill(gk.begin(), gk.end(), 0.0);
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t q = 0; q < HW; ++q) {
          const double gv = g.logical[(b * Co + o) * HW + q];
          gr[c * HW + q] += f_row.logical[o * C + c] * gv;
          gk[c * HW + q] += f_col.logical[o * C + c] * gv;
        }
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t w = 0; w < W; ++w) {
          const double grv = gr[c * HW + h * W + w], gkv = gk[c * HW + h * W + w];
          want_rb[w] += grv;
          want_cb[h] += gkv;
          for (std::int64_t v = 0; v < W; ++v)
            want_rw[w * W + v] += grv * x.logical[(b * C + c) * HW + h * W + v];
          for (std::int64_t u = 0; u < H; ++u)
            want_cw[h * H + u] += gkv * x.logical[(b * C + c) * HW + u * W + w];
        }
  }
  const std::string name = std::string("mix_wgrad ") + dtype_name<T>() + " " + shape_name(s) +
                           " " + layout + (bias ? " bias" : " nobias") +
                           (deterministic ? " det" : " atomic");
  const std::pair<const char*, std::pair<Tensor<float>*, std::vector<double>*>> outs[] = {
      {"d_fuse", {&d_fuse, &want_fuse}}, {"d_row_weight", {&d_rw, &want_rw}},
      {"d_row_bias", {&d_rb, &want_rb}}, {"d_col_weight", {&d_cw, &want_cw}},
      {"d_col_bias", {&d_cb, &want_cb}}};
  for (const auto& [what, pair] : outs) {
    bool nan_seen;
    double scale;
    const double err = compare(pair.first->logical, *pair.second, &nan_seen, &scale);
    report(name + " " + what, err, scale, tolerance<T>(), nan_seen);
  }
}

// ---------------------------------------------------------------------------------------
// cuda_axis_mix_fwd and cuda_axis_mix_wgrad
// ---------------------------------------------------------------------------------------
template <typename T>
void test_axis(const Shape& s, int axis, const std::string& layout, bool bias,
               bool deterministic) {
  const auto B = s.B, C = s.C, H = s.H, W = s.W;
  const std::int64_t n = axis == 3 ? W : H;
  auto x = make<T>({B, C, H, W}, layout, 1.0);
  auto wt = make<T>({n, n}, "transposed", 1.0 / std::sqrt(double(n)));
  auto bs = make<T>({n}, "sliced", 1.0);
  auto y = make<T>({B, C, H, W}, layout == "channels_last" ? "channels_last" : "contiguous", 0.0,
                   false);
  smlp::AxisMixFwdParams p;
  set_problem<T>(p, s);
  p.axis = axis;
  p.x = x.ref();
  p.weight = wt.ref();
  if (bias) p.bias = bs.ref();
  p.y = y.ref();
  sc::axis_mix_fwd(p, 0);
  y.read_back();
  std::vector<double> want(B * C * H * W, 0.0);
  for (std::int64_t bc = 0; bc < B * C; ++bc)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t w = 0; w < W; ++w) {
        double acc = 0;
        if (axis == 3) {
          acc = bias ? bs.logical[w] : 0.0;
          for (std::int64_t v = 0; v < W; ++v)
            acc += wt.logical[w * W + v] * x.logical[(bc * H + h) * W + v];
        } else {
          acc = bias ? bs.logical[h] : 0.0;
          for (std::int64_t u = 0; u < H; ++u)
            acc += wt.logical[h * H + u] * x.logical[(bc * H + u) * W + w];
        }
        want[(bc * H + h) * W + w] = acc;
      }
  bool nan_seen;
  double scale;
  double err = compare(y.logical, want, &nan_seen, &scale);
  const std::string base = std::string(dtype_name<T>()) + " axis" + std::to_string(axis) + " " +
                           shape_name(s) + " " + layout;
  report("axis_mix_fwd " + base + (bias ? " bias" : " nobias"), err, scale, tolerance<T>(),
         nan_seen);

  // Weight gradients with g = a fresh random tensor.
  auto g = make<T>({B, C, H, W}, layout == "expanded" ? "contiguous" : layout, 1.0);
  auto dw = make<float>({n, n}, "sliced", 0.0, false);
  auto db = make<float>({n}, "contiguous", 0.0, false);
  smlp::AxisMixWgradParams q;
  set_problem<T>(q, s);
  q.axis = axis;
  q.deterministic = deterministic;
  q.g = g.ref();
  q.x = x.ref();
  q.d_weight = dw.ref();
  q.d_bias = db.ref();
  sc::axis_mix_wgrad(q, 0);
  dw.read_back();
  db.read_back();
  std::vector<double> want_w(n * n, 0.0), want_b(n, 0.0);
  for (std::int64_t bc = 0; bc < B * C; ++bc)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t w = 0; w < W; ++w) {
        const double gv = g.logical[(bc * H + h) * W + w];
        if (axis == 3) {
          want_b[w] += gv;
          for (std::int64_t v = 0; v < W; ++v)
            want_w[w * W + v] += gv * x.logical[(bc * H + h) * W + v];
        } else {
          want_b[h] += gv;
          for (std::int64_t u = 0; u < H; ++u)
            want_w[h * H + u] += gv * x.logical[(bc * H + u) * W + w];
        }
      }
  const std::string mode = deterministic ? " det" : " atomic";
  err = compare(dw.logical, want_w, &nan_seen, &scale);
  report("axis_mix_wgrad d_weight " + base + mode, err, scale, tolerance<T>(), nan_seen);
  err = compare(db.logical, want_b, &nan_seen, &scale);
  report("axis_mix_wgrad d_bias " + base + mode, err, scale, tolerance<T>(), nan_seen);
}

template <typename T>
void run_all(bool full) {
  // (B, C, C_out, H, W): 7x7 and 57x7 take 8x8 tiles, 13x9, 16x16 and 28x28 16x16 tiles.
  const std::vector<Shape> shapes = {
      {2, 5, 7, 7, 7}, {1, 20, 70, 13, 9}, {1, 3, 2, 1, 1}, {1, 4, 3, 57, 7}, {2, 17, 33, 16, 16}};
  const std::vector<std::string> layouts = {"contiguous", "channels_last", "sliced"};
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto& s = shapes[i];
    const std::string layout = layouts[i % layouts.size()];
    test_mix_fwd<T>(s, layout, i % 2 == 0, false, i % 2 ? "channels_last" : "contiguous");
    test_mix_fwd<T>(s, "contiguous", false, true, "contiguous");
    test_mix_wgrad<T>(s, layout, i % 2 == 1, i % 2 == 0);
    test_axis<T>(s, 3, layout, true, i % 2 == 0);
    test_axis<T>(s, 2, layout, i % 2 == 0, i % 2 == 1);
  }
  test_mix_fwd<T>({3, 2, 3, 5, 6}, "expanded", true, false, "contiguous");
  test_mix_wgrad<T>({3, 2, 3, 5, 6}, "expanded", true, true);
  if (full) {
    test_mix_fwd<T>({1, 18, 20, 28, 28}, "sliced", true, false, "channels_last");
    test_mix_fwd<T>({1, 16, 17, 128, 128}, "contiguous", true, false, "contiguous");
    test_mix_wgrad<T>({1, 16, 17, 37, 128}, "contiguous", true, true);
    test_axis<T>({1, 17, 1, 128, 100}, 2, "channels_last", true, true);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const bool full = argc > 1 && std::string(argv[1]) == "full";
  // Few emulated SMs and a split cap of 2: blocks walk several items, as on big problems.
  smlp_emu::device().sm_count = 2;
  setenv("SMLP_CUDA_MAX_SPLITS", "2", 1);
  run_all<float>(full);
  run_all<__half>(full);
  run_all<__nv_bfloat16>(full);
  // 16x16 tiles that do not fit the device's shared memory fall back to 8x8 tiles: 56x50 in
  // 64 KB, and (full) 128x121 in 163 KB (an A100).
  unsetenv("SMLP_CUDA_MAX_SPLITS");
  smlp_emu::device().max_smem_optin = 64 * 1024;
  test_mix_fwd<__half>({1, 16, 9, 56, 50}, "contiguous", true, false, "contiguous");
  if (full) {
    smlp_emu::device().max_smem_optin = 163 * 1024;
    test_mix_fwd<__nv_bfloat16>({1, 16, 9, 128, 121}, "contiguous", true, true, "contiguous");
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
