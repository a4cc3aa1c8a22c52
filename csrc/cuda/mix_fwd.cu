// Launchers of the fused forward (cuda_mix_fwd, also the input gradient) and of the standalone
// row / column mix (cuda_axis_mix_fwd). Kernels: mix_fwd_kernels.cuh.
#include <algorithm>
#include <string>
#include <type_traits>

#include "cuda/launch_utils.h"
#include "cuda/launchers.h"
#include "cuda/mix_fwd_kernels.cuh"

namespace smlp::cuda {

// fp16/bf16: 16x16 tiles (64 output channels per block) when padding to 16 costs at most 1.5x
// the pixels of padding to 8 and the shared memory fits; else 8x8 tiles (128 per block).
// fp32: FMA, 8x8 tiles.
template <typename T>
using MixFwdTile16 = MixFwdConfig<T, 16, 16, 64, 2, 2>;
template <typename T>
using MixFwdTile8 = MixFwdConfig<T, 8, 8, 128, 4, 2>;
using MixFwdF32 = MixFwdConfig<float, 8, 8, 64, 4, 2>;
// The launchers below instantiate each kernel they may launch; tests/test_cuda_ptxas.py
// counts the instances.

namespace {

template <class Cfg>
std::string kernel_name(const char* kernel) {
  using S = typename Cfg::Shape;
  return std::string(kernel) + "<" + Num<typename Cfg::T>::kName + ", " + std::to_string(S::TH) +
         "x" + std::to_string(S::TW) + ">";
}

template <class Cfg>
void launch_mix_fwd(const MixFwdParams& p, int device, cudaStream_t stream) {
  using T = typename Cfg::T;
  using S = typename Cfg::Shape;
  MixFwdArgs<T> a{};
  detail::bind(a.x, a.x_s, p.x);
  detail::bind(a.rw, a.rw_s, p.row_weight);
  detail::bind(a.rb, a.rb_s, p.row_bias);  // null when absent
  detail::bind(a.cw, a.cw_s, p.col_weight);
  detail::bind(a.cb, a.cb_s, p.col_bias);
  const TensorRef* f[3] = {&p.f_id, &p.f_row, &p.f_col};
  for (int s = 0; s < 3; ++s) detail::bind(a.f[s], a.f_s[s], *f[s]);
  detail::bind(a.y, a.y_s, p.y);
  a.C = p.channels;
  a.Co = p.out_channels;
  a.H = static_cast<int>(p.height);
  a.W = static_cast<int>(p.width);
  a.Hp = round_up(a.H, 16);
  a.Wp = round_up(a.W, 16);
  a.tiles_w = ceil_div(a.W, S::TW);
  a.tiles = ceil_div(a.H, S::TH) * a.tiles_w;
  const std::int64_t oblocks = (p.out_channels + Cfg::BO - 1) / Cfg::BO;
  const std::int64_t per_image = oblocks * a.tiles;
  const std::int64_t chunk = detail::batches_per_launch(per_image, "cuda_mix_fwd");
  a.oblocks = static_cast<int>(oblocks);
  const std::size_t smem = MixFwdSmem<Cfg>(a.Wp, a.Hp).bytes;
  const std::string name = kernel_name<Cfg>("mix_fwd_kernel");
  for (std::int64_t b0 = 0; b0 < p.batch; b0 += chunk) {
    a.b_begin = b0;
    const std::int64_t images = std::min(chunk, p.batch - b0);
    detail::launch(mix_fwd_kernel<Cfg>, name, static_cast<unsigned>(images * per_image), smem,
                   device, stream, a);
  }
}

template <typename T>
void run_mix_fwd(const MixFwdParams& p, cudaStream_t stream) {
  const int device = detail::current_device();
  if constexpr (std::is_same<T, float>::value) {
    launch_mix_fwd<MixFwdF32>(p, device, stream);
  } else {
    const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
    const long area16 = static_cast<long>(round_up(H, 16)) * round_up(W, 16);
    const long area8 = static_cast<long>(round_up(H, 8)) * round_up(W, 8);
    const std::size_t smem16 = MixFwdSmem<MixFwdTile16<T>>(round_up(W, 16), round_up(H, 16)).bytes;
    if (2 * area16 <= 3 * area8 && smem16 <= detail::max_dynamic_smem(device)) {
      launch_mix_fwd<MixFwdTile16<T>>(p, device, stream);
    } else {
      launch_mix_fwd<MixFwdTile8<T>>(p, device, stream);
    }
  }
}

template <typename T>
void run_axis_mix_fwd(const AxisMixFwdParams& p, cudaStream_t stream) {
  using Cfg = AxisMixFwdConfig<T>;
  using S = typename Cfg::Shape;
  const int device = detail::current_device();
  AxisMixFwdArgs<T> a{};
  detail::bind(a.x, a.x_s, p.x);
  detail::bind(a.wt, a.wt_s, p.weight);
  detail::bind(a.bias, a.bias_s, p.bias);
  detail::bind(a.y, a.y_s, p.y);
  a.C = p.channels;
  a.H = static_cast<int>(p.height);
  a.W = static_cast<int>(p.width);
  a.Hp = round_up(a.H, 16);
  a.Wp = round_up(a.W, 16);
  a.axis = p.axis;
  a.tiles_w = ceil_div(a.W, S::TW);
  a.tiles = ceil_div(a.H, S::TH) * a.tiles_w;
  a.cchunks = (p.channels + S::CC - 1) / S::CC;
  const std::int64_t per_image = a.cchunks * a.tiles;
  const std::int64_t chunk = detail::batches_per_launch(per_image, "cuda_axis_mix_fwd");
  const std::size_t smem = AxisMixFwdSmem<Cfg>(a.Wp, a.Hp, a.axis).bytes;
  const std::string name = kernel_name<Cfg>("axis_mix_fwd_kernel");
  for (std::int64_t b0 = 0; b0 < p.batch; b0 += chunk) {
    a.b_begin = b0;
    const std::int64_t images = std::min(chunk, p.batch - b0);
    detail::launch(axis_mix_fwd_kernel<Cfg>, name, static_cast<unsigned>(images * per_image),
                   smem, device, stream, a);
  }
}

}  // namespace

void mix_fwd(const MixFwdParams& p, std::uintptr_t stream) {
  detail::run_launcher("cuda_mix_fwd", p.dtype, [&](auto tag) {
    run_mix_fwd<decltype(tag)>(p, detail::as_stream(stream));
  });
}

void axis_mix_fwd(const AxisMixFwdParams& p, std::uintptr_t stream) {
  detail::run_launcher("cuda_axis_mix_fwd", p.dtype, [&](auto tag) {
    run_axis_mix_fwd<decltype(tag)>(p, detail::as_stream(stream));
  });
}

}  // namespace smlp::cuda
