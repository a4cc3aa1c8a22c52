// The CPU launchers' entry points: each call runs the kernels of one instruction set level
// (cpu/isa.h), the best one the running CPU supports, or the one SMLP_CPU_ISA names. The
// levels are the same source compiled several times (CMakeLists.txt); this file is compiled
// for the baseline only, so it runs on any CPU of the architecture.

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/launchers.h"

#ifndef SMLP_CPU_BUILT_AVX2
#define SMLP_CPU_BUILT_AVX2 0
#endif
#ifndef SMLP_CPU_BUILT_AVX512
#define SMLP_CPU_BUILT_AVX512 0
#endif
#ifndef SMLP_CPU_BUILT_AVX512BF16
#define SMLP_CPU_BUILT_AVX512BF16 0
#endif

#define SMLP_CPU_DECLARE_LEVEL(ns)                    \
  namespace smlp::cpu::ns {                           \
  void mix_fwd(const MixFwdParams& p);                \
  void mix_wgrad(const MixWgradParams& p);            \
  void axis_mix_fwd(const AxisMixFwdParams& p);       \
  void axis_mix_wgrad(const AxisMixWgradParams& p);   \
  int last_launch_threads();                          \
  }

SMLP_CPU_DECLARE_LEVEL(baseline)
#if SMLP_CPU_BUILT_AVX2
SMLP_CPU_DECLARE_LEVEL(avx2)
#endif
#if SMLP_CPU_BUILT_AVX512
SMLP_CPU_DECLARE_LEVEL(avx512)
#endif
#if SMLP_CPU_BUILT_AVX512BF16
SMLP_CPU_DECLARE_LEVEL(avx512bf16)
#endif

namespace smlp::cpu {
namespace {

struct Level {
  const char* name;
  bool (*supported)();
  void (*mix_fwd)(const MixFwdParams&);
  void (*mix_wgrad)(const MixWgradParams&);
  void (*axis_mix_fwd)(const AxisMixFwdParams&);
  void (*axis_mix_wgrad)(const AxisMixWgradParams&);
  int (*last_launch_threads)();
};

#define SMLP_CPU_LEVEL_ENTRY(ns, supported) \
  Level {                                   \
    #ns, supported, &ns::mix_fwd, &ns::mix_wgrad, &ns::axis_mix_fwd,  \
        &ns::axis_mix_wgrad, &ns::last_launch_threads                \
  }

// What each level's pragma enables (cpu/isa.h), checked feature by feature; the runtime
// library's checks include the operating system's support for the wider registers.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool has_avx512bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#endif
bool always() { return true; }

// Best first.
const std::vector<Level>& levels() {
  static const std::vector<Level> table = {
#if SMLP_CPU_BUILT_AVX512BF16
      SMLP_CPU_LEVEL_ENTRY(avx512bf16, has_avx512bf16),
#endif
#if SMLP_CPU_BUILT_AVX512
      SMLP_CPU_LEVEL_ENTRY(avx512, has_avx512),
#endif
#if SMLP_CPU_BUILT_AVX2
      SMLP_CPU_LEVEL_ENTRY(avx2, has_avx2),
#endif
      SMLP_CPU_LEVEL_ENTRY(baseline, always),
  };
  return table;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

const Level& best_level() {
  static const Level* best = [] {
    for (const Level& l : levels()) {
      if (l.supported()) return &l;
    }
    return &levels().back();
  }();
  return *best;
}

// The level for the next launch (SMLP_CPU_ISA is read on every call, so a test or a user can
// switch levels between calls).
const Level& current_level() {
  const char* env = std::getenv("SMLP_CPU_ISA");
  const std::string want = env == nullptr ? "" : env;
  if (want.empty() || want == "auto") return best_level();
  for (const Level& l : levels()) {
    if (want != l.name) continue;
    if (!l.supported()) {
      throw std::invalid_argument("SMLP_CPU_ISA=" + want +
                                  ": this CPU lacks the instructions of that level (it can run: " +
                                  join(cpu_isa_levels_supported()) + ")");
    }
    return l;
  }
  for (const char* known : {"avx512bf16", "avx512", "avx2", "baseline"}) {
    if (want == known) {
      throw std::invalid_argument("SMLP_CPU_ISA=" + want +
                                  ": this build of the extension has no kernels for that level "
                                  "(built: " + join(cpu_isa_levels_built()) + ")");
    }
  }
  throw std::invalid_argument("SMLP_CPU_ISA='" + want +
                              "' is not a level; use auto, avx512bf16, avx512, avx2 or baseline");
}

// The level of the calling thread's latest launch.
thread_local const Level* last_level = nullptr;

}  // namespace

int last_launch_threads() { return last_level == nullptr ? 0 : last_level->last_launch_threads(); }

std::vector<std::string> cpu_isa_levels_built() {
  std::vector<std::string> names;
  for (const Level& l : levels()) names.emplace_back(l.name);
  return names;
}

std::vector<std::string> cpu_isa_levels_supported() {
  std::vector<std::string> names;
  for (const Level& l : levels()) {
    if (l.supported()) names.emplace_back(l.name);
  }
  return names;
}

std::string cpu_isa_selected() { return current_level().name; }

namespace {
const Level& launch_level() {
  last_level = &current_level();
  return *last_level;
}
}  // namespace

void mix_fwd(const MixFwdParams& p) { launch_level().mix_fwd(p); }
void mix_wgrad(const MixWgradParams& p) { launch_level().mix_wgrad(p); }
void axis_mix_fwd(const AxisMixFwdParams& p) { launch_level().axis_mix_fwd(p); }
void axis_mix_wgrad(const AxisMixWgradParams& p) { launch_level().axis_mix_wgrad(p); }

}  // namespace smlp::cpu
