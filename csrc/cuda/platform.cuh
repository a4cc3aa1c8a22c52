// What the kernels and launchers need from the CUDA platform: its headers, dynamic shared
// memory, the two warp instructions the tensor-core path uses (ldmatrix, mma.sync) and a kernel
// launch. The one hook of the host emulation (tests/cuda_emulation/) is here: a build with
// SMLP_CUDA_EMULATION defined takes stand-ins for all of these from cuda_emulation.h (found on
// that build's include path), so the same kernel source runs on CPU threads.
#pragma once

#if defined(SMLP_CUDA_EMULATION)
#include "cuda_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

// The kernels carve one dynamic shared-memory buffer into 128-byte-aligned pieces (ldmatrix
// needs 16-byte-aligned rows).
#define SMLP_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]

namespace smlp::cuda {

// ldmatrix.sync.aligned.m8n8.{x2,x4}{,.trans}.shared.b16 from the row address p of this lane.
template <int kCount, bool kTrans>
__device__ __forceinline__ void ldmatrix(std::uint32_t* r, const void* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (kCount == 4 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else if constexpr (kCount == 4 && kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else if constexpr (kCount == 2 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
  } else {
    static_assert(kCount == 2 && kTrans, "ldmatrix .x2 or .x4");
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
  }
}
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: d (16x8) += a (16x16) b (16x8), fp32
// accumulation, with the fragment layouts described in common.cuh.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4],
                                          std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same<T, __half>::value, "fp16 or bf16");
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// kernel<<<grid, threads, smem_bytes, stream>>>(args...).
template <typename... KernelArgs, typename... Args>
void launch_kernel(void (*kernel)(KernelArgs...), unsigned grid, unsigned threads,
                   std::size_t smem_bytes, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, threads, smem_bytes, stream>>>(std::forward<Args>(args)...);
}

}  // namespace smlp::cuda
#endif
