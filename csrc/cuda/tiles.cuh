// The "cross" of a pixel tile: everything the row and column mixes of one tile need, staged in
// shared memory, and the mixes themselves as warp MMAs. Used by the fused forward (also the
// input gradient), the standalone axis mix and the fuse-weight gradient.
//
// A block owns a TH x TW pixel tile at (h0, w0) and walks the channels in chunks of CC. For a
// chunk it stages
//   xr[c][h][v] = x[c0+c][h0+h][v]      the tile's rows, every column v < Wp   (row mix input)
//   xc[u][c][w] = x[c0+c][u][w0+w]      the tile's columns, every row u < Hp   (column mix input)
//   tx[c][p]    = x[c0+c][h0+h][w0+w]   the tile itself, p = h*TW + w
// and computes
//   tr[c][p] = sum_v row_weight[w0+w][v] xr[c][h][v] + row_bias[w0+w]     (row mix, along W)
//   tk[c][p] = sum_u col_weight[h0+h][u] xc[u][c][w] + col_bias[h0+h]     (column mix, along H)
// Everything outside the image (rows >= H, columns >= W, channels >= C) is staged as zero, so
// padded MMA lanes add exact zeros; biases are added only at pixels inside the image.
//
// The mixes as GEMMs with row-major operands only:
//   row mix:    rows (c,h) x cols w, K = v:  A = xr (ld Wp),      B = rwt[v][w] (ld TW)
//   column mix: rows h x cols (c,w), K = u:  A = cws[h][u] (ld Hp), B = xc (ld CC*TW)
// Each warp stores a float tile to its scratch and writes it out as T in [c][p] order.
#pragma once

#include "cuda/common.cuh"

namespace smlp::cuda {

template <typename T_, int TH_, int TW_, int CC_>
struct TileShape {
  using T = T_;
  static constexpr int TH = TH_;  // tile rows
  static constexpr int TW = TW_;  // tile columns
  static constexpr int CC = CC_;  // channels per chunk
  static constexpr int P = TH_ * TW_;
  static constexpr int KS = mma_k<T_>();
  // Row-mix tile: RM rows (c,h) x RN = TW columns; column-mix tile: CM = TH rows x CN (c,w).
  static constexpr int RM = 256 / TW_, RN = TW_;
  static constexpr int CM = TH_, CN = 256 / TH_;
  static_assert(P % 16 == 0, "pixel tiles hold whole 16-pixel MMA columns");
  static_assert(CC_ % KS == 0, "a channel chunk is a whole number of MMA K steps");
  static_assert((CC_ * TH_) % RM == 0 && (CC_ * TW_) % CN == 0, "whole mix fragments");
  // ceil(W / TW) * TW <= Wp (a multiple of 16): every tile column lies in the staged rows.
  static_assert(16 % TW_ == 0, "tile columns stay inside the padded width");
};

// Image size, padded size (a multiple of 16, or 32 for the spatial weight gradient) and the
// tile's origin.
struct TileGeometry {
  int H, W, Hp, Wp, h0, w0;
};

template <class S>
struct CrossSmem {
  using T = typename S::T;
  T* xr;           // [CC][TH][Wp]
  T* xc;           // [Hp][CC][TW]
  T* rwt;          // [Wp][TW]: rwt[v][w] = row_weight[w0+w][v]
  T* cws;          // [TH][Hp]: cws[h][u] = col_weight[h0+h][u]
  float* rbias;    // [TW]: row_bias[w0+w], 0 when absent or outside the image
  float* cbias;    // [TH]: col_bias[h0+h]
  float* scratch;  // [kWarps][256]: one float tile per warp
};

// The cross of a kernel whose shared-memory layout L has every piece (offsets into smem).
template <class S, class Layout>
__device__ __forceinline__ CrossSmem<S> cross_smem(unsigned char* smem, const Layout& L) {
  using T = typename S::T;
  return {smem_at<T>(smem, L.xr),        smem_at<T>(smem, L.xc),
          smem_at<T>(smem, L.rwt),       smem_at<T>(smem, L.cws),
          smem_at<float>(smem, L.rbias), smem_at<float>(smem, L.cbias),
          smem_at<float>(smem, L.scratch)};
}

// rwt and rbias for the tile's columns. rw may be any strided (W, W) view, rb may be null.
template <class S>
__device__ void load_row_weight(const CrossSmem<S>& sm, const TileGeometry& g,
                                const typename S::T* __restrict__ rw, index_t rw_s0,
                                index_t rw_s1, const typename S::T* __restrict__ rb,
                                index_t rb_s) {
  using T = typename S::T;
  for (int e = threadIdx.x; e < g.Wp * S::TW; e += kThreads) {
    const int v = e / S::TW, w = e % S::TW, gw = g.w0 + w;
    T val = Num<T>::zero();
    if (v < g.W && gw < g.W) val = rw[gw * rw_s0 + v * rw_s1];
    sm.rwt[e] = val;
  }
  for (int w = threadIdx.x; w < S::TW; w += kThreads) {
    const int gw = g.w0 + w;
    sm.rbias[w] = (rb != nullptr && gw < g.W) ? Num<T>::to_float(rb[gw * rb_s]) : 0.0f;
  }
}

// cws and cbias for the tile's rows.
template <class S>
__device__ void load_col_weight(const CrossSmem<S>& sm, const TileGeometry& g,
                                const typename S::T* __restrict__ cw, index_t cw_s0,
                                index_t cw_s1, const typename S::T* __restrict__ cb,
                                index_t cb_s) {
  using T = typename S::T;
  for (int e = threadIdx.x; e < S::TH * g.Hp; e += kThreads) {
    const int h = e / g.Hp, u = e % g.Hp, gh = g.h0 + h;
    T val = Num<T>::zero();
    if (u < g.H && gh < g.H) val = cw[gh * cw_s0 + u * cw_s1];
    sm.cws[e] = val;
  }
  for (int h = threadIdx.x; h < S::TH; h += kThreads) {
    const int gh = g.h0 + h;
    sm.cbias[h] = (cb != nullptr && gh < g.H) ? Num<T>::to_float(cb[gh * cb_s]) : 0.0f;
  }
}

// xr (and tx when not null) for channels [c0, c0 + CC). x points at the batch's image;
// sc, sh, sw are its channel, row and column strides. Consecutive threads walk the
// smallest-stride axis (columns for NCHW, channels for channels_last) to coalesce.
template <class S>
__device__ void load_rows(const CrossSmem<S>& sm, typename S::T* __restrict__ tx,
                          const TileGeometry& g, const typename S::T* __restrict__ x,
                          index_t sc, index_t sh, index_t sw, index_t c0, index_t C) {
  using T = typename S::T;
  const int total = S::CC * S::TH * g.Wp;
  const bool channels_fast = sc < sw;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    int c, h, v;
    if (channels_fast) {
      c = e % S::CC;
      const int r = e / S::CC;
      v = r % g.Wp;
      h = r / g.Wp;
    } else {
      v = e % g.Wp;
      const int r = e / g.Wp;
      h = r % S::TH;
      c = r / S::TH;
    }
    const index_t gc = c0 + c;
    const int gh = g.h0 + h;
    T val = Num<T>::zero();
    if (gc < C && gh < g.H && v < g.W) val = x[gc * sc + gh * sh + v * sw];
    sm.xr[(c * S::TH + h) * g.Wp + v] = val;
    if (tx != nullptr) {
      const int w = v - g.w0;
      if (w >= 0 && w < S::TW) tx[c * S::P + h * S::TW + w] = val;
    }
  }
}

// xc for channels [c0, c0 + CC).
template <class S>
__device__ void load_cols(const CrossSmem<S>& sm, const TileGeometry& g,
                          const typename S::T* __restrict__ x, index_t sc, index_t sh,
                          index_t sw, index_t c0, index_t C) {
  using T = typename S::T;
  const int total = g.Hp * S::CC * S::TW;
  const bool channels_fast = sc < sw;
  for (int e = threadIdx.x; e < total; e += kThreads) {
    int u, c, w;
    if (channels_fast) {
      c = e % S::CC;
      const int r = e / S::CC;
      w = r % S::TW;
      u = r / S::TW;
    } else {
      w = e % S::TW;
      const int r = e / S::TW;
      c = r % S::CC;
      u = r / S::CC;
    }
    const index_t gc = c0 + c;
    const int gw = g.w0 + w;
    T val = Num<T>::zero();
    if (gc < C && u < g.H && gw < g.W) val = x[gc * sc + u * sh + gw * sw];
    sm.xc[(u * S::CC + c) * S::TW + w] = val;
  }
}

// acc = a b over k < K (a multiple of KS), a row-major (M x K, ld lda), b row-major (K x N,
// ld ldb), both in shared memory.
template <class Mma, int KS, typename T>
__device__ __forceinline__ void mma_rows(typename Mma::Acc& acc, const T* a, int lda, const T* b,
                                         int ldb, int K) {
  Mma::zero(acc);
  for (int k = 0; k < K; k += KS) {
    typename Mma::template A<RowMajor> af;
    typename Mma::template B<RowMajor> bf;
    Mma::load(af, a + k, lda);
    Mma::load(bf, b + k * ldb, ldb);
    Mma::mma(acc, af, bf);
  }
}

// tr[c][p] = row mix of xr (+ rbias inside the image). Call between __syncthreads().
template <class S>
__device__ void row_mix(const CrossSmem<S>& sm, const TileGeometry& g,
                        typename S::T* __restrict__ tr) {
  using T = typename S::T;
  using Mma = WarpMma<T, S::RM, S::RN, S::KS>;
  constexpr int kFrags = S::CC * S::TH / S::RM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scr = sm.scratch + warp * 256;
  for (int f = warp; f < kFrags; f += kWarps) {
    typename Mma::Acc acc;
    mma_rows<Mma, S::KS>(acc, sm.xr + (f * S::RM) * g.Wp, g.Wp, sm.rwt, S::TW, g.Wp);
    Mma::store(scr, S::RN, acc);
    __syncwarp();
    // The fragment's rows (c,h) are consecutive rows of tr viewed as [(c,h)][w].
    for (int i = lane; i < S::RM * S::RN; i += 32) {
      const int h = (f * S::RM + i / S::TW) % S::TH;
      const int w = i % S::TW;
      float v = scr[i];
      if (g.h0 + h < g.H && g.w0 + w < g.W) v += sm.rbias[w];
      tr[f * S::RM * S::TW + i] = Num<T>::from_float(v);
    }
    __syncwarp();
  }
}

// tk[c][p] = column mix of xc (+ cbias inside the image). Call between __syncthreads().
template <class S>
__device__ void col_mix(const CrossSmem<S>& sm, const TileGeometry& g,
                        typename S::T* __restrict__ tk) {
  using T = typename S::T;
  using Mma = WarpMma<T, S::CM, S::CN, S::KS>;
  constexpr int kFrags = S::CC * S::TW / S::CN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scr = sm.scratch + warp * 256;
  for (int f = warp; f < kFrags; f += kWarps) {
    typename Mma::Acc acc;
    mma_rows<Mma, S::KS>(acc, sm.cws, g.Hp, sm.xc + f * S::CN, S::CC * S::TW, g.Hp);
    Mma::store(scr, S::CN, acc);
    __syncwarp();
    for (int i = lane; i < S::CM * S::CN; i += 32) {
      const int h = i / S::CN;
      const int n = f * S::CN + i % S::CN;  // (c, w) of the column-mix tile
      const int c = n / S::TW, w = n % S::TW;
      float v = scr[i];
      if (g.h0 + h < g.H && g.w0 + w < g.W) v += sm.cbias[h];
      tk[c * S::P + h * S::TW + w] = Num<T>::from_float(v);
    }
    __syncwarp();
  }
}

}  // namespace smlp::cuda
