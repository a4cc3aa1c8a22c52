// Launchers of the weight gradients: cuda_mix_wgrad (d_fuse, d_row_weight, d_row_bias,
// d_col_weight, d_col_bias) and cuda_axis_mix_wgrad. Kernels: mix_wgrad_kernels.cuh.
//
// Deterministic mode: every block writes its partial sums to its own slot of a stream-ordered
// workspace and sum_slots_kernel adds the slots in a fixed order, so repeated runs are bitwise
// identical. Default mode: the outputs are zeroed and the blocks atomicAdd into them.
#include <algorithm>
#include <string>
#include <type_traits>

#include "cuda/launch_utils.h"
#include "cuda/launchers.h"
#include "cuda/mix_wgrad_kernels.cuh"

namespace smlp::cuda {

// fp16/bf16: 64 x 64 channel blocks, two blocks per SM (128 registers); fp32 (FMA): 64 x 32.
// The spatial kernel keeps up to 8 row/column fragments live across its images (and 4 more
// while it forms gr, gk): one block per SM, 2 would spill.
template <typename T>
using FuseWgradCfg = typename std::conditional<std::is_same<T, float>::value,
                                               FuseWgradConfig<float, 64, 32, 4, 1>,
                                               FuseWgradConfig<T, 64, 64, 2, 2>>::type;
template <typename T, bool kMixGrad>
using SpatialWgradCfg =
    typename std::conditional<std::is_same<T, float>::value,
                              SpatialWgradConfig<float, 32, kMixGrad, 1>,
                              SpatialWgradConfig<T, 64, kMixGrad, 1>>::type;
// The launchers below instantiate each kernel they may launch; tests/test_cuda_ptxas.py
// counts the instances.

namespace {

// A float output with its strides, as (rows, cols) for the zero and slot-sum kernels.
struct Output2d {
  float* data;
  std::int64_t rows, cols, s0, s1;
};

Output2d as_2d(const TensorRef& t) {
  if (t.ndim == 1) return {detail::data<float>(t), t.sizes[0], 1, t.strides[0], 0};
  return {detail::data<float>(t), t.sizes[0], t.sizes[1], t.strides[0], t.strides[1]};
}

unsigned elementwise_grid(std::int64_t n, int device) {
  const std::int64_t blocks = (n + 255) / 256;
  const std::int64_t cap = 8LL * detail::sm_count(device);
  return static_cast<unsigned>(std::max<std::int64_t>(1, std::min(blocks, cap)));
}

void zero_output(const Output2d& o, int device, cudaStream_t stream) {
  detail::launch(fill_zero_kernel, "fill_zero_kernel", elementwise_grid(o.rows * o.cols, device),
                 0, device, stream, o.data, o.rows, o.cols, o.s0, o.s1);
}

void sum_slots(const Output2d& o, const float* ws, std::int64_t slots, int device,
               cudaStream_t stream) {
  detail::launch(sum_slots_kernel, "sum_slots_kernel", elementwise_grid(o.rows * o.cols, device),
                 0, device, stream, o.data, o.rows, o.cols, o.s0, o.s1, ws, slots);
}

// g and x with their strides, in a weight-gradient kernel's arguments.
template <typename T, class Args>
void set_g_x(Args& a, const TensorRef& g, const TensorRef& x) {
  detail::bind(a.g, a.g_s, g);
  detail::bind(a.x, a.x_s, x);
}

// spatial_wgrad_kernel's row-mix outputs (d_rw, d_rb) for rows, else its column-mix outputs
// (d_cw, d_cb).
template <typename T>
void set_outputs(SpatialWgradArgs<T>& s, bool rows, const Output2d& w, const Output2d& b) {
  index_t* w_s = rows ? s.d_rw_s : s.d_cw_s;
  (rows ? s.d_rw : s.d_cw) = w.data;
  w_s[0] = w.s0;
  w_s[1] = w.s1;
  (rows ? s.d_rb : s.d_cb) = b.data;
  (rows ? s.d_rb_s : s.d_cb_s) = b.s0;
}

template <class Cfg>
std::string kernel_name(const char* kernel) {
  return std::string(kernel) + "<" + Num<typename Cfg::T>::kName + ">";
}

// Launch geometry and workspace slots of spatial_wgrad_kernel.
struct SpatialPlan {
  int Hp, Wp, tiles_h, tiles_w, cblocks, splits;
  std::int64_t row_slots, col_slots;
};

template <class Cfg>
SpatialPlan plan_spatial(std::int64_t batch, std::int64_t channels, int H, int W, int device) {
  using S = typename Cfg::Shape;
  SpatialPlan plan{};
  plan.Hp = round_up(H, 32);
  plan.Wp = round_up(W, 32);
  plan.tiles_h = ceil_div(H, S::TH);
  plan.tiles_w = ceil_div(W, S::TW);
  const std::int64_t cblocks = (channels + Cfg::CB - 1) / Cfg::CB;
  if (cblocks * plan.tiles_h * plan.tiles_w > 65536) {
    throw std::invalid_argument("cuda weight gradients: too many channels for one launch");
  }
  plan.cblocks = static_cast<int>(cblocks);
  const std::int64_t blocks = cblocks * plan.tiles_h * plan.tiles_w;
  const std::int64_t want = (4LL * detail::sm_count(device) + blocks - 1) / blocks;
  plan.splits = static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>({detail::max_splits(want), batch, 1024})));
  plan.row_slots = cblocks * plan.tiles_h * plan.splits;
  plan.col_slots = cblocks * plan.tiles_w * plan.splits;
  return plan;
}

template <class Cfg>
void launch_spatial(SpatialWgradArgs<typename Cfg::T> a, const SpatialPlan& plan, int device,
                    cudaStream_t stream) {
  a.Hp = plan.Hp;
  a.Wp = plan.Wp;
  a.tiles_h = plan.tiles_h;
  a.tiles_w = plan.tiles_w;
  a.tiles = plan.tiles_h * plan.tiles_w;
  a.cblocks = plan.cblocks;
  a.splits = plan.splits;
  const std::size_t smem = SpatialWgradSmem<Cfg>(plan.Wp, plan.Hp).bytes;
  const std::int64_t grid = static_cast<std::int64_t>(plan.cblocks) * a.tiles * plan.splits;
  detail::launch(spatial_wgrad_kernel<Cfg>, kernel_name<Cfg>("spatial_wgrad_kernel"),
                 static_cast<unsigned>(grid), smem, device, stream, a);
}

template <typename T>
void run_mix_wgrad(const MixWgradParams& p, cudaStream_t stream) {
  using FCfg = FuseWgradCfg<T>;
  using SCfg = SpatialWgradCfg<T, true>;
  using S = typename FCfg::Shape;
  const int device = detail::current_device();
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  const std::int64_t B = p.batch, C = p.channels, Co = p.out_channels;

  // d_fuse: (BO x CB) blocks times splits over the (image, tile) items.
  FuseWgradArgs<T> f{};
  set_g_x<T>(f, p.g, p.x);
  detail::bind(f.rw, f.rw_s, p.row_weight);
  detail::bind(f.rb, f.rb_s, p.row_bias);
  detail::bind(f.cw, f.cw_s, p.col_weight);
  detail::bind(f.cb, f.cb_s, p.col_bias);
  detail::bind(f.out, f.out_s, p.d_fuse);
  f.B = B;
  f.C = C;
  f.Co = Co;
  f.H = H;
  f.W = W;
  f.Hp = round_up(H, 16);
  f.Wp = round_up(W, 16);
  f.tiles_w = ceil_div(W, S::TW);
  f.tiles = ceil_div(H, S::TH) * f.tiles_w;
  const std::int64_t oblocks = (Co + FCfg::BO - 1) / FCfg::BO;
  const std::int64_t cblocks = (C + FCfg::CB - 1) / FCfg::CB;
  if (oblocks * cblocks > 65536) {
    throw std::invalid_argument("cuda_mix_wgrad: too many channels for one launch");
  }
  f.oblocks = static_cast<int>(oblocks);
  f.cblocks = static_cast<int>(cblocks);
  const std::int64_t items = B * f.tiles;
  const std::int64_t want = (4LL * detail::sm_count(device) + oblocks * cblocks - 1) /
                            (oblocks * cblocks);
  f.splits = static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>({detail::max_splits(want), items, 1024})));

  const SpatialPlan plan = plan_spatial<SCfg>(B, C, H, W, device);
  SpatialWgradArgs<T> s{};
  set_g_x<T>(s, p.g, p.x);
  detail::bind(s.fr, s.fr_s, p.f_row);
  detail::bind(s.fc, s.fc_s, p.f_col);
  s.do_row = 1;
  s.do_col = 1;
  const Output2d d_fuse = as_2d(p.d_fuse), d_rw = as_2d(p.d_row_weight),
                 d_rb = as_2d(p.d_row_bias), d_cw = as_2d(p.d_col_weight),
                 d_cb = as_2d(p.d_col_bias);
  set_outputs(s, true, d_rw, d_rb);
  set_outputs(s, false, d_cw, d_cb);
  s.B = B;
  s.C = C;
  s.Co = Co;
  s.H = H;
  s.W = W;

  const std::size_t fuse_smem = FuseWgradSmem<FCfg>(f.Wp, f.Hp).bytes;
  const std::string fuse_name = kernel_name<FCfg>("fuse_wgrad_kernel");
  const unsigned fuse_grid = static_cast<unsigned>(oblocks * cblocks * f.splits);

  if (p.deterministic) {
    const std::int64_t n_fuse = f.splits * Co * 3 * C;
    const std::int64_t n_rw = plan.row_slots * W * W, n_rb = plan.row_slots * W;
    const std::int64_t n_cw = plan.col_slots * H * H, n_cb = plan.col_slots * H;
    detail::StreamBuffer ws(sizeof(float) * (n_fuse + n_rw + n_rb + n_cw + n_cb), stream);
    f.ws = ws.floats();
    s.ws_rw = f.ws + n_fuse;
    s.ws_rb = s.ws_rw + n_rw;
    s.ws_cw = s.ws_rb + n_rb;
    s.ws_cb = s.ws_cw + n_cw;
    detail::launch(fuse_wgrad_kernel<FCfg>, fuse_name, fuse_grid, fuse_smem, device, stream, f);
    launch_spatial<SCfg>(s, plan, device, stream);
    sum_slots(d_fuse, f.ws, f.splits, device, stream);
    sum_slots(d_rw, s.ws_rw, plan.row_slots, device, stream);
    sum_slots(d_rb, s.ws_rb, plan.row_slots, device, stream);
    sum_slots(d_cw, s.ws_cw, plan.col_slots, device, stream);
    sum_slots(d_cb, s.ws_cb, plan.col_slots, device, stream);
  } else {
    for (const Output2d& o : {d_fuse, d_rw, d_rb, d_cw, d_cb}) zero_output(o, device, stream);
    detail::launch(fuse_wgrad_kernel<FCfg>, fuse_name, fuse_grid, fuse_smem, device, stream, f);
    launch_spatial<SCfg>(s, plan, device, stream);
  }
}

template <typename T>
void run_axis_mix_wgrad(const AxisMixWgradParams& p, cudaStream_t stream) {
  using SCfg = SpatialWgradCfg<T, false>;
  const int device = detail::current_device();
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  const bool rows = p.axis == 3;
  const SpatialPlan plan = plan_spatial<SCfg>(p.batch, p.channels, H, W, device);

  SpatialWgradArgs<T> s{};
  set_g_x<T>(s, p.g, p.x);
  s.do_row = rows ? 1 : 0;
  s.do_col = rows ? 0 : 1;
  const Output2d d_w = as_2d(p.d_weight), d_b = as_2d(p.d_bias);
  set_outputs(s, rows, d_w, d_b);
  s.B = p.batch;
  s.C = p.channels;
  s.Co = p.channels;
  s.H = H;
  s.W = W;

  const std::int64_t n = rows ? W : H;
  const std::int64_t slots = rows ? plan.row_slots : plan.col_slots;
  if (p.deterministic) {
    detail::StreamBuffer ws(sizeof(float) * slots * (n * n + n), stream);
    float* ws_w = ws.floats();
    float* ws_b = ws_w + slots * n * n;
    if (rows) {
      s.ws_rw = ws_w;
      s.ws_rb = ws_b;
    } else {
      s.ws_cw = ws_w;
      s.ws_cb = ws_b;
    }
    launch_spatial<SCfg>(s, plan, device, stream);
    sum_slots(d_w, ws_w, slots, device, stream);
    sum_slots(d_b, ws_b, slots, device, stream);
  } else {
    zero_output(d_w, device, stream);
    zero_output(d_b, device, stream);
    launch_spatial<SCfg>(s, plan, device, stream);
  }
}

}  // namespace

void mix_wgrad(const MixWgradParams& p, std::uintptr_t stream) {
  detail::run_launcher("cuda_mix_wgrad", p.dtype, [&](auto tag) {
    run_mix_wgrad<decltype(tag)>(p, detail::as_stream(stream));
  });
}

void axis_mix_wgrad(const AxisMixWgradParams& p, std::uintptr_t stream) {
  detail::run_launcher("cuda_axis_mix_wgrad", p.dtype, [&](auto tag) {
    run_axis_mix_wgrad<decltype(tag)>(p, detail::as_stream(stream));
  });
}

}  // namespace smlp::cuda
