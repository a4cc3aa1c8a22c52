// Building blocks of the CPU launchers (mix.cpp, axis_mix.cpp): threads, scratch memory,
// the register-tiled multiply-add kernels and the packing routines.
//
// Every hot loop is a register tile: MR x NV accumulator vectors, updated per k by a rank-1
// product (NV vector loads of B, MR broadcasts of A). Three kernels are built that way:
//
//   gemm        C (MR x NR tiles) = A (packed MR-row panels) x B, cache-blocked over k: the
//               channel mixing (the fuse GEMM of the forward, F^T g and z g^T of the backward);
//               gemm_dot (DotGemm) is its bfloat16 twin on vdpbf16ps.
//   spatial     images' row mix (x W^T along W) and column mix (W x along H), plus the
//               identity term and the biases, written to a strided output (fma_tile).
//   outer       D += sum_k a_k b_k^T over many rows: the row/column weight gradients
//               (fma_tile).
//
// Buffers the kernels read with full vectors carry at least one vector of slack after their
// last element (the lanes past a row's end are computed and dropped, never stored).

#pragma once

#include "cpu/isa.h"  // first: see there
#include "cpu/simd.h"
#include "cpu/storage.h"
#include "cpu/views.h"

namespace smlp::cpu::SMLP_CPU_ISA {

// ---------------------------------------------------------------------------------------
// Threads and sizes
// ---------------------------------------------------------------------------------------

#if defined(_OPENMP)
inline int max_threads() { return omp_get_max_threads(); }
inline int thread_id() { return omp_get_thread_num(); }
inline int team_size() { return omp_get_num_threads(); }
#else
inline int max_threads() { return 1; }
inline int thread_id() { return 0; }
inline int team_size() { return 1; }
#endif

// Floating-point operations per thread below which a launch gets fewer threads: about 4
// MFLOP, tens of microseconds of work on one core. Opening a parallel region costs a few
// microseconds on an idle machine, but when another process holds a core the team waits
// at its barriers for a descheduled thread, up to a scheduler time slice (milliseconds): a
// tiny call on all threads then took 100x what the same call takes on one.
constexpr int64_t kGrainFlops = int64_t{1} << 22;

// The calling thread's team size of its latest launch at this level (what threads_for
// chose), for tests.
inline int& last_launch_threads_slot() {
  static thread_local int n = 0;
  return n;
}

// Threads for a launch of about `flops` operations: one per kGrainFlops, at least one, at
// most OpenMP's team size (torch.set_num_threads sets it). Results do not depend on it.
inline int threads_for(int64_t flops) {
  const int64_t want = std::max<int64_t>(1, flops / kGrainFlops);
  const int n = static_cast<int>(std::min<int64_t>(max_threads(), want));
  last_launch_threads_slot() = n;
  return n;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A row length of at least n elements, a multiple of q, and not a multiple of 4 KiB in
// bytes: rows exactly 4 KiB apart map to the same L1 sets and evict each other.
template <typename T>
int64_t leading_dim(int64_t n, int64_t q) {
  int64_t ld = round_up(n, q);
  if ((ld * static_cast<int64_t>(sizeof(T))) % 4096 == 0) ld += q;
  return ld;
}

// Work items 0 .. items-1 split into one contiguous range per thread; a thread takes its own
// range in order (neighbouring items share packed operands), then helps with the others'
// ranges, so a thread slowed down by another process does not hold up the whole launch.
// Which thread runs an item never changes its result.
class ItemQueues {
 public:
  explicit ItemQueues(int max_threads)
      : next_(new std::atomic<int64_t>[max_threads]), end_(max_threads) {}

  // By one thread, before any take(), with the team size of the parallel region.
  void reset(int64_t items, int threads) {
    threads_ = threads;
    for (int t = 0; t < threads; ++t) {
      next_[t].store(items * t / threads, std::memory_order_relaxed);
      end_[t] = items * (t + 1) / threads;
    }
  }

  // The next item for thread tid, or -1 when every item is taken.
  int64_t take(int tid) {
    for (int v = 0; v < threads_; ++v) {
      const int q = (tid + v) % threads_;
      if (next_[q].load(std::memory_order_relaxed) >= end_[q]) continue;
      const int64_t item = next_[q].fetch_add(1, std::memory_order_relaxed);
      if (item < end_[q]) return item;
    }
    return -1;
  }

 private:
  std::unique_ptr<std::atomic<int64_t>[]> next_;
  std::vector<int64_t> end_;
  int threads_ = 1;
};

// ---------------------------------------------------------------------------------------
// Scratch memory
// ---------------------------------------------------------------------------------------

// Offsets of the buffers one launcher needs, each 64-byte aligned, so that they come from a
// single allocation: the calling thread keeps it (grow-only) between calls, which saves the
// page faults of fresh memory on every call. Allocated before any parallel region, so an
// allocation failure is a C++ exception, never a crash inside OpenMP.
class ScratchLayout {
 public:
  template <typename T>
  size_t add(int64_t count) {
    const size_t offset = bytes_;
    bytes_ += static_cast<size_t>(round_up(count * static_cast<int64_t>(sizeof(T)), 64));
    return offset;
  }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
};

class Arena {
 public:
  ~Arena() { std::free(data_); }
  char* reserve(size_t bytes) {
    if (bytes > capacity_) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
      const size_t rounded = (bytes + 4095) / 4096 * 4096;
      data_ = static_cast<char*>(std::aligned_alloc(4096, rounded));
      if (data_ == nullptr) throw std::bad_alloc();
      capacity_ = rounded;
    }
    return data_;
  }

 private:
  char* data_ = nullptr;
  size_t capacity_ = 0;
};

inline char* thread_arena(size_t bytes) {
  thread_local Arena arena;
  return arena.reserve(bytes);
}

template <typename T>
T* at(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

// ---------------------------------------------------------------------------------------
// The register tile
// ---------------------------------------------------------------------------------------

// acc[i][j] += sum_k A(i, k) * B(k, j*L .. j*L+L-1) for k < K, with
//   B(k, .)  = b + k*ldb                       (NV vectors per k)
//   A(i, k)  = a[i*a_stride + k]   if kRowsA   (A given by rows, e.g. an image's rows)
//            = a[k*a_stride + i]   otherwise   (A given by columns: packed panels)
template <typename T, int MR, int NV, bool kRowsA>
inline void fma_tile(typename Simd<T>::V (&acc)[MR][NV], int64_t K, const T* a,
                     int64_t a_stride, const T* b, int64_t ldb) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::kLanes;
  for (int64_t k = 0; k < K; ++k) {
    V bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) bv[j] = S::load(b + j * L);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const V av = S::set1(kRowsA ? a[i * a_stride + k] : a[i]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
    }
    b += ldb;
    if constexpr (!kRowsA) a += a_stride;
  }
}

template <typename T, int MR, int NV>
inline void zero_tile(typename Simd<T>::V (&acc)[MR][NV]) {
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[i][j] = Simd<T>::zero();
  }
}

// Tiles of at most kMaxTileVecs vectors across; rows per tile so that the accumulators fit
// the register file (at most 12: more rows add loads, not reuse).
inline constexpr int kMaxTileVecs = 8;

constexpr int max_tile_rows(int nv) {
  const int rows = kAccRegs / nv;
  return rows < 1 ? 1 : (rows > 12 ? 12 : rows);
}

// Calls Kernel<T, mr, nv>::run(args...) for run-time mr and nv (1 <= nv <= kMaxTileVecs,
// 1 <= mr <= max_tile_rows(nv)).
template <template <typename, int, int> class Kernel, typename T, int NV, int MR,
          typename... Args>
inline void dispatch_rows(int mr, const Args&... args) {
  if constexpr (MR >= 1) {
    if (mr == MR) {
      Kernel<T, MR, NV>::run(args...);
      return;
    }
    dispatch_rows<Kernel, T, NV, MR - 1>(mr, args...);
  }
}

template <template <typename, int, int> class Kernel, typename T, int NV = kMaxTileVecs,
          typename... Args>
inline void dispatch_tile(int nv, int mr, const Args&... args) {
  if constexpr (NV >= 1) {
    if (nv == NV) {
      dispatch_rows<Kernel, T, NV, max_tile_rows(NV)>(mr, args...);
      return;
    }
    dispatch_tile<Kernel, T, NV - 1>(nv, mr, args...);
  }
}

// Splits n rows into the fewest tiles of at most max_rows, of near-equal sizes, and calls
// fn(first_row, rows) for each.
template <typename Fn>
inline void for_each_row_tile(int64_t n, int max_rows, Fn&& fn) {
  const int64_t tiles = ceil_div(n, max_rows);
  const int64_t base = n / tiles, extra = n % tiles;
  int64_t first = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t rows = base + (t < extra ? 1 : 0);
    fn(first, static_cast<int>(rows));
    first += rows;
  }
}

// ---------------------------------------------------------------------------------------
// GEMM: C = A x B (or C += A x B)
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// 8 x 8 transposes: dst row j = src column j (rows `ss` and `ds` elements apart)
// ---------------------------------------------------------------------------------------
#if SMLP_CPU_AVX
inline void transpose8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8], u[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved, per 128-bit half
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {  // 4 rows of columns c and c+4 per vector
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // rows 0-3 and 4-7 of columns j and j+4
    _mm256_storeu_ps(dst + j * ds, _mm256_permute2f128_ps(u[j], u[j + 4], 0x20));
    _mm256_storeu_ps(dst + (j + 4) * ds, _mm256_permute2f128_ps(u[j], u[j + 4], 0x31));
  }
}

inline void transpose8x8(const std::uint16_t* src, int64_t ss, std::uint16_t* dst, int64_t ds) {
  __m128i a[8], b[8], c[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {  // rows i, i+1 interleaved: columns 0-3, 4-7
    b[i] = _mm_unpacklo_epi16(a[i], a[i + 1]);
    b[i + 1] = _mm_unpackhi_epi16(a[i], a[i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {  // 4 rows of columns (0,1), (2,3), (4,5), (6,7)
    c[i] = _mm_unpacklo_epi32(b[i], b[i + 2]);
    c[i + 1] = _mm_unpackhi_epi32(b[i], b[i + 2]);
    c[i + 2] = _mm_unpacklo_epi32(b[i + 1], b[i + 3]);
    c[i + 3] = _mm_unpackhi_epi32(b[i + 1], b[i + 3]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // columns 2j and 2j+1: rows 0-3 from c[j], 4-7 from c[j+4]
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * j * ds),
                     _mm_unpacklo_epi64(c[j], c[j + 4]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * j + 1) * ds),
                     _mm_unpackhi_epi64(c[j], c[j + 4]));
  }
}
#endif

// Where a GEMM's last k pass stores C, transposed, instead of into c (the fused
// weight gradient writes d_fuse this way, without a transposing pass over the whole of it):
// C(r, n) goes to base[row_off[r] + n * n_stride] for the rows with row_off[r] >= 0 and the
// columns n < n_end; c is not written by that pass.
template <typename T>
struct TransposedStore {
  T* base = nullptr;
  const int64_t* row_off = nullptr;  // one entry per row of C
  int64_t n_stride = 0;
  int64_t n_end = 0;
};

// Stores an MR x (NV*L) tile whose rows are `tile` (row-major, NV*L apart) through `ts`:
// rows r0 .., columns n0 ... Column-outer, so that rows with consecutive offsets (channels
// of d_fuse's row) are written one after the other.
template <typename T, int MR, int N>
inline void store_tile_transposed(const T (&tile)[MR][N], const TransposedStore<T>& ts,
                                  int64_t r0, int64_t n0) {
  const int64_t* off = ts.row_off + r0;
  const int nn = static_cast<int>(std::min<int64_t>(N, ts.n_end - n0));
  bool dense = true;  // every row stored, at consecutive offsets
  for (int i = 0; i < MR; ++i) dense = dense && off[i] == off[0] + i;
  int j = 0;
#if SMLP_CPU_AVX
  if constexpr (std::is_same_v<T, float> && MR == 8) {
    if (dense) {
      for (; j + 8 <= nn; j += 8) {
        transpose8x8(&tile[0][j], N, ts.base + (n0 + j) * ts.n_stride + off[0], ts.n_stride);
      }
    }
  }
#endif
  for (; j < nn; ++j) {
    T* col = ts.base + (n0 + j) * ts.n_stride;
    if (dense) {
      T* d = col + off[0];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) d[i] = tile[i][j];
    } else {
      for (int i = 0; i < MR; ++i) {
        if (off[i] >= 0) col[off[i]] = tile[i][j];
      }
    }
  }
}

// The end of a GEMM tile: C (+)= the MR x NV vectors of acc at c (row-major, ldc), or,
// with ts, the same values stored transposed through it (C read first if accumulating).
template <typename T, int MR, int NV>
inline void store_acc_tile(const typename Simd<T>::V (&acc)[MR][NV], T* c, int64_t ldc,
                           bool accumulate, const TransposedStore<T>* ts, int64_t r0,
                           int64_t n0) {
  using S = Simd<T>;
  constexpr int L = S::kLanes;
  if (ts != nullptr) {
    T tile[MR][NV * L];
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        S::store(&tile[i][j * L], accumulate ? S::load(c + i * ldc + j * L) + acc[i][j]
                                             : acc[i][j]);
      }
    }
    store_tile_transposed(tile, *ts, r0, n0);
    return;
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      T* cp = c + i * ldc + j * L;
      S::store(cp, accumulate ? S::load(cp) + acc[i][j] : acc[i][j]);
    }
  }
}

template <typename T>
struct GemmShape {
  // MR x NV accumulators fill the register budget; per k, NV loads of B and MR broadcasts
  // of A feed MR*NV FMAs (8 x 3 measured a few percent faster than 12 x 2 or 6 x 4).
  static constexpr int MR = kAccRegs >= 24 ? 8 : 4;  // rows of A per register tile
  static constexpr int NV = 3;                       // vectors of B per register tile
  static constexpr int NR = NV * Simd<T>::kLanes;     // columns per register tile
  static constexpr int KB = Simd<T>::kLanes;          // k per block of a packed A panel
  static constexpr int KC = 192;  // k per pass: a KC x NR slice of B (<= 36 KiB) stays in L1

  // Elements of one packed A panel (MR rows, K rounded up to whole blocks).
  static int64_t panel_size(int64_t K) { return round_up(K, KB) * MR; }
};

// A packed A panel holds MR rows in blocks of KB k-values, each block row-major:
// A(i, k) at panel[(k / KB)*MR*KB + i*KB + k % KB]. A row-major A packs with plain vector
// copies, and the kernel's MR broadcasts per k use constant offsets from one pointer.
// NV = GemmShape::NV is the main tile; narrower NV serve a last, narrower column tile.
template <typename T, int NV>
inline void gemm_tile(int64_t K, const T* a, const T* b, int64_t ldb, T* c, int64_t ldc,
                      bool accumulate, const TransposedStore<T>* ts = nullptr, int64_t r0 = 0,
                      int64_t n0 = 0) {
  using S = Simd<T>;
  using V = typename S::V;
  using Sh = GemmShape<T>;
  constexpr int L = S::kLanes, MR = Sh::MR, KB = Sh::KB;
  V acc[MR][NV];
  zero_tile<T, MR, NV>(acc);
  for (int64_t k0 = 0; k0 < K; k0 += KB) {
    const int kn = static_cast<int>(std::min<int64_t>(KB, K - k0));
    for (int kk = 0; kk < kn; ++kk) {
      V bv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) bv[j] = S::load(b + j * L);
#pragma GCC unroll 12
      for (int i = 0; i < MR; ++i) {
        const V av = S::set1(a[i * KB + kk]);
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
      }
      b += ldb;
    }
    a += MR * KB;
  }
  store_acc_tile<T, MR, NV>(acc, c, ldc, accumulate, ts, r0, n0);
}

// C[m][n] (+)= sum_k A[m][k] B[k][n] for m < m_tiles*MR, n < n_cols (a multiple of the
// vector width; B and C have room for whole NR-column tiles).
//   A: packed panels (pack_a_row), tile t at ap + t*panel_size(K).
//   B: element (k, n) at b + (n / NR)*b_tile_stride + k*ldb + n % NR; a row-major B has
//      b_tile_stride = NR, a B packed in NR-column tiles has b_tile_stride = K*NR, ldb = NR.
//   C: row-major, ldc.
// Loop order: a KC x NR slice of B is loaded into L1 once and used by every row tile; k is
// split into near-equal passes of at most KC. With ts, the last pass stores through it (C
// read first if accumulating) and c keeps the earlier passes' sums only.
template <typename T>
void gemm(int64_t m_tiles, int64_t n_cols, int64_t K, const T* ap, const T* b,
          int64_t b_tile_stride, int64_t ldb, T* c, int64_t ldc, bool accumulate,
          const TransposedStore<T>* ts = nullptr) {
  using Sh = GemmShape<T>;
  constexpr int L = Simd<T>::kLanes;
  const int64_t panel = Sh::panel_size(K);
  const int64_t passes = ceil_div(K, Sh::KC);
  const int64_t kc_max = round_up(ceil_div(K, passes), Sh::KB);
  for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const int64_t kc = std::min<int64_t>(kc_max, K - k0);
    const bool acc = accumulate || k0 > 0;
    const TransposedStore<T>* last = k0 + kc >= K ? ts : nullptr;
    for (int64_t n0 = 0; n0 < n_cols; n0 += Sh::NR) {
      const T* bt = b + (n0 / Sh::NR) * b_tile_stride + k0 * ldb;
      const int64_t nv = std::min<int64_t>(Sh::NV, ceil_div(n_cols - n0, L));
      for (int64_t t = 0; t < m_tiles; ++t) {
        const T* at = ap + t * panel + k0 * Sh::MR;
        T* ct = c + t * Sh::MR * ldc + n0;
        const int64_t r0 = t * Sh::MR;
        if (nv == Sh::NV) {
          gemm_tile<T, Sh::NV>(kc, at, bt, ldb, ct, ldc, acc, last, r0, n0);
        } else if (nv == 2) {
          gemm_tile<T, 2>(kc, at, bt, ldb, ct, ldc, acc, last, r0, n0);
        } else {
          gemm_tile<T, 1>(kc, at, bt, ldb, ct, ldc, acc, last, r0, n0);
        }
      }
    }
  }
}

// Packs row r of A into panels (see gemm_tile): A(r, k) = data[k*k_stride] for k < K, or
// zeros for data == nullptr (padding rows).
template <typename T, typename S>
void pack_a_row(T* ap, int64_t K, int64_t r, const S* data, int64_t k_stride) {
  using Sh = GemmShape<T>;
  constexpr int MR = Sh::MR, KB = Sh::KB;
  T* row = ap + (r / MR) * Sh::panel_size(K) + (r % MR) * KB;
  for (int64_t k0 = 0; k0 < K; k0 += KB) {
    T* d = row + (k0 / KB) * MR * KB;
    const int64_t kn = std::min<int64_t>(KB, K - k0);
    if (data == nullptr) {
      for (int64_t kk = 0; kk < kn; ++kk) d[kk] = T(0);
    } else if (k_stride == 1 && kn == KB) {
      load_row(data + k0, KB, d);  // a fixed-size copy the compiler inlines (not a call)
    } else if (k_stride == 1) {
      load_row(data + k0, kn, d);
    } else {
      for (int64_t kk = 0; kk < kn; ++kk) d[kk] = load_as<T>(data[(k0 + kk) * k_stride]);
    }
  }
}

// Packs rows r0 .. r0+nr-1 of A with A(r0 + r, k) = base[r*rs + k*ks]. When consecutive
// rows are closer in memory than consecutive k (a transposed view), the source is read in
// tiles of KB k-values, so that the strided reads hit lines already in L1.
template <typename T, typename S>
void pack_a_block(T* ap, int64_t K, int64_t r0, int64_t nr, const S* base, int64_t rs,
                  int64_t ks) {
  using Sh = GemmShape<T>;
  constexpr int MR = Sh::MR, KB = Sh::KB;
  if (ks == 1 || ks <= rs) {
    for (int64_t r = 0; r < nr; ++r) pack_a_row(ap, K, r0 + r, base + r * rs, ks);
    return;
  }
  // A transposed view: a KB x nr tile of the source at a time (KB rows of memory, read along
  // them), small enough for L1.
  const int64_t panel = Sh::panel_size(K);
  for (int64_t k0 = 0; k0 < K; k0 += KB) {
    const int64_t kn = std::min<int64_t>(KB, K - k0);
    int64_t r = r0;
#if SMLP_CPU_AVX
    if constexpr (std::is_same_v<T, float> && std::is_same_v<S, float> && MR == 8) {
      // Whole panels of 8 rows with the rows adjacent in memory: 8 x 8 transposes.
      if (rs == 1 && kn % 8 == 0 && r0 % MR == 0) {
        for (; r + 8 <= r0 + nr; r += 8) {
          T* d = ap + (r / MR) * panel + (k0 / KB) * MR * KB;
          const S* src = base + k0 * ks + (r - r0);
          for (int64_t kk = 0; kk < kn; kk += 8) transpose8x8(src + kk * ks, ks, d + kk, KB);
        }
      }
    }
#endif
    for (; r < r0 + nr; ++r) {
      T* d = ap + (r / MR) * panel + (r % MR) * KB + (k0 / KB) * MR * KB;
      const S* src = base + k0 * ks + (r - r0) * rs;
      for (int64_t kk = 0; kk < kn; ++kk) d[kk] = load_as<T>(src[kk * ks]);
    }
  }
}

// sum_k A(r, k) of row r of packed panels: one vector per k block, lanes added at the end.
template <typename T>
T panel_row_sum(const T* ap, int64_t K, int64_t r) {
  using S = Simd<T>;
  using Sh = GemmShape<T>;
  const T* row = ap + (r / Sh::MR) * Sh::panel_size(K) + (r % Sh::MR) * Sh::KB;
  const int64_t full = K / Sh::KB;
  typename S::V acc = S::zero();
  for (int64_t kb = 0; kb < full; ++kb) acc += S::load(row + kb * Sh::MR * Sh::KB);
  T sum = S::hsum(acc);
  for (int64_t k = full * Sh::KB; k < K; ++k) sum += row[full * Sh::MR * Sh::KB + k % Sh::KB];
  return sum;
}

// The GEMM of the channel mixing as the fused launchers use it, in T: A is packed panels of
// T, B is packed NR-column tiles of T (element (k, n) at (n / NR)*K*NR + k*NR + n % NR).
template <typename T>
struct FloatGemm {
  using Sh = GemmShape<T>;
  using AType = T;  // packed A elements
  using BType = T;  // packed B elements
  static constexpr bool kPairs = false;
  static constexpr int MR = Sh::MR, NR = Sh::NR;

  static int64_t panel_size(int64_t K) { return Sh::panel_size(K); }
  // Elements of one NR-column tile of B with K rows.
  static int64_t b_tile(int64_t K) { return K * NR; }
  static int64_t b_index(int64_t k, int64_t n, int64_t K) {
    return (n / NR) * K * NR + k * NR + n % NR;
  }
  template <typename S>
  static T to_b(S v) {
    return load_as<T>(v);
  }
  template <typename S>
  static void pack_a_block(T* ap, int64_t K, int64_t r0, int64_t nr, const S* base, int64_t rs,
                           int64_t ks) {
    SMLP_CPU_ISA::pack_a_block(ap, K, r0, nr, base, rs, ks);
  }
  static void zero_a_row(T* ap, int64_t K, int64_t r) {
    pack_a_row(ap, K, r, static_cast<const T*>(nullptr), 0);
  }
  static T row_sum(const T* ap, int64_t K, int64_t r) { return panel_row_sum(ap, K, r); }
  // C (+)= A B over n_cols columns of B packed in tiles (b_tile(K) apart).
  static void gemm_tiles(int64_t m_tiles, int64_t n_cols, int64_t K, const T* ap, const T* bp,
                         T* c, int64_t ldc, bool accumulate,
                         const TransposedStore<T>* ts = nullptr) {
    gemm(m_tiles, n_cols, K, ap, bp, b_tile(K), NR, c, ldc, accumulate, ts);
  }
};

#if SMLP_CPU_BF16_DOT
// ---------------------------------------------------------------------------------------
// bfloat16 GEMM with vdpbf16ps: fp32 accumulators += the products of bfloat16 pairs
// ---------------------------------------------------------------------------------------
//
// vdpbf16ps multiplies the two bfloat16 halves of each 32-bit lane of one operand with
// those of the other and adds both products into the fp32 lane. So k comes in pairs:
//   A panels: MR rows in blocks of KB k-values, row-major per block, as in gemm_tile; a
//             pair (A(i, k), A(i, k+1)), k even, is one 32-bit broadcast.
//   B:        element (k, n) at (n / NR)*b_tile + (k / 2)*2*NR + (n % NR)*2 + k % 2: per
//             pair of k, NR lanes of (B(k, n), B(k+1, n)).
// K is rounded up to even; the padding is zero in A and B. The tile is the fp32 one (MR x
// NV zmm accumulators, NR = 48 columns), so C has the layout of the fp32 GEMM's.
struct DotShape {
  static constexpr int MR = 8, NV = 3, L = 16, NR = NV * L;
  static constexpr int KB = 32;   // k per block of a packed A panel (16 pairs)
  static constexpr int KC = 384;  // k per pass: a KC x NR slice of B is 36 KiB
  static int64_t panel_size(int64_t K) { return round_up(K, KB) * MR; }
};
static_assert(DotShape::NR == GemmShape<float>::NR && DotShape::L == Simd<float>::kLanes,
              "the fp32 and bf16 tiles share C and its vectors");

template <typename S>
inline std::uint16_t bf16_bits(S v) {
  if constexpr (std::is_same_v<S, bf16>) {
    return v.bits;
  } else {
    return to_bf16(static_cast<float>(v)).bits;
  }
}

template <int NV>
inline void gemm_dot_tile(int64_t K, const std::uint16_t* a, const std::uint16_t* b,
                          int64_t ldb, float* c, int64_t ldc, bool accumulate,
                          const TransposedStore<float>* ts = nullptr, int64_t r0 = 0,
                          int64_t n0 = 0) {
  using V = Simd<float>::V;  // a zmm of floats, as __m512
  constexpr int MR = DotShape::MR, KB = DotShape::KB, L = DotShape::L;
  V acc[MR][NV];
  zero_tile<float, MR, NV>(acc);
  for (int64_t k0 = 0; k0 < K; k0 += KB) {
    const int pairs = static_cast<int>((std::min<int64_t>(KB, K - k0) + 1) / 2);
    for (int kp = 0; kp < pairs; ++kp) {
      __m512bh bv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        bv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + j * 2 * L));
      }
#pragma GCC unroll 12
      for (int i = 0; i < MR; ++i) {
        std::int32_t pair;
        std::memcpy(&pair, a + i * KB + 2 * kp, sizeof pair);
        const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) {
          acc[i][j] = reinterpret_cast<V>(
              _mm512_dpbf16_ps(reinterpret_cast<__m512>(acc[i][j]), av, bv[j]));
        }
      }
      b += ldb;
    }
    a += MR * KB;
  }
  store_acc_tile<float, MR, NV>(acc, c, ldc, accumulate, ts, r0, n0);
}

// The bfloat16 twin of FloatGemm (same interface; A and B hold bfloat16 bits).
struct DotGemm {
  using AType = std::uint16_t;
  using BType = std::uint16_t;
  static constexpr bool kPairs = true;  // B holds k in interleaved pairs
  static constexpr int MR = DotShape::MR, NR = DotShape::NR, KB = DotShape::KB;

  static int64_t panel_size(int64_t K) { return DotShape::panel_size(K); }
  static int64_t b_tile(int64_t K) { return round_up(K, 2) * NR; }
  static int64_t b_index(int64_t k, int64_t n, int64_t K) {
    return (n / NR) * b_tile(K) + (k / 2) * 2 * NR + (n % NR) * 2 + k % 2;
  }
  template <typename S>
  static std::uint16_t to_b(S v) {
    return bf16_bits(v);
  }
  // Rows r0 .. r0+nr-1 with A(r0 + r, k) = base[r*rs + k*ks]; k up to round_up(K, KB) zero.
  template <typename S>
  static void pack_a_block(std::uint16_t* ap, int64_t K, int64_t r0, int64_t nr, const S* base,
                           int64_t rs, int64_t ks) {
    const int64_t panel = panel_size(K);
    if (ks != 1 && ks > rs) {
      // A transposed view: a KB x nr tile of the source at a time (KB rows of memory, read
      // along them), small enough for L1.
      // The last block's padding (k from K up to a whole block) is zero.
      if (K % KB != 0) {
        for (int64_t r = r0; r < r0 + nr; ++r) {
          std::uint16_t* d = ap + (r / MR) * panel + (r % MR) * KB + (K / KB) * MR * KB;
          std::fill(d + K % KB, d + KB, std::uint16_t{0});
        }
      }
      for (int64_t k0 = 0; k0 < K; k0 += KB) {
        const int64_t kn = std::min<int64_t>(KB, K - k0);
        int64_t r = r0;
        if constexpr (std::is_same_v<S, bf16>) {
          // Whole panels of 8 rows with the rows adjacent in memory: 8 x 8 transposes.
          if (rs == 1 && kn % 8 == 0 && r0 % MR == 0) {
            for (; r + 8 <= r0 + nr; r += 8) {
              std::uint16_t* d = ap + (r / MR) * panel + (k0 / KB) * MR * KB;
              const auto* src = reinterpret_cast<const std::uint16_t*>(base + k0 * ks + (r - r0));
              for (int64_t kk = 0; kk < kn; kk += 8) {
                transpose8x8(src + kk * ks, ks, d + kk, KB);
              }
            }
          }
        }
        for (; r < r0 + nr; ++r) {
          std::uint16_t* d = ap + (r / MR) * panel + (r % MR) * KB + (k0 / KB) * MR * KB;
          const S* src = base + k0 * ks + (r - r0) * rs;
          for (int64_t kk = 0; kk < kn; ++kk) d[kk] = bf16_bits(src[kk * ks]);
        }
      }
      return;
    }
    for (int64_t r = r0; r < r0 + nr; ++r) {
      std::uint16_t* row = ap + (r / MR) * panel + (r % MR) * KB;
      const S* src = base + (r - r0) * rs;
      for (int64_t k0 = 0; k0 < K; k0 += KB) {
        std::uint16_t* d = row + (k0 / KB) * MR * KB;
        const int64_t kn = std::min<int64_t>(KB, K - k0);
        if (ks == 1 && std::is_same_v<S, bf16> && kn == KB) {
          std::memcpy(d, src + k0, sizeof(std::uint16_t) * KB);  // one vector
        } else if (ks == 1 && std::is_same_v<S, bf16>) {
          std::memcpy(d, src + k0, sizeof(std::uint16_t) * static_cast<size_t>(kn));
        } else {
          for (int64_t kk = 0; kk < kn; ++kk) d[kk] = bf16_bits(src[(k0 + kk) * ks]);
        }
        std::fill(d + kn, d + KB, std::uint16_t{0});
      }
    }
  }
  static void zero_a_row(std::uint16_t* ap, int64_t K, int64_t r) {
    std::uint16_t* row = ap + (r / MR) * panel_size(K) + (r % MR) * KB;
    for (int64_t k0 = 0; k0 < round_up(K, KB); k0 += KB) {
      std::fill(row + (k0 / KB) * MR * KB, row + (k0 / KB) * MR * KB + KB, std::uint16_t{0});
    }
  }
  // KB partial sums, one per position in a block (the padding is zero), added in a fixed
  // order: vector adds, not a chain of scalar ones.
  static float row_sum(const std::uint16_t* ap, int64_t K, int64_t r) {
    const std::uint16_t* row = ap + (r / MR) * panel_size(K) + (r % MR) * KB;
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
      const std::uint16_t* blk = row + (k0 / KB) * MR * KB;
      // bfloat16 -> float32: the 16 bits become the upper half of a 32-bit lane.
      const __m512i v0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(blk)));
      const __m512i v1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(blk + 16)));
      lo = _mm512_add_ps(lo, _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)));
      hi = _mm512_add_ps(hi, _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)));
    }
    float part[KB];
    _mm512_storeu_ps(part, lo);
    _mm512_storeu_ps(part + 16, hi);
    float sum = 0;
    for (int kk = 0; kk < KB; ++kk) sum += part[kk];
    return sum;
  }
  static void gemm_tiles(int64_t m_tiles, int64_t n_cols, int64_t K, const std::uint16_t* ap,
                         const std::uint16_t* bp, float* c, int64_t ldc, bool accumulate,
                         const TransposedStore<float>* ts = nullptr) {
    gemm_dot(m_tiles, n_cols, K, ap, bp, b_tile(K), c, ldc, accumulate, ts);
  }

  // C (+)= A B; B element (k, n) at b + (n / NR)*b_tile_stride + (k / 2)*2*NR + ...
  static void gemm_dot(int64_t m_tiles, int64_t n_cols, int64_t K, const std::uint16_t* ap,
                       const std::uint16_t* b, int64_t b_tile_stride, float* c, int64_t ldc,
                       bool accumulate, const TransposedStore<float>* ts = nullptr) {
    constexpr int L = DotShape::L;
    const int64_t panel = panel_size(K);
    const int64_t passes = ceil_div(K, DotShape::KC);
    const int64_t kc_max = round_up(ceil_div(K, passes), KB);
    for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
      const int64_t kc = std::min<int64_t>(kc_max, K - k0);
      const bool acc = accumulate || k0 > 0;
      const TransposedStore<float>* last = k0 + kc >= K ? ts : nullptr;
      for (int64_t n0 = 0; n0 < n_cols; n0 += NR) {
        const std::uint16_t* bt = b + (n0 / NR) * b_tile_stride + (k0 / 2) * 2 * NR;
        const int64_t nv = std::min<int64_t>(DotShape::NV, ceil_div(n_cols - n0, L));
        for (int64_t t = 0; t < m_tiles; ++t) {
          const std::uint16_t* at = ap + t * panel + k0 * MR;
          float* ct = c + t * MR * ldc + n0;
          if (nv == DotShape::NV) {
            gemm_dot_tile<DotShape::NV>(kc, at, bt, 2 * NR, ct, ldc, acc, last, t * MR, n0);
          } else if (nv == 2) {
            gemm_dot_tile<2>(kc, at, bt, 2 * NR, ct, ldc, acc, last, t * MR, n0);
          } else {
            gemm_dot_tile<1>(kc, at, bt, 2 * NR, ct, ldc, acc, last, t * MR, n0);
          }
        }
      }
    }
  }
};
#endif  // SMLP_CPU_BF16_DOT

// ---------------------------------------------------------------------------------------
// The BatchNorm -> GELU prologue: x' = gelu(x * scale + shift), exact (erf) GELU
// ---------------------------------------------------------------------------------------

// exp(y) for y <= 0 in float, in plain arithmetic the compiler vectorizes: y = n ln2 + r
// (ln2 in two parts, so r is exact to float rounding; |r| <= ln2 / 2), exp(r) by its Taylor
// series to r^7 (truncation < 6e-9 relative), 2^n through the exponent bits. Below y = -87
// (exp(-87) ~ 1.6e-38, the smallest normal float's order) it returns 0: the result would
// be subnormal, and 2^n below there has no exponent bits.
inline float exp_nonpositive(float y0) {
  const float y = y0 < -87.0f ? -87.0f : y0;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // ln 2, its leading 16 bits
  constexpr float kLn2Lo = 1.42860682030941723e-06f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (y * kLog2e + kRound) - kRound;
  const float r = (y - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::uint32_t bits = static_cast<std::uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return y0 < -87.0f ? 0.0f : p * bits_to_float(bits);
}

// gelu(u) = u * Phi(u) = u * (1 + erf(u / sqrt 2)) / 2. Float: erfc(z), z = |u| / sqrt 2, by
// Abramowitz and Stegun 7.1.26 (absolute error <= 1.5e-7), so that Phi(u) = erfc(z) / 2 for
// u < 0 keeps its relative size where Phi is tiny, and Phi(u) = 1 - erfc(z) / 2 otherwise.
// Double: std::erf, as PyTorch's float64 GELU.
inline float gelu(float u) {
  constexpr float kInvSqrt2 = 0.707106781186547524f;
  const float z = (u < 0.0f ? -u : u) * kInvSqrt2;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  const float half_erfc = 0.5f * q * t * exp_nonpositive(-z * z);
  return u * (u < 0.0f ? half_erfc : 1.0f - half_erfc);
}

inline double gelu(double u) { return 0.5 * u * (1.0 + std::erf(u * 0.70710678118654752440)); }

// dst[i] = gelu(v[i] * scale + shift) for i < n (v overwritten), rounded to S.
template <typename S, typename T>
void bn_gelu_row(T* v, int64_t n, T scale, T shift, S* dst) {
  for (int64_t i = 0; i < n; ++i) v[i] = gelu(v[i] * scale + shift);
  store_row(v, n, dst);
}

// ---------------------------------------------------------------------------------------
// Spatial mixing of one image
// ---------------------------------------------------------------------------------------

// The packed row and column weights, shared by all images of a launch.
template <typename T>
struct SpatialPlan {
  int64_t H = 0, W = 0;
  const T* wrT = nullptr;  // [v][w] = row_weight[w][v], ldw columns, zero for w >= W
  int64_t ldw = 0;         // round_up(W, lanes)
  const T* wcT = nullptr;  // [u][h] = col_weight[h][u], H columns
  const T* rb = nullptr;   // row bias [w], zero-padded to ldw; nullptr: none
  const T* cb = nullptr;   // column bias [h]; nullptr: none
};

// The operands of `count` images (channels), each image H x W row-major (row stride W),
// channel c's at t_* + c*t_stride; any of t_id, t_row, t_col may be nullptr:
//   out_c[h][w] = t_id[h][w] + row_scale[c]*rb[w] + col_scale[c]*cb[h]
//               + sum_v t_row[h][v] row_weight[w][v] + sum_u col_weight[h][u] t_col[u][w]
// (a null scale array means 1). t_id and t_col are read with full vectors: a vector of
// slack after the last image.
template <typename T>
struct SpatialImage {
  const T* t_id = nullptr;
  const T* t_row = nullptr;
  const T* t_col = nullptr;
  int64_t t_stride = 0;
  const T* row_scale = nullptr;
  const T* col_scale = nullptr;
  T* out = nullptr;
  int64_t out_stride = 0;      // between channels
  int64_t os_h = 0, os_w = 0;  // within an image
  int64_t count = 1;
};

template <typename T, int MH, int NV>
struct SpatialKernel {
  // Rows h0 .. h0+MH-1, columns w0 .. w0+NV*L-1 (clipped to W when stored), every channel.
  static void run(const SpatialPlan<T>& s, const SpatialImage<T>& im, const int64_t& h0,
                  const int64_t& w0) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::kLanes;
    const int64_t H = s.H, W = s.W;
    for (int64_t c = 0; c < im.count; ++c) {
      const int64_t off = c * im.t_stride;
      V acc[MH][NV];
      zero_tile<T, MH, NV>(acc);
      T* out = im.out + c * im.out_stride;
      if (im.t_id != nullptr) {
#pragma GCC unroll 12
        for (int i = 0; i < MH; ++i) {
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) {
            acc[i][j] += S::load(im.t_id + off + (h0 + i) * W + w0 + j * L);
          }
        }
      }
      if (s.rb != nullptr) {
        const T scale = im.row_scale != nullptr ? im.row_scale[c] : T(1);
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) {
          const V bias = S::set1(scale) * S::load(s.rb + w0 + j * L);
#pragma GCC unroll 12
          for (int i = 0; i < MH; ++i) acc[i][j] += bias;
        }
      }
      if (s.cb != nullptr) {
        const T scale = im.col_scale != nullptr ? im.col_scale[c] : T(1);
#pragma GCC unroll 12
        for (int i = 0; i < MH; ++i) {
          const V bias = S::set1(scale * s.cb[h0 + i]);
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) acc[i][j] += bias;
        }
      }
      if (im.t_row != nullptr) {
        fma_tile<T, MH, NV, true>(acc, W, im.t_row + off + h0 * W, W, s.wrT + w0, s.ldw);
      }
      if (im.t_col != nullptr) {
        fma_tile<T, MH, NV, false>(acc, H, s.wcT + h0, H, im.t_col + off + w0, W);
      }
#pragma GCC unroll 12
      for (int i = 0; i < MH; ++i) {
        T* row = out + (h0 + i) * im.os_h;
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) {
          const int64_t w = w0 + j * L;
          const int n = static_cast<int>(std::min<int64_t>(L, W - w));
          if (n <= 0) break;
          if (im.os_w == 1) {
            if (n == L) {
              S::store(row + w, acc[i][j]);
            } else {
              S::store_n(row + w, acc[i][j], n);
            }
          } else {
            S::store_strided(row + w * im.os_w, im.os_w, acc[i][j], n);
          }
        }
      }
    }
  }
};

template <typename T>
void spatial_image(const SpatialPlan<T>& s, const SpatialImage<T>& im) {
  constexpr int L = Simd<T>::kLanes;
  const int64_t vecs = ceil_div(s.W, L);
  for (int64_t v0 = 0; v0 < vecs; v0 += kMaxTileVecs) {
    const int nv = static_cast<int>(std::min<int64_t>(kMaxTileVecs, vecs - v0));
    const int64_t w0 = v0 * L;
    for_each_row_tile(s.H, max_tile_rows(nv), [&](int64_t h0, int rows) {
      dispatch_tile<SpatialKernel, T>(nv, rows, s, im, h0, w0);
    });
  }
}

// spatial_image of im's `count` channels with the outputs in storage type S: channel c's
// image to out + c*out_stride, strides os_h, os_w. When S is not T, the images go through
// buf (count*H*W elements of T) and are rounded on the way out.
template <typename S, typename T>
void spatial_store(const SpatialPlan<T>& sp, SpatialImage<T> im, S* out, int64_t out_stride,
                   int64_t os_h, int64_t os_w, T* buf) {
  if constexpr (std::is_same_v<S, T>) {
    im.out = out;
    im.out_stride = out_stride;
    im.os_h = os_h;
    im.os_w = os_w;
    spatial_image(sp, im);
  } else {
    const int64_t P = sp.H * sp.W;
    im.out = buf;
    im.out_stride = P;
    im.os_h = sp.W;
    im.os_w = 1;
    spatial_image(sp, im);
    for (int64_t c = 0; c < im.count; ++c) {
      if (os_w == 1 && os_h == sp.W) {
        store_row(buf + c * P, P, out + c * out_stride);
      } else {
        store_image(buf + c * P, sp.H, sp.W, out + c * out_stride, os_h, os_w);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Outer-product accumulation: D[i][j] += sum over rows k of a_k[i] * b_k[j]
// ---------------------------------------------------------------------------------------

// Rows come in nseg segments of K rows: row k of segment s is a + s*seg_a + k*lda and
// b + s*seg_b + k*ldb. D is rows x cols, ld ldd >= round_up(cols, lanes); b rows are read
// with full vectors (slack after the last one).
template <typename T>
struct OuterArgs {
  T* d = nullptr;
  int64_t ldd = 0, rows = 0, cols = 0;
  const T* a = nullptr;
  int64_t lda = 0;
  const T* b = nullptr;
  int64_t ldb = 0;
  int64_t K = 0, nseg = 1, seg_a = 0, seg_b = 0;
};

template <typename T, int MI, int NV>
struct OuterKernel {
  static void run(const OuterArgs<T>& o, const int64_t& i0, const int64_t& j0) {
    using S = Simd<T>;
    constexpr int L = S::kLanes;
    typename S::V acc[MI][NV];
    zero_tile<T, MI, NV>(acc);
    for (int64_t s = 0; s < o.nseg; ++s) {
      fma_tile<T, MI, NV, false>(acc, o.K, o.a + s * o.seg_a + i0, o.lda, o.b + s * o.seg_b + j0,
                                 o.ldb);
    }
#pragma GCC unroll 12
    for (int i = 0; i < MI; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        T* dp = o.d + (i0 + i) * o.ldd + j0 + j * L;
        S::store(dp, S::load(dp) + acc[i][j]);
      }
    }
  }
};

// D += sum_k a_k b_k^T; and, if a_sum is given, a_sum[i] += sum_k a_k[i]. The row sums
// (bias gradients: long sums of one sign-mixed term per row) are kept in double.
template <typename T>
void outer_accumulate(const OuterArgs<T>& o, double* a_sum) {
  constexpr int L = Simd<T>::kLanes;
  const int64_t vecs = ceil_div(o.cols, L);
  for (int64_t v0 = 0; v0 < vecs; v0 += kMaxTileVecs) {
    const int nv = static_cast<int>(std::min<int64_t>(kMaxTileVecs, vecs - v0));
    const int64_t j0 = v0 * L;
    for_each_row_tile(o.rows, max_tile_rows(nv), [&](int64_t i0, int rows) {
      dispatch_tile<OuterKernel, T>(nv, rows, o, i0, j0);
    });
  }
  if (a_sum != nullptr) {
    for (int64_t s = 0; s < o.nseg; ++s) {
      for (int64_t k = 0; k < o.K; ++k) {
        const T* ak = o.a + s * o.seg_a + k * o.lda;
        for (int64_t i = 0; i < o.rows; ++i) a_sum[i] += static_cast<double>(ak[i]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------

// dst[h*W + w] = image (h, w) of a strided image, converted to T.
template <typename T, typename S>
void pack_image(const S* src, int64_t sh, int64_t sw, int64_t H, int64_t W, T* dst) {
  if (sw == 1 && sh == W) {
    load_row(src, H * W, dst);
  } else if (sw == 1) {
    for (int64_t h = 0; h < H; ++h) load_row(src + h * sh, W, dst + h * W);
  } else {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) dst[h * W + w] = load_as<T>(src[h * sh + w * sw]);
    }
  }
}

// Image (h, w) of src (H x W, rows W apart) to a strided image of storage type S.
template <typename S, typename T>
void store_image(const T* src, int64_t H, int64_t W, S* dst, int64_t sh, int64_t sw) {
  for (int64_t h = 0; h < H; ++h) {
    if (sw == 1) {
      store_row(src + h * W, W, dst + h * sh);
    } else {
      for (int64_t w = 0; w < W; ++w) dst[h * sh + w * sw] = store_as<S>(src[h * W + w]);
    }
  }
}

// dst[w*H + h] = image (h, w): the transposed image, in 16 x 16 blocks so that the
// strided writes of a block stay in L1.
template <typename T, typename S>
void pack_image_transposed(const S* src, int64_t sh, int64_t sw, int64_t H, int64_t W, T* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t h0 = 0; h0 < H; h0 += kBlock) {
    for (int64_t w0 = 0; w0 < W; w0 += kBlock) {
      const int64_t h1 = std::min(H, h0 + kBlock), w1 = std::min(W, w0 + kBlock);
      if (sw == 1 && h1 - h0 == kBlock && w1 - w0 == kBlock) {
        // A whole block: read through a local copy, so both sides are unit-stride loops.
        T tile[kBlock][kBlock];
        for (int64_t i = 0; i < kBlock; ++i) {
          for (int64_t j = 0; j < kBlock; ++j) tile[j][i] = load_as<T>(src[(h0 + i) * sh + w0 + j]);
        }
        for (int64_t j = 0; j < kBlock; ++j) {
          for (int64_t i = 0; i < kBlock; ++i) dst[(w0 + j) * H + h0 + i] = tile[j][i];
        }
        continue;
      }
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t w = w0; w < w1; ++w) dst[w * H + h] = load_as<T>(src[h * sh + w * sw]);
      }
    }
  }
}

// The spatial weights of a launch, packed into storage. A part whose weight is absent
// (data == nullptr) is left out.
template <typename T, typename S>
SpatialPlan<T> pack_spatial(const View<const S, 2>& row_weight, const View<const S, 1>& row_bias,
                            const View<const S, 2>& col_weight, const View<const S, 1>& col_bias,
                            int64_t H, int64_t W, std::vector<T>& storage) {
  constexpr int L = Simd<T>::kLanes;
  SpatialPlan<T> s;
  s.H = H;
  s.W = W;
  s.ldw = round_up(W, L);
  const bool row = row_weight.data != nullptr, col = col_weight.data != nullptr;
  const int64_t n_wr = row ? W * s.ldw + s.ldw : 0;
  const int64_t n_wc = col ? H * H + H : 0;
  storage.assign(static_cast<size_t>(n_wr + n_wc + 2 * L), T(0));
  T* p = storage.data();
  if (row) {
    T* wrT = p;
    for (int64_t v = 0; v < W; ++v) {
      for (int64_t w = 0; w < W; ++w) {
        wrT[v * s.ldw + w] =
            load_as<T>(row_weight.data[w * row_weight.stride[0] + v * row_weight.stride[1]]);
      }
    }
    s.wrT = wrT;
    if (row_bias.data != nullptr) {
      T* rb = p + W * s.ldw;
      for (int64_t w = 0; w < W; ++w) rb[w] = load_as<T>(row_bias.data[w * row_bias.stride[0]]);
      s.rb = rb;
    }
  }
  if (col) {
    T* wcT = p + n_wr;
    for (int64_t u = 0; u < H; ++u) {
      for (int64_t h = 0; h < H; ++h) {
        wcT[u * H + h] =
            load_as<T>(col_weight.data[h * col_weight.stride[0] + u * col_weight.stride[1]]);
      }
    }
    s.wcT = wcT;
    if (col_bias.data != nullptr) {
      T* cb = wcT + H * H;
      for (int64_t h = 0; h < H; ++h) cb[h] = load_as<T>(col_bias.data[h * col_bias.stride[0]]);
      s.cb = cb;
    }
  }
  return s;
}

}  // namespace smlp::cpu::SMLP_CPU_ISA
