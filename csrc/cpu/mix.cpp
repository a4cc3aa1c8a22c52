// The fused sMLP token mixing on the CPU: forward (also the input gradient) and the weight
// gradients.
//
// Forward, by the identity in the README's Design notes (channel and spatial mixing commute):
//
//   y[o] = T_id[o] + R(T_row[o]) + K(T_col[o]) + s_row[o] rb + s_col[o] cb,
//   [T_id; T_row; T_col] = [F_id; F_row; F_col] x        (one GEMM, 3 C_out x C by C x pixels)
//
// Work item = (a group of whole images, a block of `ob` output channels). Whole images,
// because the column mix needs every row of an image; groups of several small images (7x7,
// 14x14), so that the GEMM sees a few hundred pixels. Per item:
//   1. the group's x, packed once per group into NR-pixel tiles (the GEMM's B operand);
//   2. T = the 3*ob rows of [F_id; F_row; F_col] x the group, into a scratch of at most
//      ~192 KiB (L2): never the whole 3 C_out concatenation;
//   3. per image and channel, one register-tiled pass computes the identity term, the row
//      mix, the column mix and the biases from T and stores y.
// Threads take contiguous ranges of items (group-major), so each packs x for few groups,
// then help with the others' ranges.
//
// Weight gradients (and dx): per image group, g is packed twice (rows, the B of F^T g, and
// g^T, the B of z g^T, z = [x | r | k]); then channel blocks (fixed size, any thread)
// recompute r and k from x, accumulate their rows of d_fuse^T = z g^T with a GEMM (whose
// last pass, in the last image group, stores its tiles transposed straight into d_fuse), compute
// [gr; gk; g_id] = [F_row^T; F_col^T; F_id^T] g for their channels, and from those their
// partial sums of the row/column weight gradients and, if wanted, their channels of
// dx = g_id + R^T(gr) + K^T(gk). Partials are added in block order at the end (in double),
// so the result does not depend on the number of threads.
//
// Both launchers are templates on the storage type (cpu/storage.h) and on the GEMM: float
// (FloatGemm) or, for bfloat16 at the avx512bf16 level, bfloat16 pairs (DotGemm).

#include "cpu/kernels.h"

namespace smlp::cpu::SMLP_CPU_ISA {
namespace {

// Pixels a work item aims for: enough NR-wide tiles for the GEMM, small enough that the
// group's packed x stays in L2 for the channel widths of sMLPNet's late stages.
constexpr int64_t kTargetPixels = 384;
// Bytes of the per-thread T scratch (3*ob rows of the group's pixels).
constexpr int64_t kTBytes = 192 * 1024;

// Copies images b0 .. b0+n_img-1 of x (all C channels) into the B operand of Ops's GEMM
// (FloatGemm: NR-pixel tiles, pixel n = i*P + h*W + w of channel c at
// dst[(n / NR)*C*NR + c*NR + n % NR]; DotGemm: the same with channel pairs interleaved).
// Pixels from n_img*P up to n_cols, and a channel padding up to the GEMM's K, are zero.
template <typename Ops, typename S>
void pack_pixel_tiles(const View<const S, 4>& x, int64_t b0, int64_t n_img, int64_t n_cols,
                      typename Ops::BType* dst) {
  using B = typename Ops::BType;
  constexpr int64_t NR = Ops::NR;
  const int64_t C = x.size[1], H = x.size[2], W = x.size[3], P = H * W;
  const int64_t s0 = x.stride[0], s1 = x.stride[1], s2 = x.stride[2], s3 = x.stride[3];
  const int64_t tile = Ops::b_tile(C), K = tile / NR;  // K: C rounded up to the GEMM's
  if constexpr (!Ops::kPairs) {
    // len contiguous source elements to pixels n .. n+len-1 of the channel at dc, converted
    // (a plain copy when S is B).
    auto copy_run = [&](B* dc, const S* src, int64_t n, int64_t len) {
      while (len > 0) {
        const int64_t run = std::min(len, NR - n % NR);
        B* d = dc + (n / NR) * tile + n % NR;
        if (run == NR) {
          load_row(src, NR, d);  // a whole tile row: a fixed-size copy the compiler unrolls
        } else {
          load_row(src, run, d);
        }
        src += run;
        n += run;
        len -= run;
      }
    };
    if (!(s1 < s3 && s1 < s2)) {
      for (int64_t c = 0; c < C; ++c) {
        B* dc = dst + c * NR;
        for (int64_t i = 0; i < n_img; ++i) {
          const S* src = x.data + (b0 + i) * s0 + c * s1;
          if (s3 == 1 && s2 == W) {
            copy_run(dc, src, i * P, P);
          } else if (s3 == 1) {
            for (int64_t h = 0; h < H; ++h) copy_run(dc, src + h * s2, i * P + h * W, W);
          } else {
            for (int64_t h = 0; h < H; ++h) {
              for (int64_t w = 0; w < W; ++w) {
                const int64_t n = i * P + h * W + w;
                dc[(n / NR) * tile + n % NR] = Ops::to_b(src[h * s2 + w * s3]);
              }
            }
          }
        }
      }
      for (int64_t n = n_img * P; n < n_cols; ++n) {
        B* d = dst + (n / NR) * tile + n % NR;
        for (int64_t c = 0; c < C; ++c) d[c * NR] = B(0);
      }
      return;
    }
  }
  if constexpr (Ops::kPairs) {
    if (s3 == 1 && !(s1 < s3 && s1 < s2)) {
      // Rows of W pixels (whole images when dense), two channels at a time: runs of up to
      // NR pixels of channels c and c+1 interleaved; c+1 = C (padding) is zero.
      const bool dense = s2 == W;
      for (int64_t c = 0; c < K; c += 2) {
        for (int64_t i = 0; i < n_img; ++i) {
          const S* img0 = x.data + (b0 + i) * s0 + c * s1;
          const S* img1 = c + 1 < C ? img0 + s1 : nullptr;
          for (int64_t h = 0; h < (dense ? 1 : H); ++h) {
            const S* src0 = img0 + h * s2;
            const S* src1 = img1 != nullptr ? img1 + h * s2 : nullptr;
            int64_t n = i * P + h * W, len = dense ? P : W;
            while (len > 0) {
              const int64_t off = n % NR, run = std::min(len, NR - off);
              B* d = dst + (n / NR) * tile + c * NR + off * 2;
              if (src1 != nullptr) {
                for (int64_t k = 0; k < run; ++k) {
                  d[2 * k] = Ops::to_b(src0[k]);
                  d[2 * k + 1] = Ops::to_b(src1[k]);
                }
                src1 += run;
              } else {
                for (int64_t k = 0; k < run; ++k) {
                  d[2 * k] = Ops::to_b(src0[k]);
                  d[2 * k + 1] = B(0);
                }
              }
              src0 += run;
              n += run;
              len -= run;
            }
          }
        }
      }
      for (int64_t n = n_img * P; n < n_cols; ++n) {
        for (int64_t c = 0; c < K; ++c) dst[Ops::b_index(c, n, C)] = B(0);
      }
      return;
    }
  }
  // Channels fastest (channels_last), or DotGemm on rows that are not contiguous: each
  // pixel's channels in order.
  for (int64_t i = 0; i < n_img; ++i) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) {
        const int64_t n = i * P + h * W + w;
        const S* src = x.data + (b0 + i) * s0 + h * s2 + w * s3;
        for (int64_t c = 0; c < C; ++c) dst[Ops::b_index(c, n, C)] = Ops::to_b(src[c * s1]);
      }
    }
  }
  for (int64_t c = C; c < K; ++c) {
    for (int64_t n = 0; n < n_img * P; ++n) dst[Ops::b_index(c, n, C)] = B(0);
  }
  for (int64_t n = n_img * P; n < n_cols; ++n) {
    for (int64_t c = 0; c < K; ++c) dst[Ops::b_index(c, n, C)] = B(0);
  }
}

// Copies images b0 .. b0+n_img-1 of channels c0 .. c0+nc-1 of t into rows: channel c at
// dst + (c - c0)*ld, pixel n = i*P + h*W + w; pixels n_img*P .. ld-1 are zero.
template <typename T, typename S>
void pack_rows(const View<const S, 4>& t, int64_t b0, int64_t n_img, int64_t c0, int64_t nc,
               T* dst, int64_t ld) {
  const int64_t H = t.size[2], W = t.size[3], P = H * W;
  for (int64_t c = 0; c < nc; ++c) {
    T* d = dst + c * ld;
    for (int64_t i = 0; i < n_img; ++i) {
      pack_image(t.data + (b0 + i) * t.stride[0] + (c0 + c) * t.stride[1], t.stride[2],
                 t.stride[3], H, W, d + i * P);
    }
    std::fill(d + n_img * P, d + ld, T(0));
  }
}

template <typename T>
void write_matrix(const View<T, 2>& out, const double* src, int64_t ld) {
  for (int64_t i = 0; i < out.size[0]; ++i) {
    for (int64_t j = 0; j < out.size[1]; ++j) {
      out.data[i * out.stride[0] + j * out.stride[1]] = static_cast<T>(src[i * ld + j]);
    }
  }
}

template <typename T>
void write_vector(const View<T, 1>& out, const double* src) {
  for (int64_t i = 0; i < out.size[0]; ++i) {
    out.data[i * out.stride[0]] = static_cast<T>(src[i]);
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// x' = gelu(x * scale[c] + shift[c]) of image b, channel c into dst (H*W elements, dense),
// rounded to S; tmp: H*W elements of T. A dense image is one run of H*W elements (7x7 rows
// alone would leave the vector loop no full vector).
template <typename S, typename T>
void bn_gelu_image(const View<const S, 4>& x, int64_t b, int64_t c,
                   const View<const T, 1>& scale, const View<const T, 1>& shift, S* dst,
                   T* tmp) {
  const int64_t H = x.size[2], W = x.size[3];
  const S* src = x.data + b * x.stride[0] + c * x.stride[1];
  const T a = scale.data[c * scale.stride[0]], sh = shift.data[c * shift.stride[0]];
  if (x.stride[3] == 1 && x.stride[2] == W) {
    load_row(src, H * W, tmp);
    bn_gelu_row(tmp, H * W, a, sh, dst);
    return;
  }
  for (int64_t h = 0; h < H; ++h) {
    const S* s = src + h * x.stride[2];
    if (x.stride[3] == 1) {
      load_row(s, W, tmp);
    } else {
      for (int64_t w = 0; w < W; ++w) tmp[w] = load_as<T>(s[w * x.stride[3]]);
    }
    bn_gelu_row(tmp, W, a, sh, dst + h * W);
  }
}

template <typename S, typename Ops>
void mix_fwd_impl(const MixFwdViews<S>& p) {
  using T = Compute<S>;
  using A = typename Ops::AType;
  using B = typename Ops::BType;
  constexpr int64_t L = Simd<T>::kLanes, MR = Ops::MR, NR = Ops::NR;
  const int64_t B_ = p.x.size[0], C = p.x.size[1], H = p.x.size[2], W = p.x.size[3];
  const int64_t Co = p.f_id.size[0], P = H * W;

  std::vector<T> spatial_storage;
  const SpatialPlan<T> sp =
      pack_spatial(p.row_weight, p.row_bias, p.col_weight, p.col_bias, H, W, spatial_storage);
  const bool biased = sp.rb != nullptr || sp.cb != nullptr;

  const int64_t group = std::clamp<int64_t>(ceil_div(kTargetPixels, P), 1, B_);
  const int64_t n_groups = ceil_div(B_, group);
  const int64_t n_cols_max = round_up(group * P, NR);
  const int64_t ldt = leading_dim<T>(group * P + L, NR);
  // Output channels per item: 3*ob rows of T in kTBytes, ob a multiple of MR (so that the
  // 3*ob rows fill whole row tiles).
  int64_t ob = kTBytes / (3 * ldt * static_cast<int64_t>(sizeof(T))) / MR * MR;
  ob = std::clamp<int64_t>(ob, MR, 32);
  ob = std::min(ob, round_up(Co, MR));
  const int64_t n_blocks = ceil_div(Co, ob), rows = 3 * ob, m_tiles = rows / MR;
  const int64_t b_tile = Ops::b_tile(C);  // packed x of one NR-pixel tile

  // The spatial mixes and the fuse GEMM, 2 FLOPs a multiply-add.
  const int n_threads = threads_for(2 * B_ * P * (C * (H + W) + 3 * C * Co));
  ScratchLayout layout;
  const int64_t block_size = m_tiles * Ops::panel_size(C);  // packed rows of one block
  const int64_t xp_size = b_tile * (n_cols_max / NR);
  const int64_t buf_size = std::is_same_v<S, T> ? 0 : ob * P;  // a block's images in T
  // The prologue's x' of the whole batch, dense (computed once, by all threads, before the
  // items: a group's x is packed by every thread that takes one of its items), and an image
  // of T per thread for computing it.
  const bool prologue = p.scale.data != nullptr;
  const int64_t row_size = prologue ? P : 0;
  const size_t o_xprol = layout.add<S>(prologue ? B_ * C * P : 0);
  const size_t o_row = layout.add<T>(n_threads * row_size);
  const size_t o_ap = layout.add<A>(n_threads * block_size);
  const size_t o_xp = layout.add<B>(n_threads * xp_size);
  const size_t o_t = layout.add<T>(n_threads * rows * ldt);
  const size_t o_sums = layout.add<T>(n_threads * 2 * ob);
  const size_t o_buf = layout.add<T>(n_threads * buf_size);
  char* base = thread_arena(layout.bytes());
  const View<const S, 2>* parts[3] = {&p.f_id, &p.f_row, &p.f_col};
  ItemQueues queues(n_threads);

#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
  {
    const int tid = thread_id();
    // The block's rows are packed by the thread that uses them, just before, so they are
    // in its L2 when the GEMM reads them (a packed copy of all of F would go through L3).
    A* ap = at<A>(base, o_ap) + tid * block_size;
    B* xp = at<B>(base, o_xp) + tid * xp_size;
    T* tb = at<T>(base, o_t) + tid * rows * ldt;
    T* s_row = at<T>(base, o_sums) + tid * 2 * ob;  // sum_c F_row[o, c] of the block
    T* s_col = s_row + ob;
    T* buf = at<T>(base, o_buf) + tid * buf_size;
    S* xprol = at<S>(base, o_xprol);
    T* row = at<T>(base, o_row) + tid * row_size;
    View<const S, 4> xin = p.x;  // what the items pack: x, or the prologue's x'
    if (prologue) {
#pragma omp for schedule(static)
      for (int64_t bc = 0; bc < B_ * C; ++bc) {
        bn_gelu_image(p.x, bc / C, bc % C, p.scale, p.shift, xprol + bc * P, row);
      }
      // (implicit barrier)
      xin.data = xprol;
      xin.stride[0] = C * P;
      xin.stride[1] = P;
      xin.stride[2] = W;
      xin.stride[3] = 1;
    }
    // Columns past the GEMM's are read (and dropped) by the spatial pass: keep them finite.
    std::fill(tb, tb + rows * ldt, T(0));
#pragma omp single
    queues.reset(n_groups * n_blocks, team_size());
    // (implicit barrier)
    int64_t packed_grp = -1, packed_blk = -1;
    for (int64_t item; (item = queues.take(tid)) >= 0;) {
      const int64_t grp = item / n_blocks, blk = item % n_blocks;
      const int64_t b0 = grp * group, n_img = std::min(group, B_ - b0);
      const int64_t n_cols = round_up(n_img * P, L);
      const int64_t o0 = blk * ob, n_out = std::min(ob, Co - o0);
      if (grp != packed_grp) {
        pack_pixel_tiles<Ops>(xin, b0, n_img, n_cols, xp);
        packed_grp = grp;
      }
      if (blk != packed_blk) {
        // Row part*ob + oi of the block: F_id, F_row or F_col (part 0, 1, 2) of output
        // channel o0 + oi; rows past C_out are zero.
        for (int64_t part = 0; part < 3; ++part) {
          const View<const S, 2>& f = *parts[part];
          Ops::pack_a_block(ap, C, part * ob, n_out, f.data + o0 * f.stride[0], f.stride[0],
                            f.stride[1]);
          for (int64_t oi = n_out; oi < ob; ++oi) Ops::zero_a_row(ap, C, part * ob + oi);
        }
        if (biased) {  // the bias terms' scales (the spatial pass reads them only then)
          for (int64_t oi = 0; oi < n_out; ++oi) {
            s_row[oi] = Ops::row_sum(ap, C, ob + oi);
            s_col[oi] = Ops::row_sum(ap, C, 2 * ob + oi);
          }
        }
        packed_blk = blk;
      }
      Ops::gemm_tiles(m_tiles, n_cols, C, ap, xp, tb, ldt, false);
      for (int64_t i = 0; i < n_img; ++i) {
        SpatialImage<T> im;
        im.t_id = tb + i * P;
        im.t_row = tb + ob * ldt + i * P;
        im.t_col = tb + 2 * ob * ldt + i * P;
        im.t_stride = ldt;
        im.row_scale = s_row;
        im.col_scale = s_col;
        im.count = n_out;
        spatial_store(sp, im, p.y.data + (b0 + i) * p.y.stride[0] + o0 * p.y.stride[1],
                      p.y.stride[1], p.y.stride[2], p.y.stride[3], buf);
      }
    }
  }
}

template <typename S>
void mix_fwd_views(const MixFwdViews<S>& p) {
#if SMLP_CPU_BF16_DOT
  if constexpr (std::is_same_v<S, bf16>) {
    mix_fwd_impl<S, DotGemm>(p);
    return;
  }
#endif
  mix_fwd_impl<S, FloatGemm<Compute<S>>>(p);
}

// ---------------------------------------------------------------------------------------
// Weight gradients
// ---------------------------------------------------------------------------------------

// The transpose of a matrix view (no copy).
template <typename S>
View<const S, 2> transposed(const View<const S, 2>& v) {
  View<const S, 2> t = v;
  std::swap(t.size[0], t.size[1]);
  std::swap(t.stride[0], t.stride[1]);
  return t;
}

// Two float copies of bfloat16 values as one 32-bit pair: lo in the low half, hi in the high.
inline std::uint32_t pair_bits(float lo, float hi) {
  return (float_to_bits(lo) >> 16) | (float_to_bits(hi) & 0xffff0000u);
}

// Rows o0 .. o0+ni-1 of g (rows, ld apart, the first nrow real, the rest zero; np pixels)
// as columns o0 .. of g^T, the B of z g^T (K = np): element (k, o) at Ops::b_index(k, o, np);
// the pixel padding of a pair is zero. Whole 8 x 8 blocks (8 rows, 8 pixels or pixel pairs)
// through transposes, the rest one element at a time.
template <typename Ops, typename T>
void pack_g_transposed(const T* rows, int64_t ld, int64_t nrow, int64_t np, int64_t o0,
                       int64_t ni, typename Ops::BType* gt) {
  using Bt = typename Ops::BType;
  constexpr int64_t kStep = Ops::kPairs ? 2 : 1;
  int64_t k_done = 0;  // pixels done by the transposes
#if SMLP_CPU_AVX
  if (nrow == 8 && ni == 8 && o0 % 8 == 0) {
    if constexpr (!Ops::kPairs && std::is_same_v<T, float> && Ops::MR == 8) {
      for (; k_done + 8 <= np; k_done += 8) {
        transpose8x8(rows + k_done, ld, gt + Ops::b_index(k_done, o0, np), Ops::NR);
      }
    }
#if SMLP_CPU_BF16_DOT
    if constexpr (Ops::kPairs) {
      // 16 pixels of a row are 8 pairs (32-bit words); 8 rows of them transposed.
      auto* gt32 = reinterpret_cast<float*>(gt);
      for (; k_done + 16 <= np; k_done += 16) {
        alignas(32) std::uint32_t words[8][8];
        for (int i = 0; i < 8; ++i) {
          const __m512i bits = _mm512_loadu_si512(rows + i * ld + k_done);
          _mm256_store_si256(reinterpret_cast<__m256i*>(words[i]),
                             _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
        }
        transpose8x8(reinterpret_cast<const float*>(&words[0][0]), 8,
                     gt32 + Ops::b_index(k_done, o0, np) / 2, Ops::NR);
      }
    }
#endif
  }
#endif
  const int64_t kp = Ops::b_tile(np) / Ops::NR;  // pixels, rounded up to whole pairs
  for (int64_t i = 0; i < ni; ++i) {
    const T* row = i < nrow ? rows + i * ld : nullptr;
    Bt* col = gt + Ops::b_index(0, o0 + i, np);  // column o0 + i, pixel (pair) 0
    for (int64_t k = k_done; k < kp; k += kStep) {
      Bt* d = col + (k / kStep) * kStep * Ops::NR;
      if constexpr (Ops::kPairs) {
        const T lo = row != nullptr && k < np ? row[k] : T(0);
        const T hi = row != nullptr && k + 1 < np ? row[k + 1] : T(0);
        const std::uint32_t w = pair_bits(lo, hi);
        std::memcpy(d, &w, sizeof w);
      } else {
        d[0] = row != nullptr ? row[k] : T(0);
      }
    }
  }
}

// Ops: FloatGemm<T> (every GEMM in T), or DotGemm (bfloat16 at the avx512bf16 level: the
// GEMMs' operands rounded to bfloat16, exact for g and x, once for r and k, as PyTorch's
// own bfloat16 backward rounds them).
template <typename S, typename Ops>
void mix_wgrad_impl(const MixWgradViews<S>& p) {
  using T = Compute<S>;
  using A = typename Ops::AType;
  using Bt = typename Ops::BType;
  constexpr int64_t L = Simd<T>::kLanes, MR = Ops::MR, NR = Ops::NR;
  const int64_t B = p.x.size[0], C = p.x.size[1], H = p.x.size[2], W = p.x.size[3];
  const int64_t Co = p.f_id.size[0], P = H * W;

  // r and k with their biases (d_fuse needs them), from the same spatial kernel.
  std::vector<T> spatial_storage;
  const SpatialPlan<T> sp =
      pack_spatial(p.row_weight, p.row_bias, p.col_weight, p.col_bias, H, W, spatial_storage);
  SpatialPlan<T> sp_row = sp, sp_col = sp;
  sp_row.cb = nullptr;
  sp_col.rb = nullptr;
  // dx = F_id^T g + R^T(F_row^T g) + K^T(F_col^T g): the spatial kernel with the transposed
  // weights and no biases, on the rows of [F_row^T; F_col^T; F_id^T] g this launch computes
  // anyway (gr and gk for the row and column weight gradients).
  const bool want_dx = p.dx.data != nullptr;
  std::vector<T> spatial_t_storage;
  const View<const S, 1> no_bias{};
  const SpatialPlan<T> sp_t =
      want_dx ? pack_spatial(transposed(p.row_weight), no_bias, transposed(p.col_weight), no_bias,
                             H, W, spatial_t_storage)
              : SpatialPlan<T>{};
  const int64_t n_parts = want_dx ? 3 : 2;  // rows of F^T per channel: F_row, F_col, (F_id)

  const int64_t group = std::clamp<int64_t>(ceil_div(kTargetPixels, P), 1, B);
  const int64_t n_groups = ceil_div(B, group);
  const int64_t np_max = group * P;
  const int64_t ld = leading_dim<T>(np_max + L, NR);  // rows of g, x, r, k, gr, gk
  // Channel blocks: a fixed size (from C only), so the partial sums and the order they are
  // added in do not depend on the thread count.
  // Narrower at small C so that a stage-1 launch still has ~10 blocks to share out.
  const int64_t cb_size = C >= 256 ? 32 : C >= 160 ? 16 : 8;
  const int64_t n_cblk = ceil_div(C, cb_size);
  const int64_t z_tiles = ceil_div(3 * cb_size, MR);  // [x | r | k] rows of a block, A tiles
  const int64_t ldd = round_up(Co, NR);                // d_fuse^T rows of a block
  const int64_t grk_tiles = ceil_div(n_parts * cb_size, MR);
  const int64_t co_tiles = ceil_div(Co, MR);
  const int64_t ldwp = round_up(W, L), ldhp = round_up(H, L);
  const int64_t part_size = W * ldwp + H * ldhp;  // d_row_weight, d_col_weight partials

  // Recomputing r and k, F^T g for gr and gk (and g_id), z g^T for d_fuse, the spatial weight
  // gradients (and dx's spatial mixes).
  const int n_threads =
      threads_for(2 * B * P * ((want_dx ? 3 : 2) * C * (H + W) + (3 + n_parts) * C * Co));
  ScratchLayout layout;
  const size_t o_gp = layout.add<T>(Co * ld);                           // g, row-major
  const int64_t af_size = grk_tiles * Ops::panel_size(Co);
  // g as the B of F^T g: FloatGemm reads the rows gp, DotGemm its pairs layout gb.
  const int64_t gb_size = Ops::kPairs ? Ops::b_tile(co_tiles * MR) * (ld / NR) : 0;
  const size_t o_gb = layout.add<Bt>(gb_size);
  const size_t o_gt = layout.add<Bt>(ldd / NR * Ops::b_tile(np_max));  // g^T, as a B
  const size_t o_af = layout.add<A>(n_cblk * af_size);  // [F_row^T; F_col^T (; F_id^T)]
  const size_t o_d = layout.add<T>(n_cblk * z_tiles * MR * ldd);  // d_fuse^T blocks
  const size_t o_part = layout.add<T>(n_cblk * part_size);              // weight partials
  const size_t o_bias = layout.add<double>(n_cblk * (W + H));          // bias partials
  const int64_t buf_size = want_dx && !std::is_same_v<S, T> ? group * P : 0;  // dx in T
  const int64_t per_thread = 3 * cb_size * ld + grk_tiles * MR * ld +
                             2 * (cb_size * np_max + L) + buf_size;
  const int64_t zt_size = z_tiles * Ops::panel_size(np_max);  // [x | r | k] as an A
  const size_t o_thread = layout.add<T>(n_threads * per_thread);
  const size_t o_zt = layout.add<A>(n_threads * zt_size);
  char* base = thread_arena(layout.bytes());
  T* gp = at<T>(base, o_gp);
  Bt* gb = at<Bt>(base, o_gb);
  Bt* gt = at<Bt>(base, o_gt);
  A* af = at<A>(base, o_af);
  T* dblk = at<T>(base, o_d);
  T* parts = at<T>(base, o_part);
  std::fill(parts, parts + n_cblk * part_size, T(0));
  double* bias_parts = at<double>(base, o_bias);
  std::fill(bias_parts, bias_parts + n_cblk * (W + H), 0.0);

#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_cblk; ++blk) {
      // Rows 0 .. cb_size-1: F_row^T of channels c0 .., then F_col^T (and F_id^T); the rest
      // zero.
      A* panels = af + blk * af_size;
      const int64_t c0 = blk * cb_size, nc = std::min(cb_size, C - c0);
      for (int64_t part = 0; part < n_parts; ++part) {
        const View<const S, 2>& f = part == 0 ? p.f_row : part == 1 ? p.f_col : p.f_id;
        Ops::pack_a_block(panels, Co, part * cb_size, nc, f.data + c0 * f.stride[1],
                          f.stride[1], f.stride[0]);
        for (int64_t r = nc; r < cb_size; ++r) Ops::zero_a_row(panels, Co, part * cb_size + r);
      }
      for (int64_t r = n_parts * cb_size; r < grk_tiles * MR; ++r) {
        Ops::zero_a_row(panels, Co, r);
      }
    }

    const int tid = thread_id();
    T* zr = at<T>(base, o_thread) + tid * per_thread;  // x, r, k rows of the block
    A* zt = at<A>(base, o_zt) + tid * zt_size;         // [x | r | k] as the A of z g^T
    T* grk = zr + 3 * cb_size * ld;                     // gr, gk (, g_id) rows
    T* gk_t = grk + grk_tiles * MR * ld;                // gk transposed per image
    T* x_t = gk_t + cb_size * np_max + L;               // x transposed per image
    T* buf = x_t + cb_size * np_max + L;                // a group's dx images in T (16-bit)
    // Lanes past a group's last pixel are read (and dropped) by dx's spatial pass: finite.
    std::fill(grk, grk + grk_tiles * MR * ld, T(0));
    std::vector<int64_t> d_off(static_cast<size_t>(z_tiles * MR));  // d_fuse offset per z row

    for (int64_t grp = 0; grp < n_groups; ++grp) {
      const int64_t b0 = grp * group, n_img = std::min(group, B - b0), np = n_img * P;
      const int64_t n_cols = round_up(np, NR);
      // g of the group: rows (the B of F^T g) and g^T (the B of z g^T).
#pragma omp for schedule(static)
      for (int64_t t = 0; t < co_tiles; ++t) {
        const int64_t nrow = std::min<int64_t>(MR, Co - t * MR);
        T* rows = gp + t * MR * ld;
        pack_rows(p.g, b0, n_img, t * MR, nrow, rows, ld);
        // g^T as the B of z g^T: row k = pixel k, column o = output channel o; columns past
        // C_out (up to the last NR tile) and the pixel padding zero.
        pack_g_transposed<Ops>(rows, ld, nrow, np, t * MR, std::min<int64_t>(MR, ldd - t * MR),
                               gt);
        if (t == co_tiles - 1 && co_tiles * MR < ldd) {  // the columns past the last tile
          constexpr int64_t kStep = Ops::kPairs ? 2 : 1;
          const int64_t kp = Ops::b_tile(np) / NR, o = co_tiles * MR;
          for (int64_t k = 0; k < kp; k += kStep) {  // one run per pixel (pair): one NR tile
            Bt* d = gt + Ops::b_index(k, o, np);
            std::fill(d, d + (ldd - o) * kStep, Bt(0));
          }
        }
        if constexpr (Ops::kPairs) {
          // Rows t*MR .. of g as rows k of a B (an even count: MR is even), pairs of rows
          // interleaved; rows past C_out are zero. g is bfloat16 here: the upper halves of
          // its float copies are its bits.
          const int64_t K = co_tiles * MR, tile = Ops::b_tile(K);
          for (int64_t i = 0; i < MR; i += 2) {
            const T* r0 = i < nrow ? rows + i * ld : nullptr;
            const T* r1 = i + 1 < nrow ? rows + (i + 1) * ld : nullptr;
            for (int64_t n0 = 0; n0 < n_cols; n0 += NR) {
              Bt* d16 = gb + (n0 / NR) * tile + (t * MR + i) * NR;
              auto* d = reinterpret_cast<std::uint32_t*>(d16);
              if (r0 != nullptr && r1 != nullptr) {
                for (int64_t n = 0; n < NR; ++n) d[n] = pair_bits(r0[n0 + n], r1[n0 + n]);
              } else {
                for (int64_t n = 0; n < NR; ++n) {
                  d[n] = pair_bits(r0 != nullptr ? r0[n0 + n] : T(0),
                                   r1 != nullptr ? r1[n0 + n] : T(0));
                }
              }
            }
          }
        }
      }
      // (implicit barrier)
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < n_cblk; ++blk) {
        const int64_t c0 = blk * cb_size, nc = std::min(cb_size, C - c0);
        T* xr = zr;
        T* rr = zr + cb_size * ld;
        T* kr = zr + 2 * cb_size * ld;
        pack_rows(p.x, b0, n_img, c0, nc, xr, ld);
        for (int64_t c = 0; c < nc; ++c) {
          SpatialImage<T> im;  // the group's images of channel c, P apart
          im.t_stride = P;
          im.out_stride = P;
          im.os_h = W;
          im.os_w = 1;
          im.count = n_img;
          im.t_row = xr + c * ld;
          im.out = rr + c * ld;
          spatial_image(sp_row, im);
          im.t_row = nullptr;
          im.t_col = xr + c * ld;
          im.out = kr + c * ld;
          spatial_image(sp_col, im);
        }
        // d_fuse^T rows of this block (+)= z g^T, contracted over the group's pixels: row
        // part*cb_size + c of z is x, r or k (part 0, 1, 2) of channel c0 + c, the rows of
        // zr as they are; rows past the block's channels are zero.
        for (int64_t part = 0; part < 3; ++part) {
          Ops::pack_a_block(zt, np, part * cb_size, nc, zr + part * cb_size * ld, ld,
                            int64_t{1});
          for (int64_t c = nc; c < cb_size; ++c) Ops::zero_a_row(zt, np, part * cb_size + c);
        }
        for (int64_t r = 3 * cb_size; r < z_tiles * MR; ++r) Ops::zero_a_row(zt, np, r);
        // The last group's last pass stores d_fuse^T transposed, straight into d_fuse: row
        // part*cb_size + c is d_fuse's column part*C + c0 + c; earlier ones sum in dblk.
        TransposedStore<T> ts;
        if (grp == n_groups - 1) {
          for (int64_t r = 0; r < z_tiles * MR; ++r) {
            const int64_t part = r / cb_size, c = r % cb_size;
            d_off[r] = part < 3 && c < nc ? (part * C + c0 + c) * p.d_fuse.stride[1] : -1;
          }
          ts.base = p.d_fuse.data;
          ts.row_off = d_off.data();
          ts.n_stride = p.d_fuse.stride[0];
          ts.n_end = Co;
        }
        Ops::gemm_tiles(z_tiles, ldd, np, zt, gt, dblk + blk * z_tiles * MR * ldd, ldd, grp > 0,
                        grp == n_groups - 1 ? &ts : nullptr);
        // [gr; gk (; g_id)] = [F_row^T; F_col^T (; F_id^T)] g for this block's channels.
        if constexpr (Ops::kPairs) {
          Ops::gemm_tiles(grk_tiles, n_cols, co_tiles * MR, af + blk * af_size, gb, grk, ld,
                          false);
        } else {
          gemm(grk_tiles, n_cols, Co, af + blk * af_size, gp, NR, ld, grk, ld, false);
        }
        if (want_dx) {
          for (int64_t c = 0; c < nc; ++c) {
            SpatialImage<T> im;  // the group's images of channel c, P apart
            im.t_row = grk + c * ld;
            im.t_col = grk + (cb_size + c) * ld;
            im.t_id = grk + (2 * cb_size + c) * ld;
            im.t_stride = P;
            im.count = n_img;
            spatial_store(sp_t, im, p.dx.data + b0 * p.dx.stride[0] + (c0 + c) * p.dx.stride[1],
                          p.dx.stride[0], p.dx.stride[2], p.dx.stride[3], buf);
          }
        }

        T* part = parts + blk * part_size;
        T* d_rw = part;
        T* d_cw = d_rw + W * ldwp;
        double* d_rb = bias_parts + blk * (W + H);
        double* d_cb = d_rb + W;
        // d_row_weight[w][v] += sum over (c, image, h) of gr[.., h, w] x[.., h, v].
        OuterArgs<T> o;
        o.d = d_rw;
        o.ldd = ldwp;
        o.rows = W;
        o.cols = W;
        o.a = grk;
        o.lda = W;
        o.b = xr;
        o.ldb = W;
        o.K = n_img * H;
        o.nseg = nc;
        o.seg_a = ld;
        o.seg_b = ld;
        outer_accumulate(o, d_rb);
        // d_col_weight[h][u] += sum over (c, image, w) of gk[.., h, w] x[.., u, w]: the same
        // with both images transposed.
        for (int64_t c = 0; c < nc; ++c) {
          for (int64_t i = 0; i < n_img; ++i) {
            const int64_t off = (c * n_img + i) * P;
            pack_image_transposed(grk + (cb_size + c) * ld + i * P, W, int64_t{1}, H, W,
                                  gk_t + off);
            pack_image_transposed(xr + c * ld + i * P, W, int64_t{1}, H, W, x_t + off);
          }
        }
        std::fill(x_t + nc * np, x_t + nc * np + L, T(0));
        o = OuterArgs<T>{};
        o.d = d_cw;
        o.ldd = ldhp;
        o.rows = H;
        o.cols = H;
        o.a = gk_t;
        o.lda = H;
        o.b = x_t;
        o.ldb = H;
        o.K = nc * n_img * W;
        outer_accumulate(o, d_cb);
      }
      // (implicit barrier before the next group's g overwrites gp and gt)
    }
  }

  std::vector<double> total(static_cast<size_t>(part_size + W + H), 0.0);
  for (int64_t blk = 0; blk < n_cblk; ++blk) {
    const T* part = parts + blk * part_size;
    for (int64_t i = 0; i < part_size; ++i) total[i] += static_cast<double>(part[i]);
    const double* bias = bias_parts + blk * (W + H);
    for (int64_t i = 0; i < W + H; ++i) total[part_size + i] += bias[i];
  }
  const double* t = total.data();
  write_matrix(p.d_row_weight, t, ldwp);
  write_matrix(p.d_col_weight, t + W * ldwp, ldhp);
  write_vector(p.d_row_bias, t + part_size);
  write_vector(p.d_col_bias, t + part_size + W);
}

template <typename S>
void mix_wgrad_views(const MixWgradViews<S>& p) {
#if SMLP_CPU_BF16_DOT
  if constexpr (std::is_same_v<S, bf16>) {
    mix_wgrad_impl<S, DotGemm>(p);
    return;
  }
#endif
  mix_wgrad_impl<S, FloatGemm<Compute<S>>>(p);
}

}  // namespace

void mix_fwd(const MixFwdParams& p) {
  run_typed<MixFwdViews>(p, [](const auto& views) { mix_fwd_views(views); });
}

void mix_wgrad(const MixWgradParams& p) {
  run_typed<MixWgradViews>(p, [](const auto& views) { mix_wgrad_views(views); });
}

int last_launch_threads() { return last_launch_threads_slot(); }

}  // namespace smlp::cpu::SMLP_CPU_ISA
