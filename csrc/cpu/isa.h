// The instruction set one translation unit of CPU kernels is compiled for.
//
// mix.cpp and axis_mix.cpp are compiled once per level (CMakeLists.txt, smlp_cpu_<level>),
// each with -DSMLP_CPU_LEVEL=<n>, and dispatch.cpp picks a level at run time from the CPU's
// features (or SMLP_CPU_ISA). Every file is compiled with the same baseline flags; a level's
// instructions come from the `#pragma GCC target` below, which applies to every function
// defined after it in the translation unit. That is why:
//
// * this header must come after every declaration that other levels share (the standard
//   library, OpenMP, tensor.h and launchers.h are included here, before the pragma): a
//   function the pragma covers gets the level's target, so a shared inline function or
//   template would get one level's instructions in every level;
// * the kernels live in a namespace of their own per level (SMLP_CPU_ISA), so the linker
//   never merges two levels' copies of the same template;
// * the kernels test SMLP_CPU_AVX512 and friends, not __AVX512F__: in C++ the pragma does
//   not change the predefined macros.
//
// Levels: 0 baseline (the compiler's default target, e.g. x86-64 SSE2, or any other
// architecture), 1 avx2 (AVX2, FMA, F16C), 2 avx512 (AVX-512 F/BW/VL/DQ + level 1),
// 3 avx512bf16 (level 2 + AVX512-BF16: vdpbf16ps).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cpu/launchers.h"
#include "tensor.h"

#ifndef SMLP_CPU_LEVEL
#define SMLP_CPU_LEVEL 0
#endif

#if SMLP_CPU_LEVEL == 0
#define SMLP_CPU_ISA baseline
#elif SMLP_CPU_LEVEL == 1
#define SMLP_CPU_ISA avx2
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#elif SMLP_CPU_LEVEL == 2
#define SMLP_CPU_ISA avx512
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2")
#elif SMLP_CPU_LEVEL == 3
#define SMLP_CPU_ISA avx512bf16
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2")
#else
#error "SMLP_CPU_LEVEL must be 0 to 3"
#endif

// What the level may use (the pragma's features, as macros the kernels can test).
#define SMLP_CPU_AVX (SMLP_CPU_LEVEL >= 1)
#define SMLP_CPU_AVX512 (SMLP_CPU_LEVEL >= 2)
#define SMLP_CPU_BF16_DOT (SMLP_CPU_LEVEL >= 3)
