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
#   build     pip install --no-build-isolation --no-deps -e . with the CUDA part required,
#             a test build (SMLP_TEST_HOOKS=1: cuda_probe, SMLP_CUDA_MAX_SPLITS)
#   test      the test files one at a time (GPU-heavy ones first), each under a time limit
#   sanitize  compute-sanitizer memcheck, then racecheck on two shapes, over
#             scripts/gpu_sanitize.py (every GPU backend, forward and backward, checked)
#   sass      SASS of smlp_kernels._C per kernel: HGMMA / HMMA / FFMA, cp.async and TMA
#             loads, local memory (LDL/STL); needs cuobjdump, not a GPU
#   bench     smlp-bench's gpu suite, one shape group per command; a group whose complete
#             results are already in the session folder is skipped, so repeating the call
#             carries on where the last one stopped (a group cut short by the deadline is
#             kept as gpu-GROUP.partial.json and run again)
#
# Results: gpu-session/ in the repository root (ignored by git; SMLP_GPU_SESSION_DIR names
# another folder), packed at the end into $OUT/gpu-session-<steps>.tar.gz together with
# $OUT/summary.txt. A warm machine keeps the folder between calls; a fresh one does not, so
# unpack each archive here and name gpu-session in the device tool's `carry` to resume. Unpack the archive here and merge the benchmark parts with
#   smlp-bench --from-json gpu-session/bench/gpu-*.json --out benchmarks/results --plot
#
# Typical calls of the device tool (a first call also starts the machine):
#   bash scripts/gpu_session.sh env build test sanitize sass
#   bash scripts/gpu_session.sh build bench      (repeat until every group is done)
# The deadline (at most 580 s) leaves the tool's 600-second limit room for the packing.
# Exit status: 0 when every step that ran passed, 1 otherwise, 2 for bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
DEADLINE=560
steps=()
while (($#)); do
  case "$1" in
    --deadline)
      if (($# < 2)); then echo "gpu_session.sh: --deadline needs a number of seconds" >&2; exit 2; fi
      DEADLINE=$2
      shift 2
      ;;
    env | build | test | sanitize | sass | bench) steps+=("$1"); shift ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_session.sh: unknown step or option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$DEADLINE" =~ ^[0-9]+$ ]] || ((10#$DEADLINE > 580)); then
  echo "gpu_session.sh: --deadline must be a whole number of seconds up to 580, not '$DEADLINE'" >&2
  exit 2
fi
DEADLINE=$((10#$DEADLINE))
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
# for packing, whichever is smaller. Exit 124 or 137 when it was stopped at the limit,
# NOT_RUN when too little time was left to start it.
NOT_RUN=200
bounded() {
  local want=$1 have
  shift
  have=$(($(left) - 25))
  ((have < want)) && want=$have
  if ((want < 10)); then return $NOT_RUN; fi
  timeout -s TERM -k 10 "$want" "$@"
}

has_gpu() {
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}

step_env() {
  local tool
  {
    timeout 60 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv 2>&1
    timeout 120 "$PY" - <<'EOF'
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
    for tool in nvcc compute-sanitizer cuobjdump ncu; do
      echo "$tool: $(command -v "$tool" || echo MISSING)"
    done
    timeout 60 "$PY" -m pip list 2>/dev/null |
      grep -iE "^(hypothesis|pytest|pytest-benchmark|matplotlib|numpy|pybind11|cmake|ninja) "
  } 2>&1 | tee "$SESSION/env.txt"
  has_gpu
}

step_build() {
  SMLP_BUILD_CUDA=1 SMLP_TEST_HOOKS=1 SMLP_BUILD_JOBS=$(nproc) \
    bounded 400 "$PY" -m pip install --no-build-isolation --no-deps -e . \
    >"$SESSION/build.log" 2>&1 || { tail -30 "$SESSION/build.log"; return 1; }
  "$PY" -m smlp_kernels.info 2>&1 | tee "$SESSION/info.txt"
  # The build must have its CUDA part: without it the cuda backend is silently absent.
  "$PY" -c "import smlp_kernels._C as m, sys; sys.exit(0 if m.build_info()['with_cuda'] else 1)" ||
    { note "build: smlp_kernels._C was built without its CUDA part"; return 1; }
  # The tests of cuda_probe and SMLP_CUDA_MAX_SPLITS need the test build.
  "$PY" -c "import smlp_kernels._C as m, sys; sys.exit(0 if m.build_info()['test_hooks'] else 1)" ||
    { note "build: smlp_kernels._C is not a test build (SMLP_TEST_HOOKS=1)"; return 1; }
}

# GPU-heavy files first, so a deadline cuts the least useful ones; then every other file.
FIRST_TESTS=(
  tests/test_backend_contract.py tests/test_cuda_backend.py tests/test_triton.py tests/test_ops.py
  tests/test_cuda_graphs.py
  tests/test_autocast.py tests/test_memory.py tests/test_compile_export.py tests/test_fuzz.py
  tests/test_flops.py tests/test_nn.py tests/test_models.py tests/test_bench.py benchmarks
  tests/test_extension.py tests/test_cuda_launchers.py tests/test_info.py
)

step_test() {
  local f name rc failed=0 files=("${FIRST_TESTS[@]}")
  for f in tests/test_*.py; do
    [[ " ${FIRST_TESTS[*]} " == *" $f "* ]] || files+=("$f")
  done
  # As in CI: a missing extension, CUDA part or nvcc fails the tests instead of skipping them.
  export SMLP_REQUIRE_EXTENSION=1 SMLP_REQUIRE_CUDA_BUILD=1 SMLP_REQUIRE_NVCC=1 SMLP_REQUIRE_TEST_HOOKS=1
  mkdir -p "$SESSION/test"
  for f in "${files[@]}"; do
    name=$(basename "$f" .py)
    bounded 300 "$PY" -m pytest -q -p no:cacheprovider -rfEs "$f" \
      --junitxml="$SESSION/test/$name.xml" >"$SESSION/test/$name.log" 2>&1
    rc=$?
    case $rc in
      0) note "test $f: $(tail -1 "$SESSION/test/$name.log")" ;;
      124 | 137) note "test $f: STOPPED at its time limit"; failed=1 ;;
      "$NOT_RUN") note "test $f: not run (deadline)"; failed=1 ;;
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
  # Without PyTorch's caching allocator every tensor is its own allocation, so memcheck
  # sees an access past a tensor's end instead of it landing in a cached neighbour.
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  bounded 300 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PY" scripts/gpu_sanitize.py >"$SESSION/memcheck.log" 2>&1 || rc=$?
  note "sanitize memcheck: exit $rc; $(grep -c '^=========  *Invalid' "$SESSION/memcheck.log") invalid accesses; $(grep -m1 'ERROR SUMMARY' "$SESSION/memcheck.log")"
  local rc2=0
  bounded 240 compute-sanitizer --tool racecheck --error-exitcode 9 \
    "$PY" scripts/gpu_sanitize.py --quick >"$SESSION/racecheck.log" 2>&1 || rc2=$?
  note "sanitize racecheck: exit $rc2; $(grep -m1 'RACECHECK SUMMARY' "$SESSION/racecheck.log")"
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
  ((rc == 0 && rc2 == 0))
}

step_sass() {
  local so dump
  so=$("$PY" -c "import smlp_kernels._C as m; print(m.__file__)") || return 1
  # The CUDA toolkit's cuobjdump, else the one Triton ships.
  dump=$(command -v cuobjdump ||
    "$PY" -c "import triton; print(triton.knobs.nvidia.cuobjdump.path)" 2>/dev/null) ||
    { note "sass: no cuobjdump"; return 1; }
  bounded 120 "$dump" --dump-sass "$so" >"$SESSION/sass.txt" 2>&1 || return 1
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
    rm -f "$SESSION/bench/gpu-$g.partial.json"
    bounded 570 "$PY" -m smlp_kernels.bench --suite gpu --shapes "$g" \
      --time-budget $(($(left) - 90)) --out "$SESSION/bench" --name "gpu-$g" \
      >"$SESSION/bench/gpu-$g.log" 2>&1
    rc=$?
    if [[ -f "$SESSION/bench/gpu-$g.json" ]] && ! complete "$SESSION/bench/gpu-$g.json"; then
      mv "$SESSION/bench/gpu-$g.json" "$SESSION/bench/gpu-$g.partial.json"
      note "bench $g: cut short (exit $rc), kept as gpu-$g.partial.json; call again to redo it"
      failed=1
    else
      note "bench $g: exit $rc; $(tail -1 "$SESSION/bench/gpu-$g.log")"
      ((rc == 0)) || failed=1
    fi
  done
  return $failed
}

# complete FILE: whether an smlp-bench JSON holds a whole run (not interrupted, no case left
# out by the time budget).
complete() {
  "$PY" - "$1" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
cut = {"time budget exhausted", "interrupted"}
partial = doc["meta"].get("interrupted") or any(r.get("error") in cut for r in doc["results"])
sys.exit(1 if partial else 0)
EOF
}

note "== gpu_session.sh ${steps[*]} ($(date -u +%FT%TZ), deadline ${DEADLINE}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
for s in "${steps[@]}"; do
  if [[ $s != env && $s != sass ]] && ! has_gpu; then
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

if [[ -n "${OUT:-}" ]]; then
  tag=$(IFS=-; echo "${steps[*]}")
  tar czf "$OUT/gpu-session-$tag.tar.gz" -C "$(dirname "$SESSION")" "$(basename "$SESSION")" ||
    { note "packing failed"; status=1; }
fi
note "== done in $(($(date +%s) - START)) s, exit $status"
if [[ -n "${OUT:-}" ]]; then
  cp "$SUMMARY" "$OUT/summary.txt" || status=1
fi
exit $status
