// Weight gradients: fused reductions over B*H*W with r and k recomputed. Launchers:
// mix_wgrad.cu.
//
// fuse_wgrad_kernel: d_fuse[o][s*C + c] = sum_{b,h,w} g[b,o,h,w] t_s[b,c,h,w] for t = x, r, k.
//   One block per (BO output channels, CB input channels, split); a split walks its share of
//   the (batch image, 8x8 pixel tile) items in a fixed order. Per item: g's tile as the A
//   operand [o][p], and x, r, k of CB channels built by the cross of tiles.cuh as the B
//   operand [c][p] (K = pixels).
//
// spatial_wgrad_kernel: the row- and column-weight gradients and the bias gradients,
//   d_row_weight[w][v] = sum_{b,c,h} gr[b,c,h,w] x[b,c,h,v],  d_row_bias[w] = sum gr[...,w]
//   d_col_weight[h][u] = sum_{b,c,w} gk[b,c,h,w] x[b,c,u,w],  d_col_bias[h] = sum gk[..,h,:]
//   with gr = F_row^T g, gk = F_col^T g computed per tile by MMAs over all output channels
//   (kMixGrad) or gr = gk = g (the standalone row / column mix). One block per (CB channels,
//   8x8 tile, batch split): it owns rows [w0, w0+8) of d_row_weight and rows [h0, h0+8) of
//   d_col_weight, keeps them in fragments across its batch images (each warp one K step of
//   every chunk) and adds the warps' partials in a fixed order at the end.
//
// Partial sums go either to their own workspace slot, summed in a fixed order by
// sum_slots_kernel (deterministic), or straight into the zeroed outputs with atomicAdd.
#pragma once

#include "cuda/tiles.cuh"

namespace smlp::cuda {

// ---------------------------------------------------------------------------------------
// d_fuse
// ---------------------------------------------------------------------------------------
template <typename T>
struct FuseWgradArgs {
  const T* g;
  index_t g_s[4];
  const T* x;
  index_t x_s[4];
  const T* rw;
  index_t rw_s[2];
  const T* rb;
  index_t rb_s;
  const T* cw;
  index_t cw_s[2];
  const T* cb;
  index_t cb_s;
  float* out;  // d_fuse (C_out, 3C) with strides out_s: atomicAdd (when ws is null)
  index_t out_s[2];
  float* ws;  // [splits][C_out][3C]: one slot per split (deterministic)
  index_t B, C, Co;
  int H, W, Hp, Wp, tiles_w, tiles;
  int oblocks, cblocks, splits;
};

// 8x8 pixel tiles, CC channels per chunk, BO x CB block, warps WO (o) x WN (3*CB columns),
// kMinBlocks blocks per SM for __launch_bounds__.
template <typename T_, int BO_, int CB_, int WO_, int kMinBlocks_>
struct FuseWgradConfig {
  using T = T_;
  static constexpr int kMinBlocks = kMinBlocks_;
  using Shape = TileShape<T_, 8, 8, (mma_k<T_>() == 16 ? 16 : 8)>;
  static constexpr int BO = BO_, CB = CB_;
  static constexpr int WO = WO_, WN = kWarps / WO_;
  static constexpr int FO = BO_ / 16 / WO_;
  static constexpr int FN = 3 * CB_ / 16 / WN;
  static_assert(FO * 16 * WO == BO_ && FN * 16 * WN == 3 * CB_, "warps tile the block");
  static_assert(CB_ % Shape::CC == 0, "whole chunks per channel block");
};

template <class Cfg>
struct FuseWgradSmem {
  std::size_t gt, t, xr, xc, rwt, cws, rbias, cbias, scratch, bytes;
  __host__ __device__ FuseWgradSmem(int Wp, int Hp) {
    using S = typename Cfg::Shape;
    using T = typename Cfg::T;
    SmemCarver c;
    gt = c.take<T>(Cfg::BO * S::P);     // [BO][P]
    t = c.take<T>(3 * Cfg::CB * S::P);  // [3][CB][P]: x, r, k
    xr = c.take<T>(static_cast<std::size_t>(S::CC) * S::TH * Wp);
    xc = c.take<T>(static_cast<std::size_t>(Hp) * S::CC * S::TW);
    rwt = c.take<T>(static_cast<std::size_t>(Wp) * S::TW);
    cws = c.take<T>(static_cast<std::size_t>(S::TH) * Hp);
    rbias = c.take<float>(S::TW);
    cbias = c.take<float>(S::TH);
    scratch = c.take<float>(kWarps * 256);
    bytes = c.bytes;
  }
};

// dst[n*P + p] = src[n0+n][h0 + p/TW][w0 + p%TW] for n < N (zero outside): a [N][P] tile of a
// (batch-offset) image with strides sn, sh, sw.
template <class S, int N>
__device__ void load_pixel_tile(typename S::T* __restrict__ dst, const TileGeometry& g,
                                const typename S::T* __restrict__ src, index_t sn, index_t sh,
                                index_t sw, index_t n0, index_t count) {
  using T = typename S::T;
  const bool n_fast = sn < sw;
  for (int e = threadIdx.x; e < N * S::P; e += kThreads) {
    int n, p;
    if (n_fast) {
      n = e % N;
      p = e / N;
    } else {
      p = e % S::P;
      n = e / S::P;
    }
    const index_t gn = n0 + n;
    const int h = g.h0 + p / S::TW, w = g.w0 + p % S::TW;
    T val = Num<T>::zero();
    if (gn < count && h < g.H && w < g.W) val = src[gn * sn + h * sh + w * sw];
    dst[n * S::P + p] = val;
  }
}

template <class Cfg>
__global__ void __launch_bounds__(kThreads, Cfg::kMinBlocks)
    fuse_wgrad_kernel(const FuseWgradArgs<typename Cfg::T> a) {
  using T = typename Cfg::T;
  using S = typename Cfg::Shape;
  using Mma = WarpMma<T, 16, 16, S::KS>;
  SMLP_DYNAMIC_SMEM(smem);
  const FuseWgradSmem<Cfg> L(a.Wp, a.Hp);
  const CrossSmem<S> sm = cross_smem<S>(smem, L);
  T* gt = smem_at<T>(smem, L.gt);
  T* t = smem_at<T>(smem, L.t);

  const int block = static_cast<int>(blockIdx.x);
  const int ob = block % a.oblocks;
  const int cblk = (block / a.oblocks) % a.cblocks;
  const int split = block / (a.oblocks * a.cblocks);
  const index_t o0 = static_cast<index_t>(ob) * Cfg::BO;
  const index_t cbase = static_cast<index_t>(cblk) * Cfg::CB;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wo = warp % Cfg::WO, wn = warp / Cfg::WO;
  typename Mma::Acc acc[Cfg::FO][Cfg::FN];
#pragma unroll
  for (int i = 0; i < Cfg::FO; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::FN; ++j) Mma::zero(acc[i][j]);

  const index_t items = a.B * a.tiles;
  for (index_t item = split; item < items; item += a.splits) {
    const index_t b = item / a.tiles;
    const int tile = static_cast<int>(item % a.tiles);
    const TileGeometry g{a.H, a.W, a.Hp, a.Wp, (tile / a.tiles_w) * S::TH,
                         (tile % a.tiles_w) * S::TW};
    const T* xb = a.x + b * a.x_s[0];
    __syncthreads();  // the previous item's MMAs are done with every staged tile
    load_pixel_tile<S, Cfg::BO>(gt, g, a.g + b * a.g_s[0], a.g_s[1], a.g_s[2], a.g_s[3], o0,
                                a.Co);
    load_row_weight<S>(sm, g, a.rw, a.rw_s[0], a.rw_s[1], a.rb, a.rb_s);
    load_col_weight<S>(sm, g, a.cw, a.cw_s[0], a.cw_s[1], a.cb, a.cb_s);
    for (int j = 0; j < Cfg::CB / S::CC; ++j) {
      const index_t c0 = cbase + j * S::CC;
      load_rows<S>(sm, t + j * S::CC * S::P, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
      load_cols<S>(sm, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
      __syncthreads();
      row_mix<S>(sm, g, t + (Cfg::CB + j * S::CC) * S::P);
      col_mix<S>(sm, g, t + (2 * Cfg::CB + j * S::CC) * S::P);
      __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < S::P; k += S::KS) {
      typename Mma::template A<RowMajor> ga[Cfg::FO];
#pragma unroll
      for (int i = 0; i < Cfg::FO; ++i)
        Mma::load(ga[i], gt + (wo * Cfg::FO + i) * 16 * S::P + k, S::P);
#pragma unroll
      for (int j = 0; j < Cfg::FN; ++j) {
        typename Mma::template B<ColMajor> tb;  // (k = pixel, n = channel of x | r | k)
        Mma::load(tb, t + (wn * Cfg::FN + j) * 16 * S::P + k, S::P);
#pragma unroll
        for (int i = 0; i < Cfg::FO; ++i) Mma::mma(acc[i][j], ga[i], tb);
      }
    }
  }

  float* scr = sm.scratch + warp * 256;
  const index_t cols = 3 * a.C;
#pragma unroll
  for (int i = 0; i < Cfg::FO; ++i) {
#pragma unroll
    for (int j = 0; j < Cfg::FN; ++j) {
      Mma::store(scr, 16, acc[i][j]);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const index_t o = o0 + (wo * Cfg::FO + i) * 16 + e / 16;
        const int n = (wn * Cfg::FN + j) * 16 + e % 16;  // column of [x | r | k] in the block
        const index_t c = cbase + n % Cfg::CB;
        if (o < a.Co && c < a.C) {
          const index_t col = (n / Cfg::CB) * a.C + c;
          if (a.ws != nullptr)
            a.ws[(static_cast<index_t>(split) * a.Co + o) * cols + col] = scr[e];
          else
            atomicAdd(a.out + o * a.out_s[0] + col * a.out_s[1], scr[e]);
        }
      }
      __syncwarp();
    }
  }
}

// ---------------------------------------------------------------------------------------
// d_row_weight, d_row_bias, d_col_weight, d_col_bias
// ---------------------------------------------------------------------------------------
template <typename T>
struct SpatialWgradArgs {
  const T* g;  // (B, C_out, H, W) with kMixGrad, else (B, C, H, W)
  index_t g_s[4];
  const T* x;
  index_t x_s[4];
  const T* fr;  // F_row (C_out, C), kMixGrad only
  index_t fr_s[2];
  const T* fc;  // F_col
  index_t fc_s[2];
  int do_row, do_col;
  // atomicAdd targets (when the workspace pointers are null)
  float* d_rw;
  index_t d_rw_s[2];
  float* d_rb;
  index_t d_rb_s;
  float* d_cw;
  index_t d_cw_s[2];
  float* d_cb;
  index_t d_cb_s;
  // deterministic: ws_rw [row_slots][W][W], ws_rb [row_slots][W], ws_cw [col_slots][H][H],
  // ws_cb [col_slots][H]; row slot (cblk, tile row, split), column slot (cblk, tile col, split)
  float* ws_rw;
  float* ws_rb;
  float* ws_cw;
  float* ws_cb;
  index_t B, C, Co;
  int H, W, Hp, Wp;  // Hp, Wp: H, W rounded up to 32 (the 8x32 output fragments)
  int tiles_h, tiles_w, tiles, cblocks, splits;
};

template <typename T_, int CB_, bool kMixGrad_, int kMinBlocks_>
struct SpatialWgradConfig {
  using T = T_;
  static constexpr int kMinBlocks = kMinBlocks_;
  using Shape = TileShape<T_, 8, 8, (mma_k<T_>() == 16 ? 16 : 8)>;
  static constexpr bool kMixGrad = kMixGrad_;
  static constexpr int CB = CB_;
  static constexpr int OC = 16;  // output channels per step of gr = F_row^T g
  static constexpr int kMaxFrags = 128 / 32;  // 8x32 fragments across a padded row of <= 128
  static constexpr int GF = (CB_ / 16) * (Shape::P / 16) / kWarps;  // gr/gk fragments per warp
  static_assert(GF * kWarps * 256 == CB_ * Shape::P, "warps tile gr and gk");
  static_assert(Shape::CC * Shape::TH / Shape::KS == kWarps &&
                    Shape::CC * Shape::TW / Shape::KS == kWarps,
                "each warp takes one K step of every chunk");
  static_assert(CB_ % Shape::CC == 0 && OC % Shape::KS == 0, "whole chunks");
};

template <class Cfg>
struct SpatialWgradSmem {
  std::size_t gr, gk, gt, frs, fcs, xr, xc, red, rb_acc, cb_acc, bias_red, scratch, bytes;
  __host__ __device__ SpatialWgradSmem(int Wp, int Hp) {
    using S = typename Cfg::Shape;
    using T = typename Cfg::T;
    SmemCarver c;
    gr = c.take<T>(Cfg::CB * S::P);  // [CB][P]
    gk = c.take<T>(Cfg::CB * S::P);  // [TH][CB][TW]
    gt = c.take<T>(Cfg::kMixGrad ? Cfg::OC * S::P : 0);   // [OC][P]
    frs = c.take<T>(Cfg::kMixGrad ? Cfg::OC * Cfg::CB : 0);  // [OC][CB]
    fcs = c.take<T>(Cfg::kMixGrad ? Cfg::OC * Cfg::CB : 0);
    // The staged cross and, after the last item, the warps' partial sums share bytes.
    SmemCarver u = c;
    xr = u.take<T>(static_cast<std::size_t>(S::CC) * S::TH * Wp);
    xc = u.take<T>(static_cast<std::size_t>(Hp) * S::CC * S::TW);
    SmemCarver v = c;
    red = v.take<float>(static_cast<std::size_t>(kWarps) * (S::TW * Wp + S::TH * Hp));
    c.bytes = u.bytes > v.bytes ? u.bytes : v.bytes;
    rb_acc = c.take<float>(S::TW);
    cb_acc = c.take<float>(S::TH);
    bias_red = c.take<float>(2 * kThreads);
    scratch = c.take<float>(kWarps * 256);
    bytes = c.bytes;
  }
};

// gr[c][p] = sum_o F_row[o][cbase+c] g[o][p], gk[h][c][w] likewise with F_col, for one item.
template <class Cfg>
__device__ void channel_mix_grads(const SpatialWgradArgs<typename Cfg::T>& a,
                                  const TileGeometry& g, const typename Cfg::T* gb,
                                  index_t cbase, typename Cfg::T* gr, typename Cfg::T* gk,
                                  typename Cfg::T* gt, typename Cfg::T* frs,
                                  typename Cfg::T* fcs, float* scratch) {
  using T = typename Cfg::T;
  using S = typename Cfg::Shape;
  using Mma = WarpMma<T, 16, 16, S::KS>;
  constexpr int CB = Cfg::CB, OC = Cfg::OC, PF = S::P / 16;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  typename Mma::Acc ar[Cfg::GF], ak[Cfg::GF];
#pragma unroll
  for (int f = 0; f < Cfg::GF; ++f) {
    Mma::zero(ar[f]);
    Mma::zero(ak[f]);
  }
  const bool f_channels_fast = a.fr_s[1] <= a.fr_s[0];
  for (index_t o0 = 0; o0 < a.Co; o0 += OC) {
    load_pixel_tile<S, OC>(gt, g, gb, a.g_s[1], a.g_s[2], a.g_s[3], o0, a.Co);
    for (int e = threadIdx.x; e < OC * CB; e += kThreads) {
      int o, c;
      if (f_channels_fast) {
        c = e % CB;
        o = e / CB;
      } else {
        o = e % OC;
        c = e / OC;
      }
      const index_t go = o0 + o, gc = cbase + c;
      T vr = Num<T>::zero(), vc = Num<T>::zero();
      if (go < a.Co && gc < a.C) {
        vr = a.fr[go * a.fr_s[0] + gc * a.fr_s[1]];
        vc = a.fc[go * a.fc_s[0] + gc * a.fc_s[1]];
      }
      frs[o * CB + c] = vr;
      fcs[o * CB + c] = vc;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < OC; k += S::KS) {
#pragma unroll
      for (int f = 0; f < Cfg::GF; ++f) {
        const int fi = warp * Cfg::GF + f;
        const int cf = fi / PF, pf = fi % PF;
        typename Mma::template A<ColMajor> fra, fca;  // (m = c, k = o): F^T
        typename Mma::template B<RowMajor> gbf;       // (k = o, n = p)
        Mma::load(fra, frs + k * CB + cf * 16, CB);
        Mma::load(fca, fcs + k * CB + cf * 16, CB);
        Mma::load(gbf, gt + k * S::P + pf * 16, S::P);
        Mma::mma(ar[f], fra, gbf);
        Mma::mma(ak[f], fca, gbf);
      }
    }
    __syncthreads();  // the next step overwrites gt, frs, fcs
  }
  float* scr = scratch + warp * 256;
#pragma unroll
  for (int f = 0; f < Cfg::GF; ++f) {
    const int fi = warp * Cfg::GF + f;
    const int cf = fi / PF, pf = fi % PF;
    Mma::store(scr, 16, ar[f]);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int c = cf * 16 + e / 16, p = pf * 16 + e % 16;
      gr[c * S::P + p] = Num<T>::from_float(scr[e]);
    }
    __syncwarp();
    Mma::store(scr, 16, ak[f]);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int c = cf * 16 + e / 16, p = pf * 16 + e % 16;
      gk[((p / S::TW) * CB + c) * S::TW + p % S::TW] = Num<T>::from_float(scr[e]);
    }
    __syncwarp();
  }
}

template <class Cfg>
__global__ void __launch_bounds__(kThreads, Cfg::kMinBlocks)
    spatial_wgrad_kernel(const SpatialWgradArgs<typename Cfg::T> a) {
  using T = typename Cfg::T;
  using S = typename Cfg::Shape;
  using Mma = WarpMma<T, 8, 32, S::KS>;
  constexpr int CB = Cfg::CB, TH = S::TH, TW = S::TW, P = S::P;
  SMLP_DYNAMIC_SMEM(smem);
  const SpatialWgradSmem<Cfg> L(a.Wp, a.Hp);
  T* gr = smem_at<T>(smem, L.gr);
  T* gk = smem_at<T>(smem, L.gk);
  float* rb_acc = smem_at<float>(smem, L.rb_acc);
  float* cb_acc = smem_at<float>(smem, L.cb_acc);
  float* bias_red = smem_at<float>(smem, L.bias_red);
  // Only xr, xc and scratch of the cross are used here (no weights are staged).
  const CrossSmem<S> sm{smem_at<T>(smem, L.xr), smem_at<T>(smem, L.xc), nullptr, nullptr,
                        nullptr, nullptr, smem_at<float>(smem, L.scratch)};

  const int block = static_cast<int>(blockIdx.x);
  const int cblk = block % a.cblocks;
  const int tile = (block / a.cblocks) % a.tiles;
  const int split = block / (a.cblocks * a.tiles);
  const int th = tile / a.tiles_w, tw = tile % a.tiles_w;
  const TileGeometry g{a.H, a.W, a.Hp, a.Wp, th * TH, tw * TW};
  const index_t cbase = static_cast<index_t>(cblk) * CB;
  const int warp = threadIdx.x / 32, tid = threadIdx.x;
  const int nr = a.Wp / 32, nc = a.Hp / 32;

  typename Mma::Acc accr[Cfg::kMaxFrags], accc[Cfg::kMaxFrags];
#pragma unroll
  for (int i = 0; i < Cfg::kMaxFrags; ++i) {
    Mma::zero(accr[i]);
    Mma::zero(accc[i]);
  }
  if (tid < TW) rb_acc[tid] = 0.0f;
  if (tid < TH) cb_acc[tid] = 0.0f;

  for (index_t b = split; b < a.B; b += a.splits) {
    const T* gb = a.g + b * a.g_s[0];
    const T* xb = a.x + b * a.x_s[0];
    __syncthreads();  // the previous image's MMAs are done with gr, gk, xr, xc
    if constexpr (Cfg::kMixGrad) {
      channel_mix_grads<Cfg>(a, g, gb, cbase, gr, gk, smem_at<T>(smem, L.gt),
                             smem_at<T>(smem, L.frs), smem_at<T>(smem, L.fcs), sm.scratch);
    } else {
      if (a.do_row) load_pixel_tile<S, CB>(gr, g, gb, a.g_s[1], a.g_s[2], a.g_s[3], cbase, a.C);
      if (a.do_col) {
        // gk[h][c][w]: the same tile, laid out rows first.
        const bool n_fast = a.g_s[1] < a.g_s[3];
        for (int e = tid; e < CB * P; e += kThreads) {
          int c, p;
          if (n_fast) {
            c = e % CB;
            p = e / CB;
          } else {
            p = e % P;
            c = e / P;
          }
          const index_t gc = cbase + c;
          const int h = g.h0 + p / TW, w = g.w0 + p % TW;
          T val = Num<T>::zero();
          if (gc < a.C && h < a.H && w < a.W)
            val = gb[gc * a.g_s[1] + h * a.g_s[2] + w * a.g_s[3]];
          gk[((p / TW) * CB + c) * TW + p % TW] = val;
        }
      }
    }
    __syncthreads();

    // Bias gradients: per-thread partial sums, then a fixed-order sum over the 32 parts.
    {
      const int part = tid / 8, lane8 = tid % 8;  // 32 parts x 8 columns (rows)
      if (a.do_row) {
        float s = 0.0f;
        for (int r = part; r < CB * TH; r += kThreads / 8)
          s += Num<T>::to_float(gr[r * TW + lane8]);
        bias_red[part * 8 + lane8] = s;
      }
      if (a.do_col) {
        float s = 0.0f;
        for (int n = part; n < CB * TW; n += kThreads / 8)
          s += Num<T>::to_float(gk[lane8 * CB * TW + n]);
        bias_red[kThreads + part * 8 + lane8] = s;
      }
      __syncthreads();
      if (a.do_row && tid < TW) {
        float s = 0.0f;
        for (int q = 0; q < kThreads / 8; ++q) s += bias_red[q * 8 + tid];
        rb_acc[tid] += s;
      }
      if (a.do_col && tid < TH) {
        float s = 0.0f;
        for (int q = 0; q < kThreads / 8; ++q) s += bias_red[kThreads + q * 8 + tid];
        cb_acc[tid] += s;
      }
    }

    for (int j = 0; j < CB / S::CC; ++j) {
      const index_t c0 = cbase + j * S::CC;
      if (a.do_row) load_rows<S>(sm, nullptr, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
      if (a.do_col) load_cols<S>(sm, g, xb, a.x_s[1], a.x_s[2], a.x_s[3], c0, a.C);
      __syncthreads();
      const int k = warp * S::KS;  // this warp's K step within the chunk
      if (a.do_row) {
        // (m = w, k = (c,h)): gr viewed as [(c,h)][w] is column-major with ld TW.
        typename Mma::template A<ColMajor> ga;
        Mma::load(ga, gr + j * S::CC * P + k * TW, TW);
#pragma unroll
        for (int i = 0; i < Cfg::kMaxFrags; ++i) {
          if (i < nr) {
            typename Mma::template B<RowMajor> xb_frag;  // (k = (c,h), n = v)
            Mma::load(xb_frag, sm.xr + k * a.Wp + i * 32, a.Wp);
            Mma::mma(accr[i], ga, xb_frag);
          }
        }
      }
      if (a.do_col) {
        // (m = h, k = (c,w)): gk viewed as [h][(c,w)] is row-major with ld CB*TW.
        typename Mma::template A<RowMajor> ga;
        Mma::load(ga, gk + j * S::CC * TW + k, CB * TW);
#pragma unroll
        for (int i = 0; i < Cfg::kMaxFrags; ++i) {
          if (i < nc) {
            typename Mma::template B<ColMajor> xc_frag;  // (k = (c,w), n = u)
            Mma::load(xc_frag, sm.xc + i * 32 * (S::CC * TW) + k, S::CC * TW);
            Mma::mma(accc[i], ga, xc_frag);
          }
        }
      }
      __syncthreads();  // the next chunk overwrites xr, xc
    }
  }

  // The warps' partial sums, added in warp order.
  __syncthreads();
  float* red = smem_at<float>(smem, L.red);
  const int per_warp = TW * a.Wp + TH * a.Hp;
  float* mine = red + warp * per_warp;
#pragma unroll
  for (int i = 0; i < Cfg::kMaxFrags; ++i) {
    if (a.do_row && i < nr) Mma::store(mine + i * 32, a.Wp, accr[i]);
    if (a.do_col && i < nc) Mma::store(mine + TW * a.Wp + i * 32, a.Hp, accc[i]);
  }
  __syncthreads();

  const index_t row_slot = (static_cast<index_t>(cblk) * a.tiles_h + th) * a.splits + split;
  const index_t col_slot = (static_cast<index_t>(cblk) * a.tiles_w + tw) * a.splits + split;
  if (a.do_row) {
    for (int e = tid; e < TW * a.W; e += kThreads) {
      const int w = e / a.W, v = e % a.W, gw = g.w0 + w;
      if (gw >= a.W) continue;
      float s = 0.0f;
      for (int q = 0; q < kWarps; ++q) s += red[q * per_warp + w * a.Wp + v];
      if (a.ws_rw != nullptr)
        a.ws_rw[(row_slot * a.W + gw) * a.W + v] = s;
      else
        atomicAdd(a.d_rw + gw * a.d_rw_s[0] + v * a.d_rw_s[1], s);
    }
    if (tid < TW && g.w0 + tid < a.W) {
      const int gw = g.w0 + tid;
      if (a.ws_rb != nullptr)
        a.ws_rb[row_slot * a.W + gw] = rb_acc[tid];
      else
        atomicAdd(a.d_rb + gw * a.d_rb_s, rb_acc[tid]);
    }
  }
  if (a.do_col) {
    for (int e = tid; e < TH * a.H; e += kThreads) {
      const int h = e / a.H, u = e % a.H, gh = g.h0 + h;
      if (gh >= a.H) continue;
      float s = 0.0f;
      for (int q = 0; q < kWarps; ++q) s += red[q * per_warp + TW * a.Wp + h * a.Hp + u];
      if (a.ws_cw != nullptr)
        a.ws_cw[(col_slot * a.H + gh) * a.H + u] = s;
      else
        atomicAdd(a.d_cw + gh * a.d_cw_s[0] + u * a.d_cw_s[1], s);
    }
    if (tid < TH && g.h0 + tid < a.H) {
      const int gh = g.h0 + tid;
      if (a.ws_cb != nullptr)
        a.ws_cb[col_slot * a.H + gh] = cb_acc[tid];
      else
        atomicAdd(a.d_cb + gh * a.d_cb_s, cb_acc[tid]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Fixed-order reduction of workspace slots, and zeroing before atomicAdd.
// ---------------------------------------------------------------------------------------
// out[i][j] (strides s0, s1) = sum over slot < slots, in order, of ws[slot][i][j].
__global__ void __launch_bounds__(kThreads)
    sum_slots_kernel(float* out, index_t rows, index_t cols, index_t s0, index_t s1,
                     const float* ws, index_t slots) {
  const index_t n = rows * cols;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += static_cast<index_t>(gridDim.x) * kThreads) {
    float s = 0.0f;
    for (index_t q = 0; q < slots; ++q) s += ws[q * n + e];
    out[(e / cols) * s0 + (e % cols) * s1] = s;
  }
}

__global__ void __launch_bounds__(kThreads)
    fill_zero_kernel(float* out, index_t rows, index_t cols, index_t s0, index_t s1) {
  const index_t n = rows * cols;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += static_cast<index_t>(gridDim.x) * kThreads)
    out[(e / cols) * s0 + (e % cols) * s1] = 0.0f;
}

}  // namespace smlp::cuda
