// The CPU kernels' typed views of the launchers' params (csrc/tensor.h): a TensorRef becomes
// a View<T, N>, a typed pointer with N sizes and strides in elements. An absent optional
// tensor has data == nullptr. The views of one launch are typed by the storage type S of x
// (float, double, bf16 or f16, cpu/storage.h); weight gradients are in the compute type
// Compute<S> (float, or double for float64).
#pragma once

#include "cpu/storage.h"

namespace smlp::cpu::SMLP_CPU_ISA {

template <typename T, int N>
struct View {
  T* data = nullptr;
  int64_t size[N] = {};
  int64_t stride[N] = {};

  View() = default;
  explicit View(const TensorRef& t) : data(reinterpret_cast<T*>(t.ptr)) {
    for (int d = 0; d < N; ++d) {
      size[d] = t.sizes[d];
      stride[d] = t.strides[d];
    }
  }
};

template <typename T>
struct MixInputViews {
  View<const T, 4> x;           // (B, C, H, W)
  View<const T, 2> row_weight;  // (W, W)
  View<const T, 1> row_bias;    // (W,) or absent
  View<const T, 2> col_weight;  // (H, H)
  View<const T, 1> col_bias;    // (H,) or absent
  View<const T, 2> f_id;        // (C_out, C)
  View<const T, 2> f_row;       // (C_out, C)
  View<const T, 2> f_col;       // (C_out, C)

  explicit MixInputViews(const MixInputs& p)
      : x(p.x), row_weight(p.row_weight), row_bias(p.row_bias), col_weight(p.col_weight),
        col_bias(p.col_bias), f_id(p.f_id), f_row(p.f_row), f_col(p.f_col) {}
};

template <typename T>
struct MixFwdViews : MixInputViews<T> {
  View<T, 4> y;                     // (B, C_out, H, W), overwritten
  View<const Compute<T>, 1> scale;  // (C,): the prologue's, or absent
  View<const Compute<T>, 1> shift;  // (C,)

  explicit MixFwdViews(const MixFwdParams& p)
      : MixInputViews<T>(p), y(p.y), scale(p.scale), shift(p.shift) {}
};

template <typename T>
struct MixWgradViews : MixInputViews<T> {
  using C = Compute<T>;
  View<const T, 4> g;       // (B, C_out, H, W)
  View<T, 4> dx;            // (B, C, H, W), overwritten; absent: not wanted
  View<C, 2> d_fuse;        // (C_out, 3C), overwritten
  View<C, 2> d_row_weight;  // (W, W)
  View<C, 1> d_row_bias;    // (W,)
  View<C, 2> d_col_weight;  // (H, H)
  View<C, 1> d_col_bias;    // (H,)

  explicit MixWgradViews(const MixWgradParams& p)
      : MixInputViews<T>(p), g(p.g), dx(p.dx), d_fuse(p.d_fuse), d_row_weight(p.d_row_weight),
        d_row_bias(p.d_row_bias), d_col_weight(p.d_col_weight), d_col_bias(p.d_col_bias) {}
};

template <typename T>
struct AxisMixFwdViews {
  View<const T, 4> x;       // (B, C, H, W)
  View<const T, 2> weight;  // (W, W) for axis 3, (H, H) for axis 2
  View<const T, 1> bias;    // or absent
  View<T, 4> y;             // (B, C, H, W), overwritten
  int axis;                 // 3: mix along W (row mix), 2: along H (column mix)

  explicit AxisMixFwdViews(const AxisMixFwdParams& p)
      : x(p.x), weight(p.weight), bias(p.bias), y(p.y), axis(p.axis) {}
};

template <typename T>
struct AxisMixWgradViews {
  View<const T, 4> g;             // (B, C, H, W)
  View<const T, 4> x;             // (B, C, H, W)
  View<Compute<T>, 2> d_weight;  // overwritten
  View<Compute<T>, 1> d_bias;    // overwritten
  int axis;

  explicit AxisMixWgradViews(const AxisMixWgradParams& p)
      : g(p.g), x(p.x), d_weight(p.d_weight), d_bias(p.d_bias), axis(p.axis) {}
};

// Runs kernel(Views<S>(params)) for the storage type S of the launch's dtype.
template <template <typename> class Views, typename Params, typename Kernel>
void run_typed(const Params& params, Kernel kernel) {
  switch (params.dtype) {
    case kFloat64:
      kernel(Views<double>(params));
      break;
    case kBFloat16:
      kernel(Views<bf16>(params));
      break;
    case kFloat16:
      kernel(Views<f16>(params));
      break;
    default:
      kernel(Views<float>(params));
      break;
  }
}

}  // namespace smlp::cpu::SMLP_CPU_ISA
