// Building blocks shared by every kernel: element types, the warp-level matrix multiply
// (tensor cores through mma.sync for fp16/bf16, plain FMA for fp32) and shared-memory carving.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cuda/platform.cuh"

namespace smlp::cuda {

using index_t = std::int64_t;  // every global offset: an index times a stride

constexpr int kThreads = 256;  // all kernels run 8 warps per block
constexpr int kWarps = kThreads / 32;

__host__ __device__ constexpr int round_up(int value, int multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

__host__ __device__ constexpr int ceil_div(int value, int divisor) {
  return (value + divisor - 1) / divisor;
}

// ---------------------------------------------------------------------------------------
// Element types: storage in T, arithmetic and accumulation in float.
// ---------------------------------------------------------------------------------------
template <typename T>
struct Num;

template <>
struct Num<float> {
  static constexpr const char* kName = "f32";
  __device__ __forceinline__ static float to_float(float v) { return v; }
  __device__ __forceinline__ static float from_float(float v) { return v; }
  __device__ __forceinline__ static float zero() { return 0.0f; }
};

template <>
struct Num<__half> {
  static constexpr const char* kName = "f16";
  __device__ __forceinline__ static float to_float(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from_float(float v) { return __float2half_rn(v); }
  // From raw bits: the conversion intrinsics are inline asm that the compiler cannot fold.
  __device__ __forceinline__ static __half zero() { return __half(__half_raw{0}); }
};

template <>
struct Num<__nv_bfloat16> {
  static constexpr const char* kName = "bf16";
  __device__ __forceinline__ static float to_float(__nv_bfloat16 v) {
    return __bfloat162float(v);
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float v) {
    return __float2bfloat16_rn(v);
  }
  __device__ __forceinline__ static __nv_bfloat16 zero() {
    return __nv_bfloat16(__nv_bfloat16_raw{0});
  }
};

// ---------------------------------------------------------------------------------------
// Warp-level tile multiply on shared-memory operands: acc (M x N, float) += A (M x K) B (K x N).
//
// fp16/bf16: tensor cores through mma.sync.m16n8k16 (fp32 accumulation) fed by ldmatrix;
// shapes 16x16, 32x8 and 8x32 (the last computed as its transpose, 32x8). Operands are
// row- or column-major with any ld that is a multiple of 8 elements, at 16-byte-aligned
// addresses (the kernels only point at multiples of 8 elements from 128-byte-aligned
// buffers). fp32 uses the same interface with FMA (K = 8), so every kernel has one code path.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA), lane = 4 * group + t:
//   A (16x16): reg 0 = A[g][2t..2t+1], 1 = A[g+8][2t..], 2 = A[g][2t+8..], 3 = A[g+8][2t+8..]
//   B (16x8):  reg 0 = B[2t..2t+1][g], 1 = B[2t+8..2t+9][g]
//   C (16x8):  c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
// ldmatrix.x4 gives register i the 8x8 matrix whose row addresses lanes 8i..8i+7 supply,
// thread l holding row l/4, columns 2(l%4), 2(l%4)+1 (.trans: that of the transpose).
// ---------------------------------------------------------------------------------------
struct RowMajor {};
struct ColMajor {};

// The four 8x8 matrices of a 16x16 block at p into r[0..3]: matrix i starts at memory row
// 8(i%2), column 8(i/2) for RowMajor, at memory row 8(i/2), column 8(i%2) for ColMajor (whose
// memory rows are the block's columns); kTrans loads each matrix transposed.
template <typename L, bool kTrans, typename T>
__device__ __forceinline__ void load_16x16(std::uint32_t (&r)[4], const T* p, unsigned ld) {
  const int lane = static_cast<int>(threadIdx.x) % 32, i = lane / 8, j = lane % 8;
  if constexpr (std::is_same<L, RowMajor>::value) {
    ldmatrix<4, kTrans>(r, p + (j + (i % 2) * 8) * ld + (i / 2) * 8);
  } else {
    ldmatrix<4, kTrans>(r, p + (j + (i / 2) * 8) * ld + (i % 2) * 8);
  }
}

// The A operand of one m16n8k16: a 16x16 block at p (row-major: p[m*ld + k]; column-major:
// p[k*ld + m]). Registers: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15);
// column-major memory holds them transposed.
template <typename L, typename T>
__device__ __forceinline__ void load_a16x16(std::uint32_t (&r)[4], const T* p, unsigned ld) {
  load_16x16<L, !std::is_same<L, RowMajor>::value>(r, p, ld);
}

// Two B operands (n 0-7 in r[0..1], n 8-15 in r[2..3]) from a 16x16 block at p (row-major:
// p[k*ld + n], each 8x8 matrix loaded transposed; column-major: p[n*ld + k]).
template <typename L, typename T>
__device__ __forceinline__ void load_b16x16(std::uint32_t (&r)[4], const T* p, unsigned ld) {
  load_16x16<L, std::is_same<L, RowMajor>::value>(r, p, ld);
}

// One B operand (16x8) at p; lanes 16-31 repeat the addresses of lanes 0-15.
template <typename L, typename T>
__device__ __forceinline__ void load_b16x8(std::uint32_t (&r)[2], const T* p, unsigned ld) {
  const int lane = static_cast<int>(threadIdx.x) % 16, i = lane / 8, j = lane % 8;
  if constexpr (std::is_same<L, RowMajor>::value) {
    ldmatrix<2, true>(r, p + (j + i * 8) * ld);
  } else {
    ldmatrix<2, false>(r, p + j * ld + i * 8);
  }
}

template <typename L>
using Flip = typename std::conditional<std::is_same<L, RowMajor>::value, ColMajor, RowMajor>::type;

template <typename T, int M, int N, int K>
struct WarpMma;

// What the tensor-core shapes share: two m16n8k16 results as fp32 accumulators, and the store
// of one of them (a 16x8 C fragment: this lane's rows g, g+8, columns 2t, 2t+1) to a
// row-major float tile at q.
struct MmaPair {
  struct Acc {
    float v[2][4];
  };
  __device__ __forceinline__ static void zero(Acc& acc) {
#pragma unroll
    for (int i = 0; i < 8; ++i) acc.v[i / 4][i % 4] = 0.0f;
  }
  __device__ __forceinline__ static void store_c(float* q, unsigned ld, const float (&c)[4]) {
    const int lane = static_cast<int>(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
    q += g * ld + 2 * t;
    q[0] = c[0];
    q[1] = c[1];
    q[8 * ld] = c[2];
    q[8 * ld + 1] = c[3];
  }
};

// 16x16: one A block, two n-halves of B.
template <typename T>
struct WarpMma<T, 16, 16, 16> : MmaPair {
  template <typename L>
  struct A {
    std::uint32_t r[4];
  };
  template <typename L>
  struct B {
    std::uint32_t r[4];
  };
  template <typename L>
  __device__ __forceinline__ static void load(A<L>& a, const T* p, unsigned ld) {
    load_a16x16<L>(a.r, p, ld);
  }
  template <typename L>
  __device__ __forceinline__ static void load(B<L>& b, const T* p, unsigned ld) {
    load_b16x16<L>(b.r, p, ld);
  }
  template <typename LA, typename LB>
  __device__ __forceinline__ static void mma(Acc& acc, const A<LA>& a, const B<LB>& b) {
    mma_16816<T>(acc.v[0], a.r, b.r[0], b.r[1]);
    mma_16816<T>(acc.v[1], a.r, b.r[2], b.r[3]);
  }
  // Row-major store of the 16x16 tile; the caller __syncwarp()s before other lanes read it.
  __device__ __forceinline__ static void store(float* p, unsigned ld, const Acc& acc) {
    store_c(p, ld, acc.v[0]);
    store_c(p + 8, ld, acc.v[1]);
  }
};

// 32x8: two m-halves of A, one B.
template <typename T>
struct WarpMma<T, 32, 8, 16> : MmaPair {
  template <typename L>
  struct A {
    std::uint32_t r[2][4];
  };
  template <typename L>
  struct B {
    std::uint32_t r[2];
  };
  template <typename L>
  __device__ __forceinline__ static void load(A<L>& a, const T* p, unsigned ld) {
    const unsigned half = std::is_same<L, RowMajor>::value ? 16 * ld : 16;
    load_a16x16<L>(a.r[0], p, ld);
    load_a16x16<L>(a.r[1], p + half, ld);
  }
  template <typename L>
  __device__ __forceinline__ static void load(B<L>& b, const T* p, unsigned ld) {
    load_b16x8<L>(b.r, p, ld);
  }
  template <typename LA, typename LB>
  __device__ __forceinline__ static void mma(Acc& acc, const A<LA>& a, const B<LB>& b) {
    mma_16816<T>(acc.v[0], a.r[0], b.r[0], b.r[1]);
    mma_16816<T>(acc.v[1], a.r[1], b.r[0], b.r[1]);
  }
  __device__ __forceinline__ static void store(float* p, unsigned ld, const Acc& acc) {
    store_c(p, ld, acc.v[0]);
    store_c(p + 16 * ld, ld, acc.v[1]);
  }
};

// 8x32 as its transpose: D^T (32x8) = B^T (32x16) A^T (16x8). A (8x16) is kept as the B
// operand A^T, B (16x32) as the two A-operand halves of B^T; a layout flips with the transpose.
template <typename T>
struct WarpMma<T, 8, 32, 16> : MmaPair {
  // Acc holds D^T: rows n in halves of 16, columns m.
  template <typename L>
  struct A {
    std::uint32_t r[2];
  };
  template <typename L>
  struct B {
    std::uint32_t r[2][4];
  };
  template <typename L>
  __device__ __forceinline__ static void load(A<L>& a, const T* p, unsigned ld) {
    load_b16x8<Flip<L>>(a.r, p, ld);
  }
  template <typename L>
  __device__ __forceinline__ static void load(B<L>& b, const T* p, unsigned ld) {
    // B^T's rows are B's columns n: n + 16 is 16 columns on (row-major B) or 16 rows on.
    const unsigned half = std::is_same<L, RowMajor>::value ? 16 : 16 * ld;
    load_a16x16<Flip<L>>(b.r[0], p, ld);
    load_a16x16<Flip<L>>(b.r[1], p + half, ld);
  }
  template <typename LA, typename LB>
  __device__ __forceinline__ static void mma(Acc& acc, const A<LA>& a, const B<LB>& b) {
    mma_16816<T>(acc.v[0], b.r[0], a.r[0], a.r[1]);
    mma_16816<T>(acc.v[1], b.r[1], a.r[0], a.r[1]);
  }
  // Row-major store of D (8x32): D[m][n] = D^T[n][m].
  __device__ __forceinline__ static void store(float* p, unsigned ld, const Acc& acc) {
    const int lane = static_cast<int>(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = h * 16 + g;
      p[(2 * t) * ld + n] = acc.v[h][0];
      p[(2 * t + 1) * ld + n] = acc.v[h][1];
      p[(2 * t) * ld + n + 8] = acc.v[h][2];
      p[(2 * t + 1) * ld + n + 8] = acc.v[h][3];
    }
  }
};

// fp32: lane l owns 8 consecutive accumulators of one row; operands stay in shared memory
// and are read inside mma(). Any M in {8, 16, 32} with M * N = 256.
template <int M, int N, int K>
struct WarpMma<float, M, N, K> {
  static constexpr int kLanesPerRow = 32 / M;
  static constexpr int kCols = N / kLanesPerRow;
  static_assert(M * kLanesPerRow == 32 && kCols * kLanesPerRow == N && kCols == 8,
                "fp32 tiles: M in {8, 16, 32} and M * N = 256");

  struct Acc {
    float v[kCols];
  };
  template <typename L>
  struct A {
    const float* p;
    unsigned ld;
  };
  template <typename L>
  struct B {
    const float* p;
    unsigned ld;
  };

  __device__ __forceinline__ static void zero(Acc& acc) {
#pragma unroll
    for (int j = 0; j < kCols; ++j) acc.v[j] = 0.0f;
  }
  template <typename L>
  __device__ __forceinline__ static void load(A<L>& a, const float* p, unsigned ld) {
    a.p = p;
    a.ld = ld;
  }
  template <typename L>
  __device__ __forceinline__ static void load(B<L>& b, const float* p, unsigned ld) {
    b.p = p;
    b.ld = ld;
  }
  template <typename LA, typename LB>
  __device__ __forceinline__ static void mma(Acc& acc, const A<LA>& a, const B<LB>& b) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int row = lane / kLanesPerRow;
    const int col0 = (lane % kLanesPerRow) * kCols;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float av = std::is_same<LA, RowMajor>::value ? a.p[row * a.ld + k]
                                                         : a.p[k * a.ld + row];
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const float bv = std::is_same<LB, RowMajor>::value ? b.p[k * b.ld + col0 + j]
                                                           : b.p[(col0 + j) * b.ld + k];
        acc.v[j] = fmaf(av, bv, acc.v[j]);
      }
    }
  }
  __device__ __forceinline__ static void store(float* p, unsigned ld, const Acc& acc) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int row = lane / kLanesPerRow;
    const int col0 = (lane % kLanesPerRow) * kCols;
#pragma unroll
    for (int j = 0; j < kCols; ++j) p[row * ld + col0 + j] = acc.v[j];
  }
};

// The MMA K step of a dtype: 16 for the tensor-core types, 8 for fp32.
template <typename T>
constexpr int mma_k() {
  return std::is_same<T, float>::value ? 8 : 16;
}

// ---------------------------------------------------------------------------------------
// Shared memory: one dynamic buffer cut into 128-byte-aligned pieces. The same code runs on
// the host (to size the launch) and on the device (to find the pieces).
// ---------------------------------------------------------------------------------------
struct SmemCarver {
  std::size_t bytes = 0;
  template <typename U>
  __host__ __device__ std::size_t take(std::size_t count) {
    const std::size_t offset = (bytes + 127) / 128 * 128;
    bytes = offset + count * sizeof(U);
    return offset;
  }
};

template <typename U>
__device__ __forceinline__ U* smem_at(unsigned char* base, std::size_t offset) {
  return reinterpret_cast<U*>(base + offset);
}

}  // namespace smlp::cuda
