// The fused forward y = F_id x + F_row r + F_col k (r, k: row and column mix with biases)
// and the standalone row / column mix. Launchers: mix_fwd.cu.
//
// Fused forward: one block per (pixel tile, block of BO output channels, batch image). For each
// chunk of CC input channels it stages the tile's cross (tiles.cuh), forms the three [CC][P]
// operand tiles x, r, k in shared memory (r and k by tensor-core MMAs) and accumulates
//   acc[o][p] += F_id[o][c] x[c][p] + F_row[o][c] r[c][p] + F_col[o][c] k[c][p]
// in fp32 fragments that live in registers for the whole channel loop. x is read from global
// memory once per chunk per block (its cross: the tile's rows and columns; the rest comes from
// L2), y is written once, and r, k never leave shared memory.
//
// The input gradient is this kernel on g with transposed weight views and no biases, so every
// argument is read through its own int64 strides.
#pragma once

#include "cuda/tiles.cuh"

namespace smlp::cuda {

template <typename T>
struct MixFwdArgs {
  const T* x;
  index_t x_s[4];
  const T* rw;
  index_t rw_s[2];
  const T* rb;  // null: no row bias
  index_t rb_s;
  const T* cw;
  index_t cw_s[2];
  const T* cb;  // null: no column bias
  index_t cb_s;
  const T* f[3];  // F_id, F_row, F_col: (C_out, C) views
  index_t f_s[3][2];
  T* y;
  index_t y_s[4];
  index_t C, Co;
  int H, W, Hp, Wp;  // Hp, Wp: H, W rounded up to 16
  int tiles_w, tiles, oblocks;
  index_t b_begin;  // first batch image of this launch (grids are split past 2^31 blocks)
};

// TH x TW pixel tile, BO output channels per block, warps arranged WO (channels) x WP (pixels);
// kMinBlocks blocks per SM for __launch_bounds__ (2 caps registers at 128).
template <typename T_, int TH_, int TW_, int BO_, int WO_, int kMinBlocks_>
struct MixFwdConfig {
  using T = T_;
  static constexpr int kMinBlocks = kMinBlocks_;
  using Shape = TileShape<T_, TH_, TW_, (mma_k<T_>() == 16 ? 16 : 8)>;
  static constexpr int BO = BO_;
  static constexpr int WO = WO_, WP = kWarps / WO_;
  static constexpr int FO = BO_ / 16 / WO_;        // 16-row output fragments per warp
  static constexpr int FP = Shape::P / 16 / WP;    // 16-pixel fragments per warp
  static_assert(FO * 16 * WO == BO_ && FP * 16 * WP == Shape::P, "warps tile the block");
};

template <class Cfg>
struct MixFwdSmem {
  std::size_t xr, xc, t, fs, rwt, cws, rbias, cbias, scratch, bytes;
  __host__ __device__ MixFwdSmem(int Wp, int Hp) {
    using S = typename Cfg::Shape;
    using T = typename Cfg::T;
    SmemCarver c;
    xr = c.take<T>(static_cast<std::size_t>(S::CC) * S::TH * Wp);
    xc = c.take<T>(static_cast<std::size_t>(Hp) * S::CC * S::TW);
    t = c.take<T>(3 * S::CC * S::P);      // [3][CC][P]: x, r, k
    fs = c.take<T>(3 * Cfg::BO * S::CC);  // [3][BO][CC]: F_id, F_row, F_col chunk
    rwt = c.take<T>(static_cast<std::size_t>(Wp) * S::TW);
    cws = c.take<T>(static_cast<std::size_t>(S::TH) * Hp);
    rbias = c.take<float>(S::TW);
    cbias = c.take<float>(S::TH);
    scratch = c.take<float>(kWarps * 256);
    bytes = c.bytes;
  }
};

// fs[(s*BO + o)*CC + c] = F_s[o0+o][c0+c], zero outside (C_out, C).
template <class Cfg>
__device__ void load_fuse_chunk(typename Cfg::T* __restrict__ fs,
                                const MixFwdArgs<typename Cfg::T>& a, index_t o0, index_t c0) {
  using T = typename Cfg::T;
  constexpr int BO = Cfg::BO, CC = Cfg::Shape::CC;
  static_assert((BO & (BO - 1)) == 0 && (CC & (CC - 1)) == 0, "powers of two");
  constexpr int kLogBO = __builtin_ctz(BO), kLogCC = __builtin_ctz(CC);
#pragma unroll
  for (int s = 0; s < 3; ++s) {
    const T* __restrict__ f = a.f[s];
    const index_t so = a.f_s[s][0], sc = a.f_s[s][1];
    // Consecutive threads walk c, or o for transposed views (the input gradient). Shifts
    // rather than two index sequences: fewer live registers in the channel loop.
    const int fast_log = sc <= so ? kLogCC : kLogBO;
    for (int e = threadIdx.x; e < BO * CC; e += kThreads) {
      const int fast = e & ((1 << fast_log) - 1), slow = e >> fast_log;
      const int o = fast_log == kLogCC ? slow : fast;
      const int c = fast_log == kLogCC ? fast : slow;
      const index_t go = o0 + o, gc = c0 + c;
      T val = Num<T>::zero();
      if (go < a.Co && gc < a.C) val = f[go * so + gc * sc];
      fs[(s * BO + o) * CC + c] = val;
    }
  }
}

template <class Cfg>
__global__ void __launch_bounds__(kThreads, Cfg::kMinBlocks)
    mix_fwd_kernel(const MixFwdArgs<typename Cfg::T> a) {
  using T = typename Cfg::T;
  using S = typename Cfg::Shape;
  using Mma = WarpMma<T, 16, 16, S::KS>;
  SMLP_DYNAMIC_SMEM(smem);
  const MixFwdSmem<Cfg> L(a.Wp, a.Hp);
  const CrossSmem<S> sm = cross_smem<S>(smem, L);
  T* tiles = smem_at<T>(smem, L.t);
  T* fs = smem_at<T>(smem, L.fs);

  const index_t block = blockIdx.x;
  const int tile = static_cast<int>(block % a.tiles);
  const index_t rest = block / a.tiles;
  const index_t o0 = (rest % a.oblocks) * Cfg::BO;
  const index_t b = a.b_begin + rest / a.oblocks;
  const TileGeometry g{a.H, a.W, a.Hp, a.Wp, (tile / a.tiles_w) * S::TH,
                       (tile % a.tiles_w) * S::TW};

  load_row_weight<S>(sm, g, a.rw, a.rw_s[0], a.rw_s[1], a.rb, a.rb_s);
  load_col_weight<S>(sm, g, a.cw, a.cw_s[0], a.cw_s[1], a.cb, a.cb_s);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wo = warp % Cfg::WO, wp = warp / Cfg::WO;
  typename Mma::Acc acc[Cfg::FO][Cfg::FP];
#pragma unroll
  for (int i = 0; i < Cfg::FO; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::FP; ++j) Mma::zero(acc[i][j]);

  const T* xb = a.x + b * a.x_s[0];
  for (index_t c0 = 0; c0 < a.C; c0 += S::CC) {
    load_fuse_chunk<Cfg>(fs, a, o0, c0);
    load_rows<S>(sm, tiles, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
    load_cols<S>(sm, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
    __syncthreads();
    row_mix<S>(sm, g, tiles + S::CC * S::P);
    col_mix<S>(sm, g, tiles + 2 * S::CC * S::P);
    __syncthreads();
#pragma unroll
    for (int s = 0; s < 3; ++s) {
#pragma unroll
      for (int k = 0; k < S::CC; k += S::KS) {
        typename Mma::template A<RowMajor> fa[Cfg::FO];
#pragma unroll
        for (int i = 0; i < Cfg::FO; ++i)
          Mma::load(fa[i], fs + (s * Cfg::BO + (wo * Cfg::FO + i) * 16) * S::CC + k, S::CC);
#pragma unroll
        for (int j = 0; j < Cfg::FP; ++j) {
          typename Mma::template B<RowMajor> xf;
          Mma::load(xf, tiles + (s * S::CC + k) * S::P + (wp * Cfg::FP + j) * 16, S::P);
#pragma unroll
          for (int i = 0; i < Cfg::FO; ++i) Mma::mma(acc[i][j], fa[i], xf);
        }
      }
    }
    __syncthreads();  // the next chunk overwrites every staged tile
  }

  // Epilogue: fragment -> warp scratch -> y, with consecutive lanes on y's smallest stride.
  float* scr = sm.scratch + warp * 256;
  T* yb = a.y + b * a.y_s[0];
  const bool channels_fast = a.y_s[1] < a.y_s[3];
#pragma unroll
  for (int i = 0; i < Cfg::FO; ++i) {
#pragma unroll
    for (int j = 0; j < Cfg::FP; ++j) {
      Mma::store(scr, 16, acc[i][j]);
      __syncwarp();
      const index_t ob = o0 + (wo * Cfg::FO + i) * 16;
      const int pb = (wp * Cfg::FP + j) * 16;
      for (int e = lane; e < 256; e += 32) {
        const int r = channels_fast ? e % 16 : e / 16;  // output channel in the fragment
        const int q = channels_fast ? e / 16 : e % 16;  // pixel in the fragment
        const index_t o = ob + r;
        const int p = pb + q;
        const int h = g.h0 + p / S::TW, w = g.w0 + p % S::TW;
        if (o < a.Co && h < a.H && w < a.W)
          yb[o * a.y_s[1] + h * a.y_s[2] + w * a.y_s[3]] = Num<T>::from_float(scr[r * 16 + q]);
      }
      __syncwarp();
    }
  }
}

// ---------------------------------------------------------------------------------------
// Standalone row mix (axis 3) or column mix (axis 2): y = mix(x) + bias, one block per
// (pixel tile, chunk of CC channels, batch image). Its input gradient is the same kernel with
// the transposed weight and no bias.
// ---------------------------------------------------------------------------------------
template <typename T>
struct AxisMixFwdArgs {
  const T* x;
  index_t x_s[4];
  const T* wt;  // (N, N), N = W for axis 3, H for axis 2
  index_t wt_s[2];
  const T* bias;  // null: none
  index_t bias_s;
  T* y;
  index_t y_s[4];
  index_t C;
  int H, W, Hp, Wp, axis;
  int tiles_w, tiles;
  index_t cchunks, b_begin;
};

template <typename T_>
struct AxisMixFwdConfig {
  using T = T_;
  using Shape = TileShape<T_, 8, 8, (mma_k<T_>() == 16 ? 16 : 8)>;
};

template <class Cfg>
struct AxisMixFwdSmem {
  std::size_t xr, xc, t, rwt, cws, rbias, cbias, scratch, bytes;
  // Only the staging the axis needs is sized; the other pieces get no bytes.
  __host__ __device__ AxisMixFwdSmem(int Wp, int Hp, int axis) {
    using S = typename Cfg::Shape;
    using T = typename Cfg::T;
    const bool rows = axis == 3;
    SmemCarver c;
    xr = c.take<T>(rows ? static_cast<std::size_t>(S::CC) * S::TH * Wp : 0);
    xc = c.take<T>(rows ? 0 : static_cast<std::size_t>(Hp) * S::CC * S::TW);
    t = c.take<T>(S::CC * S::P);
    rwt = c.take<T>(rows ? static_cast<std::size_t>(Wp) * S::TW : 0);
    cws = c.take<T>(rows ? 0 : static_cast<std::size_t>(S::TH) * Hp);
    rbias = c.take<float>(S::TW);
    cbias = c.take<float>(S::TH);
    scratch = c.take<float>(kWarps * 256);
    bytes = c.bytes;
  }
};

template <class Cfg>
__global__ void __launch_bounds__(kThreads)
    axis_mix_fwd_kernel(const AxisMixFwdArgs<typename Cfg::T> a) {
  using T = typename Cfg::T;
  using S = typename Cfg::Shape;
  SMLP_DYNAMIC_SMEM(smem);
  const AxisMixFwdSmem<Cfg> L(a.Wp, a.Hp, a.axis);
  const CrossSmem<S> sm = cross_smem<S>(smem, L);
  T* out = smem_at<T>(smem, L.t);

  const index_t block = blockIdx.x;
  const int tile = static_cast<int>(block % a.tiles);
  const index_t rest = block / a.tiles;
  const index_t c0 = (rest % a.cchunks) * S::CC;
  const index_t b = a.b_begin + rest / a.cchunks;
  const TileGeometry g{a.H, a.W, a.Hp, a.Wp, (tile / a.tiles_w) * S::TH,
                       (tile % a.tiles_w) * S::TW};
  const T* xb = a.x + b * a.x_s[0];

  if (a.axis == 3) {
    load_row_weight<S>(sm, g, a.wt, a.wt_s[0], a.wt_s[1], a.bias, a.bias_s);
    load_rows<S>(sm, nullptr, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
    __syncthreads();
    row_mix<S>(sm, g, out);
  } else {
    load_col_weight<S>(sm, g, a.wt, a.wt_s[0], a.wt_s[1], a.bias, a.bias_s);
    load_cols<S>(sm, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
    __syncthreads();
    col_mix<S>(sm, g, out);
  }
  __syncthreads();

  T* yb = a.y + b * a.y_s[0];
  const bool channels_fast = a.y_s[1] < a.y_s[3];
  for (int e = threadIdx.x; e < S::CC * S::P; e += kThreads) {
    int c, p;
    if (channels_fast) {
      c = e % S::CC;
      p = e / S::CC;
    } else {
      p = e % S::P;
      c = e / S::P;
    }
    const index_t gc = c0 + c;
    const int h = g.h0 + p / S::TW, w = g.w0 + p % S::TW;
    if (gc < a.C && h < a.H && w < a.W)
      yb[gc * a.y_s[1] + h * a.y_s[2] + w * a.y_s[3]] = out[c * S::P + p];
  }
}

}  // namespace smlp::cuda
