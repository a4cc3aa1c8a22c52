"""scripts/gpu_session.py and scripts/gpu_sanitize.py, as far as a machine without a GPU can
take them: the session script's argument errors, its refusal without CUDA, its deadline
handling (steps not started, commands stopped at their limit), packing within the device
tool's limits and unpacking, the verdicts it draws from pytest, compute-sanitizer and
smlp-bench output, and its bench step's resumed phases on the CPU; the sanitizer program's
answer check, which must pass right answers and fail wrong or NaN ones."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

import pytest
import torch

import smlp_kernels

ROOT = Path(__file__).resolve().parents[1]
SESSION = ROOT / "scripts" / "gpu_session.py"
CONFTEST = ROOT / "tests" / "conftest.py"


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gs = _load("gpu_session")


def _session(tmp_path, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "OUT"}  # only where a test sets it
    full_env.update(SMLP_GPU_SESSION_DIR=str(tmp_path / "s"), **env)
    return subprocess.run([sys.executable, str(SESSION), *args], capture_output=True, text=True,
                          env=full_env, timeout=300, check=False)  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "the following arguments are required: command"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("call1", "--steps", "env,bogus"), "unknown step(s) 'bogus'"),
        (("call1", "--deadline", "soon"), "a whole number of seconds, not 'soon'"),
        (("call2", "--deadline", "581"), "between 1 and 580 seconds, not 581"),
        (("call1",), "--out: no folder to pack into"),
        (("unpack",), "the following arguments are required: source"),
    ],
)
def test_gpu_session_bad_arguments(tmp_path, args, message):
    proc = _session(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists()  # nothing was started


def _archive_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_session_refuses_without_cuda_and_still_packs(tmp_path):
    out = tmp_path / "out"
    proc = _session(tmp_path, "call1", OUT=str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (tmp_path / "s" / "summary.txt").read_text()
    assert "step env: FAILED: no CUDA device" in summary
    for later in ("build", "check", "sanitize", "bench"):
        assert f"step {later}: not run (step env failed)" in summary
    # What the device tool brings back: one archive and the summary, in its limits.
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-session-call1.tar.gz", "summary-call1.txt"]
    assert all(gs.NAME_OK.fullmatch(n) for n in files)
    assert (out / "summary-call1.txt").read_text() == summary
    assert _archive_names(out / "gpu-session-call1.tar.gz") == ["s/env.txt", "s/summary.txt"]


def test_gpu_session_deadline_too_short_runs_nothing_but_packs(tmp_path):
    out = tmp_path / "out"
    proc = _session(tmp_path, "call2", "--deadline", "20", "--out", str(out))
    assert proc.returncode == 1
    summary = (tmp_path / "s" / "summary.txt").read_text()
    for step in ("env", "build", "bench"):
        assert f"step {step}: not run (" in summary and "s left)" in summary
    assert (out / "gpu-session-call2.tar.gz").is_file()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_steps_start_only_with_enough_time_left_and_get_at_most_their_cap(tmp_path):
    clock = _Clock()
    session = gs.Session(tmp_path, gs.Deadline(200, clock))
    seen = []

    def step(name, cost, result=None):
        def run(s, limit):
            seen.append((name, limit))
            clock.now += cost
            if result == "raise":
                raise RuntimeError("a bug in the step")
            return result

        return run

    steps = [
        gs.Step("a", step("a", 50), cap=60, least=10),  # gets its cap: 60 < 200 - 15
        gs.Step("b", step("b", 30, "raise"), cap=None, least=10),  # all but the reserve
        gs.Step("c", step("c", 100), cap=None, least=200),  # too little left: not run
        gs.Step("d", step("d", 0, "it broke"), cap=30, least=5),
        gs.Step("e", step("e", 0, gs.Unavailable("no sanitizer here")), cap=30, least=5),
    ]
    assert gs.run_steps(session, steps) is False
    assert seen == [("a", 60), ("b", 200 - 50 - gs.PACK_RESERVE_S), ("d", 30), ("e", 30)]
    summary = (tmp_path / "summary.txt").read_text()
    assert "step a: ok" in summary
    assert "step b: FAILED: raised RuntimeError: a bug in the step" in summary
    assert "step c: not run (120 s left)" in summary
    assert "step d: FAILED: it broke" in summary
    assert "step e: UNAVAILABLE: no sanitizer here" in summary  # reported, not a failure
    session = gs.Session(tmp_path / "3", gs.Deadline(200, clock))
    (tmp_path / "3").mkdir()
    assert gs.run_steps(session, [steps[0], steps[-1]]) is True
    # A failed build stops the call: nothing after it can run.
    session = gs.Session(tmp_path / "2", gs.Deadline(200, clock))
    (tmp_path / "2").mkdir()
    steps = [gs.Step("build", step("build", 1, "no nvcc"), 60, 1), steps[0]]
    assert gs.run_steps(session, steps) is False
    assert "step a: not run (step build failed)" in (tmp_path / "2" / "summary.txt").read_text()


def test_a_command_is_stopped_at_its_limit_with_the_signal_asked_for(tmp_path):
    # The child writes its report on SIGINT (as pytest does) and exits.
    child = (
        "import signal, sys, time\n"
        "def stop(*a):\n    print('report written', flush=True); sys.exit(3)\n"
        "signal.signal(signal.SIGINT, stop)\nprint('started', flush=True)\ntime.sleep(60)\n"
    )
    log = tmp_path / "child.log"
    t0 = time.monotonic()
    out = gs.run_bounded([sys.executable, "-c", child], 2, log, stop_signal=gs.signal.SIGINT)
    assert out.stopped and out.rc == 3 and time.monotonic() - t0 < 20
    assert log.read_text().split() == ["started", "report", "written"]
    # One that ignores the signal is killed after the grace period.
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    out = gs.run_bounded([sys.executable, "-c", stubborn], 1, log, grace=1)
    assert out.stopped and out.rc == -9
    out = gs.run_bounded([sys.executable, "-c", "pass"], 30, log)
    assert (out.rc, out.stopped) == (0, False)


def test_pack_keeps_to_the_device_tools_limits_and_unpack_restores(tmp_path):
    folder = tmp_path / "gpu-session"
    (folder / "bench").mkdir(parents=True)
    (folder / "summary.txt").write_text("all passed\n")
    (folder / "bench" / "r.json").write_text("{}")
    (folder / "big.log").write_bytes(b"x" * (gs.LOG_KEEP_BYTES + 100) + b"END")
    out = tmp_path / "out"
    written = gs.pack(folder, out, "call1")
    assert [p.name for p in written] == ["gpu-session-call1.tar.gz", "summary-call1.txt"]
    with tarfile.open(written[0]) as tar:
        big = tar.extractfile("gpu-session/big.log").read()
    assert len(big) == gs.LOG_KEEP_BYTES and big.endswith(b"END")  # the end of a long log
    # Unpacked here, it replaces the session folder (which the next call carries).
    (folder / "stale.txt").write_text("from before")
    nested = tmp_path / "files" / "out"  # where a tool may put what came back
    nested.mkdir(parents=True)
    shutil.copy2(written[0], nested / written[0].name)
    assert gs.unpack(tmp_path / "files", folder) == nested / written[0].name
    assert sorted(p.name for p in folder.rglob("*")) == ["bench", "big.log", "r.json",
                                                          "summary.txt"]  # fmt: skip
    # The limits: at most 8 files back, each at most 16 MiB; a bad tag; a foreign archive.
    for i in range(7):
        (out / f"other{i}.txt").write_text("")
    with pytest.raises(ValueError, match="at most 8"):
        gs.pack(folder, out, "call2")
    with pytest.raises(ValueError, match="must be letters"):
        gs.pack(folder, tmp_path / "o2", "call 2")
    # Too large with the built extension: packed again without it, and the summary says so.
    (folder / "build").mkdir()
    (folder / "build" / "_C.so").write_bytes(os.urandom(gs.MAX_FILE_BYTES + 1024))
    written = gs.pack(folder, tmp_path / "o4", "call1")
    assert "gpu-session/build/_C.so" not in _archive_names(written[0])
    assert "left out build (the archive was too large)" in written[1].read_text()
    (folder / "noise.bin").write_bytes(os.urandom(gs.MAX_FILE_BYTES + 1024))
    with pytest.raises(ValueError, match="over 16777216"):
        gs.pack(folder, tmp_path / "o3", "call1")
    assert not (tmp_path / "o3" / "gpu-session-call1.tar.gz").exists()
    # The summary comes back even then.
    assert (tmp_path / "o3" / "summary-call1.txt").read_text().startswith("all passed")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(folder / "summary.txt", arcname="../escape.txt")
    with pytest.raises(ValueError, match="not an archive this script packed"):
        gs.unpack(evil, tmp_path / "x")


def test_unpack_through_the_command_line(tmp_path):
    proc = _session(tmp_path, "unpack", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "unpack:" in proc.stderr


def test_prepare_records_the_commit(tmp_path):
    proc = _session(tmp_path, "prepare")
    assert proc.returncode == 0, proc.stderr
    commit = (tmp_path / "s" / "commit.txt").read_text().split()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False).stdout.strip()  # fmt: skip
    if head:  # a git checkout: the hash, and "dirty" with uncommitted changes
        assert commit[0] == head and commit[1:] in ([], ["dirty"])
    session = gs.Session(tmp_path / "s", gs.Deadline(10))
    if head:
        assert session.env()["SMLP_GIT_COMMIT"].split()[0] == head


def test_verdicts_from_pytest_sanitizer_and_bench_output(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="ok"/>'
        '<testcase classname="tests.test_a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="err"><error message="y"/></testcase>'
        '<testcase classname="tests.test_b" name="skip"><skipped message="z"/></testcase>'
        "</testsuite></testsuites>"
    )
    c = gs.junit_counts(xml)
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == (1, 1, 1, 1)
    assert c["failures"] == ["tests.test_a::bad", "tests.test_b::err"]
    assert gs.junit_counts(tmp_path / "missing.xml")["passed"] == 0
    # compute-sanitizer refusing the device is "unavailable", never a kernel failure.
    verdict = gs.memcheck_verdict
    refused = "========= Error: Device not supported\nerror 999 at the first allocation"
    assert verdict(9, False, refused) == (
        "sanitizer unavailable: 'Device not supported' (memcheck.log)",
        "unavailable",
    )
    assert verdict(1, False, "========= odd trouble")[1] == "unavailable"  # no case ran
    crash = "Traceback (most recent call last):\nImportError: no _C"
    assert verdict(1, False, crash)[1] == "failed"  # our program broke before any case
    bad = "ok   cuda bf16\n========= Invalid __global__ write of size 4 bytes\n"
    line, kind = verdict(9, False, bad + "========= ERROR SUMMARY: 1 error")
    assert kind == "failed" and "1 bad access(es)" in line
    done = "ok   cuda fp32\ngpu_sanitize.py: 0 failure(s)\n"
    assert verdict(0, False, done + "========= ERROR SUMMARY: 0 errors")[1] == "ok"
    # API errors alone (PyTorch's or Triton's own probing) are not a kernel's bad access.
    api = "========= Program hit cudaErrorInvalidValue on CUDA API call to cudaFoo\n"
    line, kind = verdict(9, False, done + api + "========= ERROR SUMMARY: 1 error")
    assert kind == "ok" and "1 CUDA API error(s) reported, none by a kernel" in line
    assert verdict(0, False, "========= ERROR SUMMARY: 0 errors")[1] == "unavailable"
    line, kind = verdict(1, False, "ok   cuda fp32\nFAIL cuda bf16 (1, 3, 2, 1, 1) y: error")
    assert kind == "failed" and "exited 1: FAIL cuda bf16" in line
    assert verdict(None, True, "ok   cuda fp32")[1] == "inconclusive"
    rows = [
        {"status": "ok", "error": None},
        {"status": "failed", "error": "wrong answer"},
        {"status": "skipped", "error": "backend 'cuda' is unavailable: no GPU"},
        {"status": "skipped", "error": "time budget exhausted: 3 s left"},
        {"status": "skipped", "error": "interrupted"},
    ]
    (tmp_path / "r.json").write_text(json.dumps({"results": rows}))
    assert gs.bench_status(tmp_path / "r.json", expected=10) == {
        "ok": 1, "failed": 1, "skipped": 1, "todo": 7
    }  # fmt: skip
    assert gs.bench_status(tmp_path / "none.json", expected=10)["todo"] == 10


def test_bench_step_runs_its_phases_and_a_second_call_resumes(tmp_path, monkeypatch):
    """The bench step on the CPU, with the smoke suite standing in for the stage shapes: the
    phases run in order into one file, and a second call measures only what is missing."""
    name = "smlp-bench-gpu-test"
    monkeypatch.setattr(gs, "_bench_name", lambda s: name)
    common = ("--device", "cpu", "--suite", "smoke", "-k", "smlp_mix-*-H5-W5-*", "--ceilings",
              "none", "--rep-ms", "2", "--min-reps", "1", "--threads", "1")  # fmt: skip
    monkeypatch.setattr(gs, "BENCH_COMMON", common)
    monkeypatch.setattr(gs, "BENCH_SHAPES", 1)
    monkeypatch.setattr(gs, "BENCH_PAIRS", 3 * 2)  # fwd, bwd, fwd+bwd x reference, spach-eager
    monkeypatch.setattr(gs, "BENCH_PHASES", (("reference", "fwd,bwd,fwd+bwd", 0),))
    session = gs.Session(tmp_path, gs.Deadline(300))
    why = gs.step_bench(session, 240)
    assert why is not None and "pairs left" in why  # spach-eager is not measured yet
    path = tmp_path / "bench" / f"{name}.json"
    assert gs.bench_status(path, expected=6) == {"ok": 3, "failed": 0, "skipped": 0, "todo": 3}
    monkeypatch.setattr(
        gs, "BENCH_PHASES", (("reference", "fwd,bwd,fwd+bwd", 0), ("spach-eager", "fwd", 0),
                             ("spach-eager", "bwd,fwd+bwd", 0))
    )  # fmt: skip
    assert gs.step_bench(session, 240) is None
    doc = json.loads(path.read_text())
    # The reference's phase was complete: not started again.
    assert [len(r["measured"]) for r in doc["meta"]["runs"]] == [3, 1, 2]
    summary = (tmp_path / "summary.txt").read_text()
    assert "bench reference fwd,bwd,fwd+bwd: nothing left to measure" in summary
    assert gs.step_bench(session, 10) is None  # all measured: nothing to do, no time needed
    # Too little time for what is left: the phases are not started, and say so.
    other = gs.Session(tmp_path / "other", gs.Deadline(300))
    (tmp_path / "other").mkdir()
    assert "deadline" in gs.step_bench(other, 30)
    assert "not started (30 s left)" in (tmp_path / "other" / "summary.txt").read_text()
    # A result file of another commit is moved aside, not continued.
    doc["meta"]["git_commit"] = "f" * 40
    path.write_text(json.dumps(doc))
    gs.step_bench(session, 30)
    assert (tmp_path / "bench" / f"{name}.other-commit.json").is_file()
    assert "moved to" in (tmp_path / "summary.txt").read_text()


def test_the_commit_counts_only_for_the_tree_prepare_saw(tmp_path):
    root = tmp_path / "tree"
    (root / "csrc").mkdir(parents=True)
    (root / "csrc" / "a.cu").write_text("kernel")
    (root / "setup.py").write_text("setup()")
    folder = tmp_path / "session"
    folder.mkdir()
    names = ["csrc/a.cu", "setup.py"]
    (folder / "commit.txt").write_text("a" * 40 + "\n")
    (folder / "tree-files.txt").write_text("\n".join(names) + "\n")
    (folder / "tree.sha256").write_text(gs.tree_digest(root, names) + "\n")
    assert gs.recorded_commit(folder, root) == "a" * 40
    assert gs.tree_digest(root, ["csrc", "setup.py"]) == gs.tree_digest(root, names)
    (root / "csrc" / "a.cu").write_text("kernel, changed")
    assert gs.recorded_commit(folder, root) is None  # another tree: no commit claimed
    (root / "csrc" / "a.cu").unlink()
    assert gs.recorded_commit(folder, root) is None
    assert gs.recorded_commit(tmp_path / "none", root) is None


def test_check_step_selects_the_gpu_tests_only(tmp_path):
    """The check step's pytest run: -m gpu and none of the CPU-only files. Without a GPU
    every selected test skips (they need a CUDA device); on a GPU they run."""
    session = gs.Session(tmp_path, gs.Deadline(600))
    why = gs.step_check(session, 400)
    counts = gs.junit_counts(tmp_path / "check" / "junit.xml")
    log = (tmp_path / "check" / "pytest.log").read_text()
    assert counts["failed"] == counts["errors"] == 0, log[-3000:]
    if torch.cuda.is_available():
        assert why is None and counts["passed"] > 0
    else:  # every GPU test skips here, and a run that passed nothing is not a pass
        assert counts["passed"] == 0 and counts["skipped"] > 200
        assert why.startswith("no test passed"), why
    ids = [line for line in log.splitlines() if "::" in line]
    assert not any(f in line for f in gs.CPU_ONLY_TESTS for line in ids)


def test_tests_parametrized_on_cuda_carry_the_gpu_marker():
    # By path: the module name "conftest" may be benchmarks/conftest.py in a whole-suite run.
    spec = importlib.util.spec_from_file_location("smlp_tests_conftest", CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs_on_cuda = mod.runs_on_cuda

    def item(**params):
        return types.SimpleNamespace(callspec=types.SimpleNamespace(params=params))

    assert runs_on_cuda(item(backend="cuda", device="cuda"))
    assert runs_on_cuda(item(device=torch.device("cuda", 0)))
    assert not runs_on_cuda(item(backend="cuda", device="cpu"))
    assert not runs_on_cuda(item(backend="triton"))
    assert not runs_on_cuda(types.SimpleNamespace())


def test_pytest_m_gpu_selects_the_tests_parametrized_on_cuda(tmp_path):
    """Through pytest itself: the marker is added before ``-m gpu`` deselects."""
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(CONFTEST)!r})\n"
        "c = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(c)\n"
        "pytest_collection_modifyitems = c.pytest_collection_modifyitems\n"
    )
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('device', ['cpu', 'cuda'])\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_x(device, n):\n    pass\n"
        "def test_plain():\n    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p",
         "no:cacheprovider", "-c", "/dev/null", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    ids = sorted(line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line)
    assert ids == ["test_x[1-cuda]", "test_x[2-cuda]"], proc.stdout + proc.stderr


def _cuda_sass_tools() -> str | None:
    """Why the sass command cannot run here (None: it can)."""
    try:
        from smlp_kernels import _C
    except ImportError as exc:
        return f"no extension: {exc}"
    if not _C.build_info()["with_cuda"]:
        return "the extension was built without CUDA"
    if gs._cuobjdump() is None:
        return "no cuobjdump (neither the CUDA toolkit's nor Triton's)"
    return None


_NO_SASS = _cuda_sass_tools()


@pytest.mark.skipif(_NO_SASS is not None, reason=str(_NO_SASS))
def test_sass_counts_instructions(tmp_path):
    """Needs no GPU: the built extension's SASS, instruction classes counted per kernel."""
    proc = _session(tmp_path, "sass", str(tmp_path / "sass.txt"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in (tmp_path / "sass.txt").read_text().splitlines()]
    assert all(len(r) == 4 and int(r[3]) > 0 for r in rows), rows
    classes = {(arch, op) for arch, kernel, op, _ in rows if "mix_fwd_kernel" in kernel}
    # 16-bit forward kernels on the tensor cores, on both architectures of the build.
    assert {("sm_80", "HMMA"), ("sm_90a", "HMMA")} <= classes, classes


def _sanitize_module():
    return _load("gpu_sanitize")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gpu_sanitize_check_passes_right_answers(dtype):
    mod = _sanitize_module()
    gen = torch.Generator().manual_seed(0)
    for shape in mod.SHAPES:
        assert mod.check("reference", shape, dtype, "cpu", gen) is None


@pytest.mark.parametrize(
    "corrupt, expect",
    [
        (lambda y: y * (1 + 1e-3), "y: error"),
        (lambda y: y.index_fill(0, torch.tensor([0]), float("nan")), "y has NaN"),
    ],
)
def test_gpu_sanitize_check_fails_wrong_answers(monkeypatch, corrupt, expect):
    mod = _sanitize_module()

    def wrong(*args, **kwargs):
        return corrupt(smlp_kernels.smlp_mix(*args, **kwargs))

    monkeypatch.setattr(mod, "smlp_kernels", types.SimpleNamespace(smlp_mix=wrong))
    gen = torch.Generator().manual_seed(0)
    why = mod.check("reference", mod.SHAPES[0], "fp32", "cpu", gen)
    assert why is not None and why.startswith(expect), why


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


def test_gpu_sanitize_check_fails_wrong_gradients(monkeypatch):
    mod = _sanitize_module()

    def wrong(*args, **kwargs):  # right forward, every gradient 1% off
        return _ScaleGrad.apply(smlp_kernels.smlp_mix(*args, **kwargs))

    monkeypatch.setattr(mod, "smlp_kernels", types.SimpleNamespace(smlp_mix=wrong))
    gen = torch.Generator().manual_seed(0)
    why = mod.check("reference", mod.SHAPES[0], "fp32", "cpu", gen)
    assert why is not None and why.startswith("dx: error"), why


def test_gpu_sanitize_cli_on_cpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_sanitize.py"), "--device", "cpu",
         "--backends", "reference", "--dtypes", "fp32,bf16", "--quick"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok   ") == 4
    assert "0 failure(s)" in proc.stdout
