// What the kernel headers need from CUDA. With SMLP_CUDA_EMULATION defined (a host compiler
// build of the kernel headers, see csrc/cuda/emulation/), the same kernel source runs on CPU
// threads against stand-ins for these headers, so its index math can be tested without a GPU.
#pragma once

#if defined(SMLP_CUDA_EMULATION)
#include "cuda/emulation/cuda_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// The kernels carve one dynamic shared-memory buffer into 128-byte-aligned pieces (ldmatrix
// needs 16-byte-aligned rows).
#define SMLP_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif
