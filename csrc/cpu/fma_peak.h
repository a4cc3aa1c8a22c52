// The CPU's peak arithmetic rate, measured: the compute ceiling of smlp-bench's roofline.
//
// A matmul library's rate is an achieved rate, not a ceiling: our own kernels can beat it
// (they did: 330 GFLOP/s against torch's 191 on an AMD EPYC). The peak is measured the way
// the Empirical Roofline Toolkit does it: every thread runs many independent multiply-add
// chains on vector registers, enough to cover FMA latency x throughput, with no memory
// traffic in the loop. The instruction set is chosen at run time (per-function target
// attributes, __builtin_cpu_supports), so a portable build measures the machine it runs on.

#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace smlp::cpu {

// What is measured. kBFloat16Dot: AVX512-BF16 vdpbf16ps (fp32 accumulators += the sum of
// two bf16 products per lane).
enum class PeakKind { kFloat32, kFloat64, kBFloat16Dot };

struct FmaPeakResult {
  double flop_per_s = 0;        // the fastest trial: sum over threads of work / CPU time
  double cpu_seconds = 0;       // that trial's longest thread CPU time
  double flop_per_s_wall = 0;   // the fastest trial by the wall clock, barrier to barrier
  double wall_seconds = 0;      // that trial's wall time
  int64_t iterations = 0;       // loop iterations per thread per trial
  int trials = 0;
  int threads = 0;              // the OpenMP team that ran
  int lanes = 0;                // accumulator lanes per vector register
  int chains = 0;               // independent accumulator registers per thread
  int flops_per_step = 0;       // per chain step: one instruction, or SSE's mul + add pair
  std::string isa;              // "avx512", "avx2", "sse" or "generic"
  std::string instruction;      // what the loop executes, e.g. "vfmadd231ps zmm"
  double checksum = 0;          // sum of every accumulator: the loop's result
};

// The instruction sets the running CPU can use for `kind`, fastest first; empty when it has
// none (bf16 without AVX512-BF16).
std::vector<std::string> fma_peak_isas(PeakKind kind);

// Run `trials` timed trials of about `min_seconds` each (after a calibration that sizes the
// loop) on `threads` OpenMP threads (<= 0: omp_get_max_threads()) with instruction set
// `isa` ("auto": the first of fma_peak_isas). Throws std::invalid_argument for an
// instruction set the CPU lacks.
FmaPeakResult fma_peak(PeakKind kind, const std::string& isa, int threads, double min_seconds,
                       int trials);

}  // namespace smlp::cpu
