#!/usr/bin/env bash
# One script for a lent GPU machine (see the device tool's README): build, validate and
# benchmark in a few full calls, each within the tool's 10-minute limit, and pack what it
# wrote into one archive under $OUT (the tool brings back at most 8 files).
#
#   bash scripts/gpu_session.sh [--deadline SECONDS] STEP...
#
# Steps, run in the order given; each is bounded by what is left of the deadline (default
# 560 s from the start), and a step that does not fit is reported as not run:
#   env       the machine: GPU, driver, Python, torch, triton, nvcc, compute-sanitizer
#   build     pip install --no-build-isolation --no-deps -e . with the CUDA part required
#   test      the test files one at a time (GPU-heavy ones first), each under a time limit
#   sanitize  compute-sanitizer memcheck, then racecheck on two shapes, over
#             scripts/gpu_sanitize.py (every GPU backend, forward and backward, checked)
#   sass      SASS of smlp_kernels._C per kernel: HGMMA / HMMA / FFMA, cp.async and TMA
#             loads, local memory (LDL/STL)
#   bench     smlp-bench's gpu suite, one shape group per command; a group whose results are
#             already in the session folder (from an earlier call on the same machine) is
#             skipped, so repeating the call carries on where the last one stopped
#
# Results: gpu-session/ in the repository root (ignored by git; a warm machine keeps it
# between calls; SMLP_GPU_SESSION_DIR names another folder), packed at the end into $OUT/gpu-session-<steps>.tar.gz together with
# $OUT/summary.txt. Unpack the archive here and merge the benchmark parts with
#   smlp-bench --from-json gpu-session/bench/gpu-*.json --out benchmarks/results --plot
#
# Typical calls of the device tool (a first call also starts the machine):
#   bash scripts/gpu_session.sh env build test sanitize sass
#   bash scripts/gpu_session.sh build bench      (repeat until every group is done)
# Exit status: 0 when every step that ran passed, 1 otherwise, 2 for bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
DEADLINE=560
steps=()
while (($#)); do
  case "$1" in
    --deadline) DEADLINE=${2:?--deadline needs a number of seconds}; shift 2 ;;
    env | build | test | sanitize | sass | bench) steps+=("$1"); shift ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_session.sh: unknown step or option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$DEADLINE" =~ ^[0-9]+$ ]]; then
  echo "gpu_session.sh: --deadline must be a whole number of seconds, not '$DEADLINE'" >&2
  exit 2
fi
if ((${#steps[@]} == 0)); then
  echo "gpu_session.sh: name at least one step (see --help)" >&2
  exit 2
fi

PY=${PYTHON:-python3}
SESSION=${SMLP_GPU_SESSION_DIR:-gpu-session}
mkdir -p "$SESSION"
SUMMARY="$SESSION/summary.txt"
export PYTHONUNBUFFERED=1
status=0

left() { echo $((DEADLINE - ($(date +%s) - START))); }
note() { echo "$*" | tee -a "$SUMMARY"; }
# bounded SECONDS CMD...: run CMD under a limit of SECONDS or what is left less a reserve
# for packing, whichever is smaller; 124 when it was stopped at the limit.
bounded() {
  local want=$1 have
  shift
  have=$(($(left) - 25))
  ((have < want)) && want=$have
  if ((want < 10)); then return 125; fi
  timeout -s TERM -k 15 "$want" "$@"
}

has_gpu() {
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}

step_env() {
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv 2>&1
    "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton: not importable:", exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          f"{p.total_memory / 2**30:.1f} GiB")
else:
    print("no CUDA device visible to torch")
EOF
    nvcc --version 2>&1 | tail -1
    command -v compute-sanitizer cuobjdump ncu 2>&1
    "$PY" -m pip list 2>/dev/null | grep -iE "^(hypothesis|pytest|pytest-benchmark|matplotlib|numpy) "
  } 2>&1 | tee "$SESSION/env.txt"
  has_gpu
}

step_build() {
  SMLP_BUILD_CUDA=1 SMLP_REQUIRE_CUDA_BUILD=1 MAX_JOBS=$(nproc) \
    bounded 400 "$PY" -m pip install --no-build-isolation --no-deps -e . \
    >"$SESSION/build.log" 2>&1 || { tail -30 "$SESSION/build.log"; return 1; }
  "$PY" -m smlp_kernels.info 2>&1 | tee "$SESSION/info.txt"
}

# GPU-heavy files first, so a deadline cuts the least useful ones.
TEST_FILES=(
  tests/test_cuda_backend.py tests/test_triton.py tests/test_ops.py tests/test_cuda_graphs.py
  tests/test_autocast.py tests/test_memory.py tests/test_compile_export.py tests/test_fuzz.py
  tests/test_flops.py tests/test_nn.py tests/test_models.py tests/test_bench.py benchmarks
  tests/test_extension.py tests/test_cuda_launchers.py tests/test_info.py
)

step_test() {
  local f name rc failed=0
  mkdir -p "$SESSION/test"
  for f in "${TEST_FILES[@]}"; do
    name=$(basename "$f" .py)
    bounded 300 "$PY" -m pytest -q -p no:cacheprovider -rfEs "$f" \
      --junitxml="$SESSION/test/$name.xml" >"$SESSION/test/$name.log" 2>&1
    rc=$?
    case $rc in
      0 | 5) note "test $f: $(tail -1 "$SESSION/test/$name.log")" ;;
      124) note "test $f: STOPPED at its time limit"; failed=1 ;;
      125) note "test $f: not run (deadline)"; failed=1 ;;
      *) note "test $f: FAILED (exit $rc): $(tail -1 "$SESSION/test/$name.log")"; failed=1 ;;
    esac
  done
  return $failed
}

step_sanitize() {
  local rc=0
  if ! command -v compute-sanitizer >/dev/null; then
    note "sanitize: compute-sanitizer is not on the PATH"
    return 1
  fi
  bounded 300 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PY" scripts/gpu_sanitize.py >"$SESSION/memcheck.log" 2>&1 || rc=$?
  note "sanitize memcheck: exit $rc; $(grep -c '^=========  *Invalid' "$SESSION/memcheck.log") invalid accesses; $(tail -1 "$SESSION/memcheck.log")"
  local rc2=0
  bounded 240 compute-sanitizer --tool racecheck --error-exitcode 9 \
    "$PY" scripts/gpu_sanitize.py --quick >"$SESSION/racecheck.log" 2>&1 || rc2=$?
  note "sanitize racecheck: exit $rc2; $(grep -ciE 'hazard' "$SESSION/racecheck.log") hazard lines; $(tail -1 "$SESSION/racecheck.log")"
  ((rc == 0 && rc2 == 0))
}

step_sass() {
  local so
  so=$("$PY" -c "import smlp_kernels._C as m; print(m.__file__)") || return 1
  cuobjdump --dump-sass "$so" >"$SESSION/sass.txt" 2>&1 || return 1
  # Per arch and kernel: how many of each instruction class appear in the code.
  awk '
    /arch = sm_/ { arch = $NF }
    /Function :/ { fn = $3 }
    {
      for (i = 1; i <= NF; i++) {
        op = $i; sub(/\..*/, "", op)
        if (op ~ /^(HGMMA|HMMA|FFMA|DFMA|LDGSTS|UTMALDG|UBLKCP|LDL|STL)$/) {
          n[arch " " fn " " op]++; break
        }
      }
    }
    END { for (k in n) print k, n[k] }' "$SESSION/sass.txt" | sort >"$SESSION/sass-summary.txt"
  note "sass: $(wc -l <"$SESSION/sass-summary.txt") (arch, kernel, class) rows in sass-summary.txt"
}

BENCH_GROUPS=(T1,T2 T3,T4 B1,B2 B3,B4 smlpnet_base)

step_bench() {
  local g rc failed=0
  mkdir -p "$SESSION/bench"
  for g in "${BENCH_GROUPS[@]}"; do
    if [[ -f "$SESSION/bench/gpu-$g.json" ]]; then
      note "bench $g: already done"
      continue
    fi
    if (($(left) < 200)); then
      note "bench $g: not run (deadline; call again to carry on)"
      failed=1
      continue
    fi
    # smlp-bench writes what it has when stopped (SIGTERM); --time-budget stops it sooner.
    bounded 570 smlp-bench --suite gpu --shapes "$g" --time-budget $(($(left) - 90)) \
      --out "$SESSION/bench" --name "gpu-$g" >"$SESSION/bench/gpu-$g.log" 2>&1
    rc=$?
    note "bench $g: exit $rc; $(tail -1 "$SESSION/bench/gpu-$g.log")"
    ((rc == 0)) || failed=1
  done
  return $failed
}

note "== gpu_session.sh ${steps[*]} ($(date -u +%FT%TZ), deadline ${DEADLINE}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
for s in "${steps[@]}"; do
  if [[ $s != env ]] && ! has_gpu; then
    note "$s: no CUDA device; this script is for the GPU machines"
    status=1
    break
  fi
  if (($(left) < 40)); then
    note "$s: not run (deadline)"
    status=1
    continue
  fi
  t0=$(date +%s)
  if "step_$s"; then verdict=ok; else verdict=FAILED; status=1; fi
  note "step $s: $verdict in $(($(date +%s) - t0)) s"
done

note "== done in $(($(date +%s) - START)) s, exit $status"
if [[ -n "${OUT:-}" ]]; then
  tag=$(IFS=-; echo "${steps[*]}")
  tar czf "$OUT/gpu-session-$tag.tar.gz" "$SESSION" || { echo "packing failed" >&2; status=1; }
  cp "$SUMMARY" "$OUT/summary.txt"
fi
exit $status
