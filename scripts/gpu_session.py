"""A GPU lease in two calls: build, check and benchmark on a lent GPU machine, within its
limits (a fresh machine per call; call 1 at most 8 minutes, call 2 at most 4).

Here (the machine with this checkout), around the two calls of the device tool::

    python3 scripts/gpu_session.py prepare                # gpu-session/: the commit, a clean slate
    # device call 1: python3 scripts/gpu_session.py call1   carry gpu-session, timeout_s 480
    python3 scripts/gpu_session.py unpack FILES_AT         # the call's archive -> gpu-session/
    # device call 2: python3 scripts/gpu_session.py call2   carry gpu-session, timeout_s 240
    python3 scripts/gpu_session.py unpack FILES_AT --results benchmarks/results

On the GPU machine, each call runs its plan's steps under one deadline (call1: 450 s,
call2: 215 s, leaving the tool's timeout room to pack), each step within its own limit and
only when enough time is left to start it:

    env       GPU, driver, Python, torch, triton, nvcc, compute-sanitizer, pytest-xdist
    build     ``pip install --no-build-isolation --no-deps -e .`` with the CUDA part required,
              sm_90a only (SMLP_CUDA_ARCHS=90a), all cores, a test build (SMLP_TEST_HOOKS=1);
              the built extension is kept in the session folder, and a later call on a fresh
              machine installs that one instead of building again
    check     the tests that run on the GPU (``pytest -m gpu``; none of the CPU-only files),
              every GPU backend (triton, triton_v0, cuda) against the float64 reference,
              autotuning off, in parallel processes when pytest-xdist is there
    sanitize  compute-sanitizer memcheck over scripts/gpu_sanitize.py (every GPU backend,
              forward and backward, checked), counting bad accesses by kernels; a machine
              whose sanitizer refuses the device is reported as UNAVAILABLE, not as a
              kernel failure
    bench     smlp-bench on the eight stage shapes (bf16, batch 128, fwd and fwd+bwd):
              first triton, triton_v0, cuda and spach-eager on every case, then
              spach-compile-max-autotune case by case (forward first), all into one result
              file with ``--resume``: each call measures only what earlier calls have not,
              and a call stopped by its deadline keeps every case it finished; a file of
              another commit is moved aside

Results land in the session folder (gpu-session/, ignored by git) and are packed into
``$OUT``: one archive and the summary (the tool brings back at most 8 files). ``unpack``
puts the archive back here, where the next call carries it; ``--results DIR`` then writes
the merged JSON, CSV and plots, named after the GPU, into DIR.

Exit status: 0 when every step that ran passed, 1 otherwise (a step not run for the
deadline counts as not passed; a tool reported UNAVAILABLE does not), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SESSION_ENV = "SMLP_GPU_SESSION_DIR"

# The device tool's limits: at most 8 files back, each at most 16 MiB, named in letters,
# digits, '.', '_' and '-'; one command at most 600 s.
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
NAME_OK = re.compile(r"[A-Za-z0-9._-]+")
MAX_DEADLINE_S = 580
PACK_RESERVE_S = 15  # kept free at the end of every call for packing
LOG_KEEP_BYTES = 2 * 2**20  # a log longer than this is packed as its last 2 MiB

# The test files with nothing to run on a GPU (CPU backend, CUDA emulation on the host,
# ptxas and Triton ahead-of-time compiles, DDP over gloo, the reference, these scripts).
CPU_ONLY_TESTS = (
    "tests/test_cpu_backend.py",
    "tests/test_cuda_emulation.py",
    "tests/test_cuda_ptxas.py",
    "tests/test_triton_aot.py",
    "tests/test_distributed.py",
    "tests/test_reference.py",
    "tests/test_scripts.py",
)

STAGES = "T1,T2,T3,T4,B1,B2,B3,B4"
BENCH_COMMON = ("--suite", "gpu", "--shapes", STAGES, "--dtype", "bf16", "--batch", "128")
# (providers, modes, compile reserve in seconds) in the order they are measured.
BENCH_PHASES = (
    ("triton,triton_v0,cuda,spach-eager", "fwd,fwd+bwd", 0),
    ("spach-compile-max-autotune", "fwd", 60),
    ("spach-compile-max-autotune", "fwd+bwd", 90),
)


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------


class Deadline:
    """Seconds left of a call's budget; ``clock`` is replaceable for tests."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.end = clock() + seconds

    def left(self) -> float:
        return self.end - self.clock()

    def allot(self, cap: float | None, reserve: float = PACK_RESERVE_S) -> float:
        """The time a step may take: its cap, or what is left less the reserve if smaller."""
        room = self.left() - reserve
        return room if cap is None else min(cap, room)


@dataclass
class Outcome:
    """What a bounded command did: its exit code, and whether its limit stopped it."""

    rc: int | None
    stopped: bool
    seconds: float


def run_bounded(
    cmd: Sequence[str],
    limit: float,
    log: Path,
    *,
    env: dict | None = None,
    stop_signal: int = signal.SIGTERM,
    grace: float = 15.0,
) -> Outcome:
    """Run cmd with stdout and stderr into log; at ``limit`` seconds send ``stop_signal`` to
    it (SIGINT lets pytest stop its workers and write its report), then kill its whole
    process group ``grace`` seconds later. Returns within about limit + grace + 10 s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=max(limit, 0.0))
            return Outcome(rc, False, time.monotonic() - start)
        except subprocess.TimeoutExpired:
            pass
        try:
            proc.send_signal(stop_signal)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)  # what is left of it, its workers included
        try:
            proc.wait(timeout=10)  # a process stuck in the GPU driver may take longer: go on
        except subprocess.TimeoutExpired:
            pass
        return Outcome(proc.returncode, True, time.monotonic() - start)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------------------------
# The session: its folder, its summary, its steps
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    folder: Path
    deadline: Deadline
    python: str = sys.executable

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.txt"

    def note(self, text: str) -> None:
        print(text, flush=True)
        with open(self.summary_path, "a") as f:
            f.write(text + "\n")

    def env(self, **extra: str) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}
        commit = self.commit()
        if commit:
            env.setdefault("SMLP_GIT_COMMIT", commit)
        return env

    def commit(self) -> str | None:
        """The commit prepare recorded, if this tree is still the one it saw; in a git
        checkout, its own; else None."""
        if not hasattr(self, "_commit"):
            self._commit = recorded_commit(self.folder, ROOT) or _git_commit()
        return self._commit


def tree_digest(root: Path, names: Sequence[str]) -> str:
    """sha256 over the named files and folders under root (paths and contents)."""
    h = hashlib.sha256()
    for name in sorted(names):
        p = root / name
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0")
            h.update(f.read_bytes() if f.is_file() else b"(missing)")
            h.update(b"\0")
    return h.hexdigest()


# What the extension is built from: a carried build is reused only if these are unchanged.
BUILD_SOURCES = ("csrc", "CMakeLists.txt", "setup.py", "pyproject.toml")


def recorded_commit(folder: Path, root: Path) -> str | None:
    """commit.txt's "HASH [dirty]" when tree.sha256 (prepare's digest of every file that
    travels) matches this tree; None when there is none or the tree changed since."""
    commit, digest, files = (folder / n for n in ("commit.txt", "tree.sha256", "tree-files.txt"))
    if not (commit.is_file() and digest.is_file() and files.is_file()):
        return None
    names = files.read_text().split("\n")
    if tree_digest(root, [n for n in names if n]) != digest.read_text().strip():
        return None
    return commit.read_text().strip() or None


class Unavailable(str):
    """A step's verdict when a tool outside our code could not do its part: reported, not
    counted as a failure."""


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Session, float], str | None]  # (session, seconds) -> None or a failure
    cap: float | None  # at most this long (None: all that is left)
    least: float  # not started with less than this left


def step_env(s: Session, limit: float) -> str | None:
    code = (
        "import sys, torch\n"
        "print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',"
        " torch.version.cuda)\n"
        "try:\n    import triton; print('triton', triton.__version__)\n"
        "except ImportError as e:\n    print('triton: not importable:', e)\n"
        "for m in ('xdist', 'pytest_timeout', 'hypothesis', 'matplotlib'):\n"
        "    try:\n        __import__(m); print(m, 'yes')\n"
        "    except ImportError:\n        print(m, 'MISSING')\n"
        "if torch.cuda.is_available():\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    print(p.name, f'sm_{p.major}{p.minor}', p.multi_processor_count, 'SMs',"
        " f'{p.total_memory / 2**30:.1f} GiB')\n"
        "else:\n    print('no CUDA device visible to torch'); sys.exit(1)\n"
    )
    log = s.folder / "env.txt"
    out = run_bounded([s.python, "-c", code], limit, log, env=s.env())
    with open(log, "a") as f:
        for tool in ("nvidia-smi", "nvcc", "compute-sanitizer", "cuobjdump", "ncu"):
            f.write(f"{tool}: {shutil.which(tool) or 'MISSING'}\n")
        f.write(f"cpu cores: {os.cpu_count()}\n")
    if shutil.which("nvidia-smi"):
        run_bounded(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                "--format=csv",
            ],
            min(limit, 30),
            log,
        )
    if out.rc != 0:
        return "no CUDA device (this script is for the GPU machines)"
    return None


def _built_extension(folder: Path) -> Path | None:
    found = sorted(folder.glob("_C.*.so"))
    return found[0] if found else None


def _extension_check(s: Session, limit: float, log: Path) -> str | None:
    code = (
        "import json, smlp_kernels._C as m\n"
        "info = m.build_info(); print(json.dumps(info))\n"
        "assert info['with_cuda'], 'built without its CUDA part'\n"
        "assert info['test_hooks'], 'not a test build (SMLP_TEST_HOOKS=1)'\n"
    )
    out = run_bounded([s.python, "-c", code], limit, log, env=s.env())
    return None if out.rc == 0 else f"the extension does not load or is not the one needed ({log})"


def step_build(s: Session, limit: float) -> str | None:
    keep = s.folder / "build"
    log = s.folder / "build.log"
    carried = _built_extension(keep)
    tag = _extension_suffix(s)
    sources = tree_digest(ROOT, BUILD_SOURCES)
    stamp = keep / "sources.sha256"
    same = stamp.is_file() and stamp.read_text().strip() == sources
    if carried is not None and tag and carried.name == f"_C{tag}" and same:
        # An earlier call built it from these sources: install that copy, build nothing.
        for old in (ROOT / "smlp_kernels").glob("_C.*.so"):
            old.unlink()
        shutil.copy2(carried, ROOT / "smlp_kernels" / carried.name)
        s.note(f"build: installed the extension an earlier call built ({carried.name})")
        return _extension_check(s, min(limit, 60), log)
    if carried is not None:
        s.note("build: the carried extension is not for these sources or this Python: building")
    env = s.env(
        SMLP_BUILD_CUDA="1",
        SMLP_CUDA_ARCHS="90a",
        SMLP_BUILD_JOBS=str(os.cpu_count() or 1),
        SMLP_TEST_HOOKS="1",
        # Portable CPU code: call 2 may land on another CPU model and reuse this build.
        SMLP_CPU_NATIVE="0",
    )
    cmd = [s.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
           "--disable-pip-version-check", "-e", "."]  # fmt: skip
    out = run_bounded(cmd, limit, log, env=env)
    if out.stopped:
        return f"stopped at its limit of {limit:.0f} s"
    if out.rc != 0:
        return f"pip exit {out.rc} (build.log)"
    why = _extension_check(s, 60, log)
    if why is None:
        built = _built_extension(ROOT / "smlp_kernels")
        keep.mkdir(exist_ok=True)
        for old in keep.glob("_C.*.so"):
            old.unlink()
        if built is not None:
            shutil.copy2(built, keep / built.name)
            stamp.write_text(sources + "\n")
    return why


def _extension_suffix(s: Session) -> str | None:
    try:
        out = subprocess.run(
            [s.python, "-c", "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def junit_counts(path: Path) -> dict:
    """{passed, failed, errors, skipped, failures: [test ids]} from a JUnit XML report."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            counts["failures"].append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            counts["failures"].append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def _has_module(s: Session, name: str) -> bool:
    probe = subprocess.run(
        [s.python, "-c", f"import {name}"], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def step_check(s: Session, limit: float) -> str | None:
    folder = s.folder / "check"
    folder.mkdir(exist_ok=True)
    xml = folder / "junit.xml"
    cmd = [
        s.python,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-rfE",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        "--durations=15",
        "tests",
    ]
    cmd += [f"--ignore={f}" for f in CPU_ONLY_TESTS]
    if _has_module(s, "xdist"):  # as CI runs the suite: each file whole in one process
        cmd += ["-n", str(min(12, os.cpu_count() or 1)), "--dist", "loadfile"]
    if _has_module(s, "pytest_timeout"):
        cmd += ["--timeout", "120"]  # one hanging test must not take the whole call
    env = s.env(
        SMLP_REQUIRE_EXTENSION="1",
        SMLP_REQUIRE_CUDA_BUILD="1",
        SMLP_REQUIRE_TEST_HOOKS="1",
        SMLP_TRITON_AUTOTUNE="0",  # every tile is tested by name; tuning would only compile
        CI="1",  # hypothesis: the same examples as CI
    )
    out = run_bounded(cmd, limit, folder / "pytest.log", env=env, stop_signal=signal.SIGINT)
    c = junit_counts(xml)
    s.note(
        f"check: {c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
        f"{c['skipped']} skipped in {out.seconds:.0f} s"
        + (" (STOPPED at its limit: the rest did not run)" if out.stopped else "")
    )
    for name in c["failures"][:30]:
        s.note(f"  FAILED {name}")
    if out.stopped:
        return "stopped at its limit"
    if out.rc == 5:
        return "no test selected"
    if out.rc != 0:
        return f"pytest exit {out.rc}"
    if c["passed"] == 0:  # everything skipped: the GPU tests did not run
        return "no test passed (all skipped: see check/pytest.log)"
    return None


# Output by which compute-sanitizer says it cannot work on this machine (seen on machines
# whose runtime does not let it at the device).
SANITIZER_REFUSALS = (
    "Device not supported",
    "error 999",
    "Unable to find injection library",
    "Target application terminated before first instrumented API call",
)


# memcheck's lines for a bad access by a kernel (its API-error lines, "Program hit ... on
# CUDA API call", can come from PyTorch's or Triton's own probing and are not counted).
KERNEL_ERROR = re.compile(
    r"^=+\s+(Invalid __\w+__|Misaligned|Illegal|Out-of-range|.*out of bounds)"
)


def memcheck_verdict(rc: int | None, stopped: bool, output: str) -> tuple[str, str]:
    """(a line for the summary, kind) for a memcheck run of scripts/gpu_sanitize.py; kind is
    "ok", "failed" (a bad access by a kernel, a wrong answer, or a crash of the program),
    "unavailable" (the sanitizer refused the device, or exited before the program checked a
    case without a traceback of ours) or "inconclusive" (stopped at its limit). Only
    "failed" counts against our kernels."""
    for words in SANITIZER_REFUSALS:
        if words in output:
            return f"sanitizer unavailable: {words!r} (memcheck.log)", "unavailable"
    lines = output.splitlines()
    ran = any(line.startswith(("ok ", "FAIL ")) for line in lines)
    bad = sum(bool(KERNEL_ERROR.match(line)) for line in lines)
    if bad:
        return f"memcheck: {bad} bad access(es) by kernels (memcheck.log)", "failed"
    if stopped:
        return "memcheck: stopped at its limit (inconclusive)", "inconclusive"
    api = re.search(r"ERROR SUMMARY: (\d+) error", output)
    api_note = (
        f"; {api.group(1)} CUDA API error(s) reported, none by a kernel"
        if api and int(api.group(1))
        else ""
    )
    if ran and any(line.startswith("gpu_sanitize.py: 0 failure(s)") for line in lines):
        return f"memcheck: no bad access; gpu_sanitize.py: 0 failure(s){api_note}", "ok"
    if ran:
        return f"memcheck: the program exited {rc}: {_last_line(output, 'FAIL')}", "failed"
    tail = (output.strip().splitlines() or ["no output"])[-1][:200]
    if "Traceback" in output:
        return f"memcheck: the program raised before any case ran: {tail}", "failed"
    return f"sanitizer unavailable: exit {rc} before any case ran: {tail}", "unavailable"


def _last_line(text: str, containing: str) -> str:
    lines = [line for line in text.splitlines() if containing in line]
    return lines[-1].strip() if lines else "no line with " + repr(containing)


def step_sanitize(s: Session, limit: float) -> str | None:
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        return Unavailable("sanitizer unavailable: compute-sanitizer is not on the PATH")
    # Without PyTorch's caching allocator every tensor is its own allocation, so memcheck
    # sees an access past a tensor's end instead of it landing in a cached neighbour.
    env = s.env(PYTORCH_NO_CUDA_MEMORY_CACHING="1", SMLP_TRITON_AUTOTUNE="0")
    log = s.folder / "memcheck.log"
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "9", s.python,
           "scripts/gpu_sanitize.py", "--quick", "--backends", "cuda,triton,triton_v0",
           "--dtypes", "bf16,fp32"]  # fmt: skip
    out = run_bounded(cmd, limit, log, env=env)
    line, kind = memcheck_verdict(out.rc, out.stopped, log.read_text(errors="replace"))
    s.note(f"sanitize: {line}")
    if kind == "ok":
        return None
    return line if kind == "failed" else Unavailable(f"{line} (not a kernel failure)")


# Every (case, provider) pair the bench step measures: 8 shapes x 2 modes x 5 providers.
BENCH_SHAPES = len(STAGES.split(","))
BENCH_PAIRS = BENCH_SHAPES * 2 * 5


def bench_status(
    path: Path,
    expected: int | None = None,
    providers: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
) -> dict:
    """How many (case, provider) pairs of a result file (those of ``providers`` and
    ``modes`` when given) gave a time (ok), failed, were skipped for good (a provider that
    cannot run here), and are still to measure (todo: cut by a time limit, or not in the
    file yet, of ``expected``, default all of the bench step's pairs)."""
    try:
        rows = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError):
        rows = []
    count = {"ok": 0, "failed": 0, "skipped": 0}
    for r in rows:
        if providers is not None and r.get("provider") not in providers:
            continue
        if modes is not None and r.get("mode") not in modes:
            continue
        if r["status"] in ("ok", "failed"):
            count[r["status"]] += 1
        elif not _retried(r):
            count["skipped"] += 1
    expected = BENCH_PAIRS if expected is None else expected
    count["todo"] = max(expected - sum(count.values()), 0)
    return count


def _retried(row: dict) -> bool:
    """Whether --resume measures a skipped row again (it was cut, not impossible)."""
    error = row.get("error") or ""
    return error.startswith("time budget exhausted") or error == "interrupted"


def _bench_name(s: Session) -> str:
    """The result file's stem: smlp-bench's own for the gpu suite on this GPU."""
    code = (
        "import torch; from smlp_kernels.bench.report import file_stem; "
        "print(file_stem(['gpu'], torch.cuda.get_device_name(0), 'cuda'))"
    )
    out = subprocess.run(
        [s.python, "-c", code], capture_output=True, text=True, timeout=120, check=False,
        env=s.env(),
    )  # fmt: skip
    return out.stdout.strip() or "smlp-bench-gpu-unknown"


def _file_commit(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["meta"].get("git_commit")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def step_bench(s: Session, limit: float) -> str | None:
    folder = s.folder / "bench"
    folder.mkdir(exist_ok=True)
    start = time.monotonic()
    name = _bench_name(s)
    path = folder / f"{name}.json"
    commit = (s.commit() or "").split(" ")[0] or None
    if path.exists() and _file_commit(path) != commit:
        # Another commit's results (or an unknown one's) must not share a table with ours.
        aside = folder / f"{name}.other-commit.json"
        path.replace(aside)
        s.note(
            f"bench: {path.name} was measured at another or unknown commit: moved to {aside.name}"
        )
    failed = []
    for providers, modes, reserve in BENCH_PHASES:
        which = (providers.split(","), modes.split(","))
        expected = BENCH_SHAPES * len(which[0]) * len(which[1])
        for attempt in range(3):
            before = bench_status(path, expected, *which)
            if before["todo"] == 0:
                if attempt == 0:
                    s.note(f"bench {providers} {modes}: nothing left to measure")
                break
            left = limit - (time.monotonic() - start)
            if left < 45:
                s.note(f"bench {providers} {modes}: not started ({left:.0f} s left)")
                failed.append("deadline")
                break
            # smlp-bench's own budget starts after Python, torch and CUDA have started, and
            # it needs time to finish the case in progress and write: 40 s in all.
            cmd = [s.python, "-m", "smlp_kernels.bench", *BENCH_COMMON, "--providers",
                   providers, "--modes", modes, "--resume", "--out", str(folder), "--name",
                   name, "--time-budget", f"{left - 40:.0f}", "--compile-reserve",
                   str(reserve)]  # fmt: skip
            out = run_bounded(cmd, left - 5, folder / "bench.log", env=s.env())
            after = bench_status(path, expected, *which)
            s.note(
                f"bench {providers} {modes}: exit {out.rc} in {out.seconds:.0f} s"
                + (" (STOPPED at its limit)" if out.stopped else "")
                + f"; {after['ok']} ok, {after['failed']} failed, {after['skipped']} cannot "
                f"run, {after['todo']} to measure"
            )
            done_now = after["todo"] < before["todo"]
            if out.stopped or after["todo"] == 0 or not done_now:
                if out.rc not in (0, None) or out.stopped:
                    failed.append(f"{providers} {modes}")
                break
            # It ended early with pairs left and made progress: a CUDA fault stops a run
            # (the context is lost for that process); a fresh process carries on.
    st = bench_status(path)
    if st["todo"]:
        s.note(f"bench: {st['todo']} (case, provider) pairs left for the next call")
    if failed or st["todo"]:
        return "not finished or failed: " + ", ".join(failed or ["pairs left"])
    return None


STEPS = {
    "env": Step("env", step_env, cap=60, least=10),
    "build": Step("build", step_build, cap=300, least=60),
    "check": Step("check", step_check, cap=150, least=40),
    "sanitize": Step("sanitize", step_sanitize, cap=90, least=30),
    "bench": Step("bench", step_bench, cap=None, least=45),
}
PLANS = {
    "call1": (450, ("env", "build", "check", "sanitize", "bench")),
    "call2": (215, ("env", "build", "bench")),
}


def run_steps(s: Session, steps: Sequence[Step]) -> bool:
    """Run the steps in order, each within its allotment; True when all ran and passed."""
    ok = True
    for i, step in enumerate(steps):
        limit = s.deadline.allot(step.cap)
        if limit < step.least:
            s.note(f"step {step.name}: not run ({s.deadline.left():.0f} s left)")
            ok = False
            continue
        t0 = time.monotonic()
        try:
            why = step.run(s, limit)
        except Exception as exc:  # a bug here must not cost the packing of what ran
            why = f"raised {type(exc).__name__}: {exc}"
        if why is None:
            verdict = "ok"
        elif isinstance(why, Unavailable):
            verdict, why = f"UNAVAILABLE: {why}", None
        else:
            verdict = f"FAILED: {why}"
        s.note(f"step {step.name}: {verdict} ({time.monotonic() - t0:.0f} s)")
        if why is not None:
            ok = False
            if step.name in ("env", "build"):  # nothing after them can run
                for later in steps[i + 1 :]:
                    s.note(f"step {later.name}: not run (step {step.name} failed)")
                break
    return ok


# --------------------------------------------------------------------------------------------
# Packing for the device tool, and unpacking here
# --------------------------------------------------------------------------------------------


def pack(folder: Path, out: Path, tag: str) -> list[Path]:
    """Archive ``folder`` into ``out`` as gpu-session-TAG.tar.gz, with summary-TAG.txt beside
    it (written first, so it comes back even if the archive cannot be made); logs over
    LOG_KEEP_BYTES keep their last part; a file that cannot be read is left out (and
    named in the summary). An archive over the tool's size limit is made again without the
    built extension; still too large, it is removed (ValueError). Returns the files
    written; ValueError before writing anything for a bad tag or a full ``out``."""
    if not NAME_OK.fullmatch(tag):
        raise ValueError(f"pack: tag {tag!r} must be letters, digits, '.', '_' or '-'")
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"gpu-session-{tag}.tar.gz"
    summary = out / f"summary-{tag}.txt"
    existing = [p for p in out.iterdir() if p not in (archive, summary)]
    if len(existing) + 2 > MAX_FILES:
        raise ValueError(f"pack: {out} already holds {len(existing)} files; at most {MAX_FILES}")
    notes: list[str] = []
    text = (folder / "summary.txt").read_text() if (folder / "summary.txt").is_file() else ""
    summary.write_text(text)
    for leave_out in ((), ("build",)):
        notes = _write_archive(folder, archive, leave_out)
        if archive.stat().st_size <= MAX_FILE_BYTES:
            break
    size = archive.stat().st_size
    if size > MAX_FILE_BYTES:
        archive.unlink()
        summary.write_text(text + "\n".join(notes) + f"\npack: no archive: {size} bytes\n")
        raise ValueError(f"pack: the archive would be {size} bytes, over {MAX_FILE_BYTES}")
    if notes:
        summary.write_text(text + "".join(f"{n}\n" for n in notes))
    return [archive, summary]


def _write_archive(folder: Path, archive: Path, leave_out: Sequence[str]) -> list[str]:
    notes = []
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if not path.is_file() or (rel.parts and rel.parts[0] in leave_out):
                continue
            arc = str(Path(folder.name) / rel)
            try:
                size = path.stat().st_size
                if path.suffix in (".log", ".txt") and size > LOG_KEEP_BYTES:
                    with open(path, "rb") as f:
                        f.seek(size - LOG_KEEP_BYTES)
                        data = f.read()
                    info = tarfile.TarInfo(arc)
                    info.size = len(data)
                    info.mtime = int(path.stat().st_mtime)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.add(path, arcname=arc, recursive=False)
            except OSError as exc:  # vanished or unreadable: the rest still goes
                notes.append(f"pack: left out {rel}: {exc}")
    if leave_out:
        notes.append(f"pack: left out {', '.join(leave_out)} (the archive was too large)")
    return notes


def unpack(source: Path, folder: Path) -> Path:
    """The newest gpu-session-*.tar.gz under ``source`` (a folder, searched recursively, or
    the archive itself), extracted so that it replaces ``folder``. Returns the archive."""
    if source.is_dir():
        found = sorted(source.rglob("gpu-session-*.tar.gz"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no gpu-session-*.tar.gz under {source}")
        source = found[-1]
    with tarfile.open(source, "r:gz") as tar:
        members = tar.getmembers()
        top = {Path(m.name).parts[0] for m in members}
        unsafe = [m.name for m in members if m.issym() or m.islnk() or ".." in Path(m.name).parts]
        if len(top) != 1 or unsafe:
            raise ValueError(f"{source}: not an archive this script packed")
        with tempfile.TemporaryDirectory() as staging:  # not in the tree that travels
            tar.extractall(staging, filter="data")
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(staging) / top.pop()), str(folder))
    return source


def _local_python() -> str:
    """The project's virtual environment's Python (with torch) if there is one, else this."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def results(folder: Path, dest: Path, python: str | None = None) -> int:
    """Write the merged JSON, CSV and plots of the session's result file into ``dest``."""
    python = python or _local_python()
    dest = dest.resolve()
    files = sorted((folder / "bench").glob("smlp-bench-gpu-*.json"))
    if not files:
        print(f"gpu_session.py: no result file in {folder / 'bench'}", file=sys.stderr)
        return 1
    rc = 0
    for path in files:
        cmd = [
            python,
            "-m",
            "smlp_kernels.bench",
            "--from-json",
            str(path),
            "--out",
            str(dest),
            "--name",
            path.stem,
            "--plot",
        ]
        rc |= subprocess.run(cmd, cwd=ROOT, check=False).returncode
    return rc


# The SASS instruction classes counted per (architecture, kernel): tensor-core matrix
# instructions (HGMMA: wgmma; HMMA: mma.sync), scalar FMAs, cp.async (LDGSTS) and TMA
# (UTMALDG, UBLKCP) loads, local-memory spills (LDL, STL).
SASS_CLASSES = ("HGMMA", "HMMA", "FFMA", "DFMA", "LDGSTS", "UTMALDG", "UBLKCP", "LDL", "STL")


def sass_summary(dump: str) -> dict[tuple[str, str, str], int]:
    """{(arch, kernel, class): instructions} from ``cuobjdump --dump-sass`` output."""
    counts: dict[tuple[str, str, str], int] = {}
    arch = kernel = "?"
    for line in dump.splitlines():
        if "arch = sm_" in line:
            arch = line.split()[-1]
        elif "Function :" in line:
            kernel = line.split("Function :", 1)[1].strip()
        else:
            for word in line.replace(";", " ").split():
                op = word.split(".", 1)[0]
                if op in SASS_CLASSES:
                    key = (arch, kernel, op)
                    counts[key] = counts.get(key, 0) + 1
                    break
    return counts


def _cuobjdump() -> str | None:
    """The CUDA toolkit's cuobjdump, else the one Triton ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        path = triton.knobs.nvidia.cuobjdump.path
    except Exception:  # no Triton, or one without the knob
        return None
    return path if path and Path(path).is_file() else None


def sass(dest: Path, so: Path | None = None) -> int:
    """Count the SASS instruction classes of an extension build (no GPU needed) into dest:
    ``so``, else the one the session folder holds (a GPU call's build), else the one this
    Python imports. The file is read by cuobjdump, not imported."""
    if so is None:
        carried = _built_extension(_session_folder() / "build")
        if carried is not None:
            so = carried
        else:
            from smlp_kernels import _C

            so = Path(_C.__file__)
    dump = _cuobjdump()
    if dump is None:
        print("gpu_session.py: sass: no cuobjdump (install the CUDA toolkit or Triton)")
        return 1
    out = subprocess.run(
        [dump, "--dump-sass", str(so)], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        print(f"gpu_session.py: sass: cuobjdump exit {out.returncode}: {out.stderr[-500:]}")
        return 1
    rows = sorted(sass_summary(out.stdout).items())
    dest.write_text("".join(f"{a} {k} {op} {n}\n" for (a, k, op), n in rows))
    print(f"{dest}: {len(rows)} (arch, kernel, class) rows of {so}")
    return 0


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of seconds, not {text!r}") from None
    if not 1 <= value <= MAX_DEADLINE_S:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_DEADLINE_S} seconds, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_session.py",
        description="A GPU lease in two calls: build, check and benchmark within the limits.",
        epilog="See the module docstring (or the README's GPU section) for the whole flow.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="here, before call 1: a fresh gpu-session/ with the commit")
    for name, (deadline, steps) in PLANS.items():
        c = sub.add_parser(name, help=f"on the GPU machine: {', '.join(steps)}")
        c.add_argument(
            "--deadline",
            type=_seconds,
            default=deadline,
            help=f"seconds for the whole call (default {deadline})",
        )
        c.add_argument(
            "--steps",
            type=_step_list,
            default=None,
            help=f"run these steps instead (comma-separated from {', '.join(STEPS)})",
        )
        c.add_argument("--out", type=Path, default=None, help="where to pack (default: $OUT)")
    x = sub.add_parser("sass", help="here: count the extension's SASS instruction classes")
    x.add_argument("dest", type=Path, help="the summary file to write")
    x.add_argument(
        "--so",
        type=Path,
        default=None,
        help="the extension to read (default: gpu-session/build's, else the imported one)",
    )
    u = sub.add_parser("unpack", help="here, after a call: its archive back into gpu-session/")
    u.add_argument("source", type=Path, help="the call's files folder, or its archive")
    u.add_argument(
        "--results",
        type=Path,
        default=None,
        help="then write the merged JSON, CSV and plots into this folder",
    )
    return p


def _step_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STEPS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown step(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"known: {', '.join(STEPS)}"
        )
    return names


def _session_folder() -> Path:
    return Path(os.environ.get(SESSION_ENV) or ROOT / "gpu-session")


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],  # untracked files travel too
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" dirty" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    # Started as a background job, this process (and every child) would ignore SIGINT, and
    # pytest could not be stopped with its report written: restore the default handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    folder = _session_folder()
    if args.command == "prepare":
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        commit = _git_commit()
        (folder / "commit.txt").write_text((commit or "") + "\n")
        # The files that travel to the GPU machine (tracked, and untracked but not ignored),
        # and their digest: there, the commit counts only if the tree is still this one.
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        ).stdout.split("\n")  # fmt: skip
        names = sorted(n for n in listed if n and (ROOT / n).is_file())
        (folder / "tree-files.txt").write_text("\n".join(names) + "\n")
        (folder / "tree.sha256").write_text(tree_digest(ROOT, names) + "\n")
        print(f"{folder}: fresh; commit {commit or 'unknown (not a git checkout)'}")
        return 0
    if args.command == "sass":
        return sass(args.dest, args.so)
    if args.command == "unpack":
        try:
            used = unpack(args.source, folder)
        except (OSError, ValueError, tarfile.TarError) as exc:
            print(f"gpu_session.py: unpack: {exc}", file=sys.stderr)
            return 2
        print(f"{folder}: from {used}")
        summary = folder / "summary.txt"
        if summary.is_file():
            print(summary.read_text(), end="")
        return results(folder, args.results) if args.results else 0
    plan = PLANS[args.command][1]
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        parser.error("--out: no folder to pack into (give --out, or set OUT)")
    steps = [STEPS[n] for n in (args.steps or plan)]
    folder.mkdir(parents=True, exist_ok=True)
    s = Session(folder, Deadline(args.deadline))
    s.note(
        f"== gpu_session.py {args.command}: {', '.join(st.name for st in steps)}; deadline "
        f"{args.deadline} s; commit {s.commit() or 'unknown'}; "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    )
    ok = run_steps(s, steps)
    s.note(
        f"== {args.command}: {'all passed' if ok else 'NOT all passed'}; "
        f"{args.deadline - s.deadline.left():.0f} s"
    )
    try:
        written = pack(folder, out, args.command)
    except (OSError, ValueError, tarfile.TarError) as exc:
        print(f"gpu_session.py: packing failed: {exc}", file=sys.stderr)
        return 1
    print("packed: " + ", ".join(p.name for p in written))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
