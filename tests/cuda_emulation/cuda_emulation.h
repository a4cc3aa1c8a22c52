// Host stand-ins for the CUDA features the kernels and launchers use, so that the real kernel
// source runs on CPU threads: built by a host compiler with -DSMLP_CUDA_EMULATION and this
// directory on the include path, csrc/cuda/platform.cuh includes this header instead of the
// CUDA headers (see tests/test_cuda_emulation.py). It checks index math, masks, padding,
// layouts and barriers on a machine without a GPU; it says nothing about speed, and fp16/bf16
// products are summed in fp32 in program order (tensor cores may order the sums differently).
//
// Emulated: one block at a time, its 256 threads as std::threads; __syncthreads and __syncwarp
// as barriers; dynamic shared memory filled with NaN bytes before every block (reads of
// unwritten shared memory poison the result); ldmatrix and mma.sync.m16n8k16 with their
// per-lane fragment layouts (and ldmatrix's 16-byte alignment rule); atomicAdd; and the few
// runtime calls of the launchers, on host memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim3 threadIdx;
inline thread_local EmuDim3 blockIdx;
inline EmuDim3 blockDim{256, 1, 1};
inline EmuDim3 gridDim{1, 1, 1};

namespace smlp_emu {

struct BlockState {
  std::unique_ptr<std::barrier<>> block_barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  std::vector<unsigned char> smem;
  std::size_t smem_bytes = 0;
};
inline thread_local BlockState* current = nullptr;

[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what.c_str());
  std::abort();
}

inline unsigned char* dynamic_smem() {
  // 1024-byte alignment like the device; the vector is over-allocated for it.
  auto base = reinterpret_cast<std::uintptr_t>(current->smem.data());
  return reinterpret_cast<unsigned char*>((base + 1023) / 1024 * 1024);
}

// Emulated device settings the launchers query.
struct Device {
  int sm_count = 4;
  int max_smem_optin = 227 * 1024;
};
inline Device& device() {
  static Device d;
  return d;
}

}  // namespace smlp_emu

#define SMLP_DYNAMIC_SMEM(name) unsigned char* name = ::smlp_emu::dynamic_smem()

inline void __syncthreads() { smlp_emu::current->block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  smlp_emu::current->warp_barriers[threadIdx.x / 32]->arrive_and_wait();
}

inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}

// ---------------------------------------------------------------------------------------
// ldmatrix and mma.sync.m16n8k16 as warp collectives: every lane posts its operand (a row
// address, or its fragment registers) to a per-warp exchange, and then takes its result from
// the whole warp's data following the PTX ISA's fragment layouts. This checks the kernels'
// fragment bookkeeping against the documented layouts, not just the arithmetic.
// ---------------------------------------------------------------------------------------
namespace smlp_emu {

struct WarpExchange {
  const std::uint16_t* rows[32];
  std::uint32_t a[32][4];
  std::uint32_t b[32][2];
};
inline thread_local WarpExchange* exchange_table = nullptr;  // [8 warps], set per block

inline WarpExchange& warp_exchange() { return exchange_table[threadIdx.x / 32]; }

// ldmatrix.sync.aligned.m8n8.{x2,x4}{,.trans}.shared.b16: register i holds 8x8 matrix i,
// whose row r lives at the address lane 8i + r supplied. Thread l gets row l/4, columns
// 2(l%4) and 2(l%4)+1, the lower column in the low half (.trans: of the transposed matrix).
template <int kCount, bool kTrans>
void ldmatrix(std::uint32_t* r, const void* p) {
  const int lane = threadIdx.x % 32;
  if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0)
    die("ldmatrix: row address not 16-byte aligned");
  WarpExchange& x = warp_exchange();
  x.rows[lane] = static_cast<const std::uint16_t*>(p);
  __syncwarp();
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < kCount; ++i) {
    std::uint16_t lo, hi;
    if (!kTrans) {
      lo = x.rows[8 * i + g][2 * t];
      hi = x.rows[8 * i + g][2 * t + 1];
    } else {
      lo = x.rows[8 * i + 2 * t][g];
      hi = x.rows[8 * i + 2 * t + 1][g];
    }
    r[i] = static_cast<std::uint32_t>(lo) | (static_cast<std::uint32_t>(hi) << 16);
  }
  __syncwarp();
}

template <typename T>
float half_bits_to_float(std::uint16_t bits) {
  if constexpr (std::is_same<T, __half>::value) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
  } else {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: D = A (16x16) B (16x8) + C, lane 4g + t
// holding A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]; B[2t..][g], B[2t+8..][g];
// C[g][2t..], C[g+8][2t..].
template <typename T>
void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  const int lane = threadIdx.x % 32;
  WarpExchange& x = warp_exchange();
  for (int i = 0; i < 4; ++i) x.a[lane][i] = a[i];
  x.b[lane][0] = b0;
  x.b[lane][1] = b1;
  __syncwarp();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int i = 0; i < 4; ++i) {
      A[rows[i]][cols[i]] = half_bits_to_float<T>(x.a[l][i] & 0xffffu);
      A[rows[i]][cols[i] + 1] = half_bits_to_float<T>(x.a[l][i] >> 16);
    }
    for (int i = 0; i < 2; ++i) {
      B[2 * t + 8 * i][g] = half_bits_to_float<T>(x.b[l][i] & 0xffffu);
      B[2 * t + 8 * i + 1][g] = half_bits_to_float<T>(x.b[l][i] >> 16);
    }
  }
  __syncwarp();
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i / 2) * 8, col = 2 * t + i % 2;
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    d[i] = s;
  }
}

}  // namespace smlp_emu

// ---------------------------------------------------------------------------------------
// Runtime API: cuda_fp16.h already declares it; runtime.cpp defines the calls the launchers
// make, on host memory (every pointer counts as device 0's memory).
// ---------------------------------------------------------------------------------------

namespace smlp_emu {

// Runs kernel(args...) for every block of a 1-D grid of 256-thread blocks.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), unsigned grid, unsigned threads,
            std::size_t smem_bytes, Args... args) {
  if (threads != 256) die("blocks of 256 threads only");
  if (smem_bytes > static_cast<std::size_t>(device().max_smem_optin))
    die("launch with more shared memory than the device allows");
  BlockState state;
  state.block_barrier = std::make_unique<std::barrier<>>(threads);
  for (unsigned w = 0; w < threads / 32; ++w)
    state.warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
  state.smem.resize(smem_bytes + 1024);
  std::vector<WarpExchange> exchanges(threads / 32);
  state.smem_bytes = smem_bytes;
  gridDim = EmuDim3{grid, 1, 1};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t]() {
      current = &state;
      exchange_table = exchanges.data();
      threadIdx = EmuDim3{t, 0, 0};
      for (unsigned b = 0; b < grid; ++b) {
        if (t == 0) std::memset(state.smem.data(), 0xff, state.smem.size());
        state.block_barrier->arrive_and_wait();
        blockIdx = EmuDim3{b, 0, 0};
        kernel(args...);
        state.block_barrier->arrive_and_wait();
      }
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace smlp_emu

// What csrc/cuda/platform.cuh provides on the device: the warp instructions and the launch.
namespace smlp::cuda {

using smlp_emu::ldmatrix;
using smlp_emu::mma_16816;

template <typename... KernelArgs, typename... Args>
void launch_kernel(void (*kernel)(KernelArgs...), unsigned grid, unsigned threads,
                   std::size_t smem_bytes, cudaStream_t, Args&&... args) {
  smlp_emu::launch(kernel, grid, threads, smem_bytes, std::forward<Args>(args)...);
}

}  // namespace smlp::cuda
