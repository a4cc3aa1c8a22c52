// The CPU's peak multiply-add rate (see fma_peak.h for why smlp-bench needs it).
//
// Each thread runs `chains` independent accumulators through
//
//   acc = acc * mul + add        (one vector FMA, or mul + add without FMA)
//   acc = acc + a . b            (vdpbf16ps: two bf16 products per fp32 lane)
//
// for `iters` iterations. The accumulators never leave the registers, the operands are
// registers too, so the loop is nothing but the arithmetic instructions and the loop
// counter (tests/test_roofline.py checks that in the built module with objdump).
// mul and add arrive at run time and every accumulator goes into the returned sum, so the
// compiler can neither fold the loop nor drop it. With mul = 0.5, add = 0.25 every chain
// converges to 0.5 and stays there exactly: no overflow, no denormals (which would slow
// some CPUs down).
//
// Chains: an FMA's latency x the FMA instructions a core starts per cycle is 8 to 10 on
// current x86 cores (latency 4-5, two units), a little more for vdpbf16ps. AVX-512 has 32
// vector registers, so it runs 16 chains; AVX2 and SSE have 16, so they run 12 (plus the
// two operand registers).
//
// FLOPs: 2 per FMA lane (a multiply and an add); vdpbf16ps does 2 bf16 products and adds
// both into the fp32 lane, so 4 per fp32 lane (64 per 512-bit instruction). The SSE path
// has no FMA: one mulps/mulpd + addps/addpd pair per step, 2 FLOPs per lane.
//
// Every instruction set is a function with its own target attribute, dispatched on
// __builtin_cpu_supports at run time. This file is compiled for the baseline instruction set
// (its own static library in CMakeLists.txt), so the SSE path really is SSE and any build
// measures AVX-512 on a machine that has it.

#include "cpu/fma_peak.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SMLP_PEAK_X86 1
#include <immintrin.h>
#else
#define SMLP_PEAK_X86 0
#endif

namespace smlp::cpu {
namespace {

// Every kernel: run the chains, return the sum of all accumulator lanes.
using Kernel = double (*)(int64_t iters, double mul, double add);

constexpr int kChainsWide = 16;    // AVX-512: 32 vector registers
constexpr int kChainsNarrow = 12;  // AVX2, SSE: 16 vector registers

#if SMLP_PEAK_X86

// One FMA kernel per (instruction set, element type). A macro, not a template: a target
// attribute must sit on the function that calls the intrinsics, or they do not inline.
// noinline keeps each loop in a function of its own, where objdump finds it by name.
#define SMLP_FMA_CHAINS(NAME, TARGET, VEC, SCALAR, CHAINS, SET1, STEP, STOREU)          \
  __attribute__((target(TARGET), noinline)) double NAME(int64_t iters, double mul_,     \
                                                        double add_) {                  \
    const VEC mul = SET1(static_cast<SCALAR>(mul_));                                    \
    const VEC add = SET1(static_cast<SCALAR>(add_));                                    \
    VEC acc[CHAINS];                                                                    \
    for (int c = 0; c < CHAINS; ++c) acc[c] = SET1(static_cast<SCALAR>(c));             \
    for (int64_t i = 0; i < iters; ++i) {                                               \
      _Pragma("GCC unroll 16") for (int c = 0; c < CHAINS; ++c) {                       \
        acc[c] = STEP(acc[c], mul, add);                                                \
      }                                                                                 \
    }                                                                                   \
    constexpr int kLanes = static_cast<int>(sizeof(VEC) / sizeof(SCALAR));              \
    SCALAR lanes[kLanes];                                                               \
    double sum = 0;                                                                     \
    for (int c = 0; c < CHAINS; ++c) {                                                  \
      STOREU(lanes, acc[c]);                                                            \
      for (int l = 0; l < kLanes; ++l) sum += static_cast<double>(lanes[l]);            \
    }                                                                                   \
    return sum;                                                                         \
  }

// Both element types of one instruction set; PREFIX names its intrinsics (PREFIX##_set1_ps,
// PREFIX##_storeu_pd, ...), STEP its multiply-add (STEP##_ps, STEP##_pd).
#define SMLP_FMA_CHAINS_PS_PD(ISA, TARGET, VEC, CHAINS, PREFIX, STEP)                      \
  SMLP_FMA_CHAINS(chains_##ISA##_f32, TARGET, VEC, float, CHAINS, PREFIX##_set1_ps,          \
                  STEP##_ps, PREFIX##_storeu_ps)                                            \
  SMLP_FMA_CHAINS(chains_##ISA##_f64, TARGET, VEC##d, double, CHAINS, PREFIX##_set1_pd,      \
                  STEP##_pd, PREFIX##_storeu_pd)

// The SSE step has no FMA: a multiply, then an add (2 FLOPs per lane, as an FMA).
#define SMLP_SSE_STEP_ps(a, m, b) _mm_add_ps(_mm_mul_ps(a, m), b)
#define SMLP_SSE_STEP_pd(a, m, b) _mm_add_pd(_mm_mul_pd(a, m), b)

SMLP_FMA_CHAINS_PS_PD(avx512, "avx512f", __m512, kChainsWide, _mm512, _mm512_fmadd)
SMLP_FMA_CHAINS_PS_PD(avx2, "avx2,fma", __m256, kChainsNarrow, _mm256, _mm256_fmadd)
SMLP_FMA_CHAINS_PS_PD(sse, "sse2", __m128, kChainsNarrow, _mm, SMLP_SSE_STEP)

#undef SMLP_FMA_CHAINS_PS_PD
#undef SMLP_SSE_STEP_ps
#undef SMLP_SSE_STEP_pd
#undef SMLP_FMA_CHAINS

// vdpbf16ps: acc (16 fp32 lanes) += a[2l] b[2l] + a[2l+1] b[2l+1]. Every lane adds
// 2 * mul * add per step; at 0.25 per step an fp32 lane stops growing (the increment falls
// below half an ulp) long before it could overflow, and the instruction's speed does not
// depend on that.
__attribute__((target("avx512f,avx512bf16"), noinline)) double chains_avx512bf16(
    int64_t iters, double mul_, double add_) {
  const __m512 mul32 = _mm512_set1_ps(static_cast<float>(mul_));
  const __m512 add32 = _mm512_set1_ps(static_cast<float>(add_));
  const __m512bh a = _mm512_cvtne2ps_pbh(mul32, mul32);
  const __m512bh b = _mm512_cvtne2ps_pbh(add32, add32);
  __m512 acc[kChainsWide];
  for (int c = 0; c < kChainsWide; ++c) acc[c] = _mm512_set1_ps(static_cast<float>(c));
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChainsWide; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  float lanes[16];
  double sum = 0;
  for (int c = 0; c < kChainsWide; ++c) {
    _mm512_storeu_ps(lanes, acc[c]);
    for (int l = 0; l < 16; ++l) sum += static_cast<double>(lanes[l]);
  }
  return sum;
}

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }
bool has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool has_avx512bf16() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}
bool always() { return true; }

#else  // not x86 with GCC/Clang: 128-bit vectors from the compiler (NEON on aarch64)

template <typename T>
double chains_generic(int64_t iters, double mul_, double add_) {
#if defined(__GNUC__)
  typedef T V __attribute__((vector_size(16)));
#else
  typedef T V;  // a scalar: a lower bound of the peak on such a compiler
#endif
  constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(T));
  const V mul = V{} + static_cast<T>(mul_), add = V{} + static_cast<T>(add_);
  V acc[kChainsNarrow];
  for (int c = 0; c < kChainsNarrow; ++c) acc[c] = V{} + static_cast<T>(c);
  for (int64_t i = 0; i < iters; ++i) {
    // -ffp-contract=fast (CMakeLists.txt) makes this one FMA where the target has it.
    for (int c = 0; c < kChainsNarrow; ++c) acc[c] = acc[c] * mul + add;
  }
  double sum = 0;
  for (int c = 0; c < kChainsNarrow; ++c) {
    for (int l = 0; l < kLanes; ++l) sum += static_cast<double>(reinterpret_cast<T*>(&acc[c])[l]);
  }
  return sum;
}

bool always() { return true; }

#endif  // SMLP_PEAK_X86

struct Variant {
  const char* isa;
  const char* instruction;
  int lanes;
  int chains;
  int flops_per_step;  // per chain step of one thread: one instruction (or mul + add pair)
  Kernel kernel;
  bool (*supported)();
};

// Fastest first: "auto" takes the first one the CPU supports.
std::vector<Variant> variants(PeakKind kind) {
#if SMLP_PEAK_X86
  switch (kind) {
    case PeakKind::kFloat32:
      return {{"avx512", "vfmadd*ps zmm", 16, kChainsWide, 32, chains_avx512_f32, has_avx512},
              {"avx2", "vfmadd*ps ymm", 8, kChainsNarrow, 16, chains_avx2_f32, has_avx2_fma},
              {"sse", "mulps + addps xmm", 4, kChainsNarrow, 8, chains_sse_f32, always}};
    case PeakKind::kFloat64:
      return {{"avx512", "vfmadd*pd zmm", 8, kChainsWide, 16, chains_avx512_f64, has_avx512},
              {"avx2", "vfmadd*pd ymm", 4, kChainsNarrow, 8, chains_avx2_f64, has_avx2_fma},
              {"sse", "mulpd + addpd xmm", 2, kChainsNarrow, 4, chains_sse_f64, always}};
    case PeakKind::kBFloat16Dot:
      // 16 fp32 lanes x (2 products + 2 adds) = 64 FLOPs per instruction.
      return {{"avx512bf16", "vdpbf16ps zmm", 16, kChainsWide, 64, chains_avx512bf16,
               has_avx512bf16}};
  }
#else
  const char* generic = "compiler-vectorised a*b+c, 128-bit";
  if (kind == PeakKind::kFloat32) {
    return {{"generic", generic, 4, kChainsNarrow, 8, chains_generic<float>, always}};
  }
  if (kind == PeakKind::kFloat64) {
    return {{"generic", generic, 2, kChainsNarrow, 4, chains_generic<double>, always}};
  }
#endif
  return {};
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The calling thread's CPU time; the wall clock where the system has no such clock.
double thread_cpu_s() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) {
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }
#endif
  return now_s();
}

struct Trial {
  double wall_s = 0;              // barrier to barrier, the whole team
  std::vector<double> cpu_s;      // each thread's CPU time in its loop
  double checksum = 0;
  int threads = 1;

  double max_cpu_s() const { return *std::max_element(cpu_s.begin(), cpu_s.end()); }
};

// All threads start together after a barrier and the wall clock stops after the last one
// ends. Each thread also times its own loop in CPU time: on a machine shared with other
// jobs a thread loses whole scheduler slices, which the wall clock counts and the thread's
// CPU time does not (see fma_peak()).
Trial run_trial(Kernel kernel, int64_t iters, int threads) {
  // Through volatile, so the compiler cannot see the operands' values.
  volatile double mul = 0.5, add = 0.25;
  const double m = mul, a = add;
  Trial t;
  t.cpu_s.assign(static_cast<size_t>(std::max(threads, 1)), 0.0);
  double t0 = 0, t1 = 0, sum = 0;
#if defined(_OPENMP)
  int team = 1;
#pragma omp parallel num_threads(threads) reduction(+ : sum)
  {
#pragma omp single
    {
      team = omp_get_num_threads();
      t0 = now_s();
    }  // implicit barrier: every thread starts after t0
    const double c0 = thread_cpu_s();
    sum += kernel(iters, m, a);
    t.cpu_s[static_cast<size_t>(omp_get_thread_num())] = thread_cpu_s() - c0;
#pragma omp barrier
#pragma omp single
    t1 = now_s();
  }
  t.threads = team;
  t.cpu_s.resize(static_cast<size_t>(team));
#else
  (void)threads;
  t0 = now_s();
  const double c0 = thread_cpu_s();
  sum = kernel(iters, m, a);
  t.cpu_s[0] = thread_cpu_s() - c0;
  t1 = now_s();
#endif
  t.wall_s = t1 - t0;
  t.checksum = sum;
  return t;
}

const char* kind_name(PeakKind kind) {
  switch (kind) {
    case PeakKind::kFloat32: return "fp32";
    case PeakKind::kFloat64: return "fp64";
    case PeakKind::kBFloat16Dot: return "bf16";
  }
  return "?";
}

}  // namespace

std::vector<std::string> fma_peak_isas(PeakKind kind) {
#if SMLP_PEAK_X86
  __builtin_cpu_init();  // harmless when done; needed if called before constructors ran
#endif
  std::vector<std::string> out;
  for (const Variant& v : variants(kind)) {
    if (v.supported()) out.emplace_back(v.isa);
  }
  return out;
}

FmaPeakResult fma_peak(PeakKind kind, const std::string& isa, int threads, double min_seconds,
                       int trials) {
  if (!(min_seconds > 0 && min_seconds <= 10)) {
    throw std::invalid_argument("fma_peak: min_seconds must be in (0, 10], got " +
                                std::to_string(min_seconds));
  }
  if (trials < 1 || trials > 1000) {
    throw std::invalid_argument("fma_peak: trials must be in [1, 1000], got " +
                                std::to_string(trials));
  }
#if SMLP_PEAK_X86
  __builtin_cpu_init();
#endif
#if defined(_OPENMP)
  if (threads <= 0) threads = omp_get_max_threads();
#else
  threads = 1;
#endif
  const std::vector<Variant> all = variants(kind);
  const Variant* chosen = nullptr;
  std::string known;
  for (const Variant& v : all) {
    known += (known.empty() ? "" : ", ") + std::string(v.isa);
    if ((isa == "auto" || isa == v.isa) && v.supported()) {
      chosen = &v;
      break;
    }
    if (isa == v.isa) {
      throw std::invalid_argument(std::string("fma_peak: this CPU lacks ") + v.isa + " for " +
                                  kind_name(kind));
    }
  }
  if (chosen == nullptr) {
    if (isa == "auto") {
      throw std::invalid_argument(std::string("fma_peak: no instruction set of this CPU "
                                              "measures ") +
                                  kind_name(kind));
    }
    throw std::invalid_argument("fma_peak: unknown instruction set '" + isa + "' for " +
                                kind_name(kind) + " (known: " + known + ")");
  }

  // Calibrate: grow the loop until a thread's loop takes a quarter of min_seconds of CPU
  // time, then size it for min_seconds. These trials also wake the cores up to speed.
  int64_t iters = 1024;
  for (;;) {
    const Trial t = run_trial(chosen->kernel, iters, threads);
    const double cpu_s = t.max_cpu_s();
    if (cpu_s >= 0.25 * min_seconds || iters >= (int64_t{1} << 40)) {
      const double scale = min_seconds / std::max(cpu_s, 1e-9);
      iters = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iters) * scale));
      break;
    }
    iters *= 8;
  }

  // The rate counts each thread's work over its own CPU time and adds them up: what the
  // cores do while the threads run, which is the ceiling a roofline needs, whatever else
  // the machine runs. (With more threads than logical CPUs this would count time-shared
  // cores twice; the caller passes at most the CPUs of its affinity mask and cgroup quota.)
  // The wall-clock rate of the team is kept too: on an idle machine the two agree.
  FmaPeakResult r;
  r.isa = chosen->isa;
  r.instruction = chosen->instruction;
  r.lanes = chosen->lanes;
  r.chains = chosen->chains;
  r.flops_per_step = chosen->flops_per_step;
  r.iterations = iters;
  r.trials = trials;
  const double flops_per_thread =
      static_cast<double>(iters) * chosen->chains * chosen->flops_per_step;
  for (int i = 0; i < trials; ++i) {
    const Trial t = run_trial(chosen->kernel, iters, threads);
    double rate = 0;
    for (double cpu_s : t.cpu_s) rate += flops_per_thread / std::max(cpu_s, 1e-12);
    if (rate > r.flop_per_s) {
      r.flop_per_s = rate;
      r.cpu_seconds = t.max_cpu_s();
      r.threads = t.threads;
    }
    const double wall_rate = flops_per_thread * t.threads / std::max(t.wall_s, 1e-12);
    if (wall_rate > r.flop_per_s_wall) {
      r.flop_per_s_wall = wall_rate;
      r.wall_seconds = t.wall_s;
    }
    r.checksum += t.checksum;
  }
  return r;
}

}  // namespace smlp::cpu
