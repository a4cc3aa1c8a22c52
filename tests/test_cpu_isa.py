"""The cpu backend's instruction set levels (csrc/cpu/isa.h, csrc/cpu/dispatch.cpp).

The CPU kernels are compiled once per level (``avx512bf16``, ``avx512``, ``avx2``,
``baseline``) and each launch runs the best level this CPU supports, or the one the
environment variable ``SMLP_CPU_ISA`` names (read on every launch). What is tested here:

* ``_C.cpu_isa()``: the built and supported levels, best first, and which one is selected
  with SMLP_CPU_ISA unset, ``auto`` or empty;
* every level this machine can run, forced with SMLP_CPU_ISA: smlp_mix's forward and every
  gradient on awkward shapes (odd sizes, H != W, C_out != C, several image groups and channel
  blocks) in float64, float32, bfloat16 and float16, and row_mix / col_mix, against the
  float64 reference with the backend contract's rule (tests/test_backend_contract.py:
  ``check_mix``);
* the levels agree with each other in float32 and float64 (closely, not bitwise: their
  multiply-adds are contracted differently), and forcing a level does change the code run;
* a bad SMLP_CPU_ISA (not a level; a level this CPU lacks or the module lacks) raises a
  ValueError naming the variable, from ``cpu_isa()`` and from a launch, and leaves nothing
  behind: unset it and the next launch works;
* CPU bfloat16 autocast picks the cpu backend on its own, within the contract's tolerance;
* the instructions of each level's code in the built module (with objdump): the avx512bf16
  level uses vdpbf16ps and the avx512 level does not, the avx2 level no AVX-512, the baseline
  level nothing beyond x86-64's SSE2 (no VEX/EVEX: no ymm, no zmm). The module is stripped in
  a release build (and its kernels have hidden visibility), so a level's code is not found by
  its symbols ``smlp::cpu::<level>::*`` but by what the dispatcher calls: the entry points in
  dispatch.cpp's table of levels (read from this process's memory), then every function they
  reach by direct calls, jumps and function addresses (OpenMP bodies), with the function
  bounds of the module's .eh_frame.

Without a built extension the file skips (or fails under SMLP_REQUIRE_EXTENSION=1).
"""

from __future__ import annotations

import bisect
import os
import platform
import re
import shutil
import struct
import subprocess
import sys

import _helpers
import pytest
import test_backend_contract as contract
import torch

import smlp_kernels
from smlp_kernels import registry
from smlp_kernels.cpp_backends import CpuBackend

_C = _helpers.cpu_extension_or_skip()

ENV = "SMLP_CPU_ISA"
LEVELS = ("avx512bf16", "avx512", "avx2", "baseline")  # best first, as dispatch.cpp orders
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _isa_unforced() -> dict:
    """cpu_isa() with SMLP_CPU_ISA unset (whatever the caller's environment says)."""
    saved = os.environ.pop(ENV, None)
    try:
        return _C.cpu_isa()
    finally:
        if saved is not None:
            os.environ[ENV] = saved


ISA = _isa_unforced()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Every test starts with SMLP_CPU_ISA and SMLP_BACKEND unset."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def _force(monkeypatch, level: str) -> None:
    """SMLP_CPU_ISA=level for the rest of the test, or a skip naming the level."""
    if level not in ISA["built"]:
        pytest.skip(f"{level}: not built into this extension (built: {ISA['built']})")
    if level not in ISA["supported"]:
        pytest.skip(f"{level}: this CPU lacks it (supported: {ISA['supported']})")
    monkeypatch.setenv(ENV, level)
    assert _C.cpu_isa()["selected"] == level


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------
# cpu_isa()
# --------------------------------------------------------------------------------------------


def test_cpu_isa_lists_levels_best_first_and_selects_the_best_supported():
    isa = _C.cpu_isa()
    assert set(isa) == {"selected", "built", "supported"}
    built, supported = isa["built"], isa["supported"]
    assert built and built[-1] == "baseline", built
    assert len(set(built)) == len(built) and set(built) <= set(LEVELS), built
    assert built == [lv for lv in LEVELS if lv in built], f"not best first: {built}"
    assert "baseline" in supported, supported
    assert supported == [lv for lv in built if lv in supported], (supported, built)
    assert isa["selected"] == supported[0]


@pytest.mark.parametrize("value", ["auto", ""], ids=["auto", "empty"])
def test_auto_and_empty_select_like_unset(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    assert _C.cpu_isa() == ISA
    assert _C.cpu_isa()["selected"] == ISA["supported"][0]


# --------------------------------------------------------------------------------------------
# Every level this machine runs, forced, against the float64 reference (the contract's rule)
# --------------------------------------------------------------------------------------------

# (B, C, C_out, H, W): odd sizes, H != W, C_out != C; then 9 images of 49 pixels (two image
# groups of the kernels' 384-pixel target), C_out = 37 (two output channel blocks of <= 32)
# and C = 40 (three input channel blocks of 16 in the weight gradients).
MIX_CASES = _helpers.cases("B2-C7-Co13-H13-W9 B9-C40-Co37-H7-W7-groups-and-blocks")


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("b, c, c_out, h, w", MIX_CASES)
@pytest.mark.parametrize("level", LEVELS)
def test_forced_level_mix_forward_and_every_gradient(monkeypatch, level, b, c, c_out, h, w,
                                                     dtype):  # fmt: skip
    _force(monkeypatch, level)
    args = _helpers.make_args(b, c, c_out, h, w, dtype=torch.float64)
    contract.check_mix("cpu", args, contract.randn(b, c_out, h, w), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("op", ["row_mix", "col_mix"])
@pytest.mark.parametrize("level", LEVELS)
def test_forced_level_axis_mix_forward_and_every_gradient(monkeypatch, level, op, dtype):
    _force(monkeypatch, level)
    b, c, h, w = 2, 9, 13, 57  # odd; W beyond a zmm of float32
    n = w if op == "row_mix" else h
    args = [
        contract.randn(b, c, h, w, seed=2),
        contract.randn(n, n, seed=3) * n**-0.5,
        contract.randn(n, seed=4),
    ]
    grad = contract.randn(b, c, h, w, seed=5)
    contract.check_mix("cpu", args, grad, dtype, contract.AXIS_NAMES, getattr(smlp_kernels, op))


# --------------------------------------------------------------------------------------------
# The levels agree
# --------------------------------------------------------------------------------------------


def _all_ops(dtype):
    """smlp_mix's output and gradients on the larger case, then row_mix's and col_mix's, in
    ``dtype`` (a list of (name, tensor))."""
    b, c, c_out, h, w = 9, 40, 37, 7, 7
    args = _helpers.make_args(b, c, c_out, h, w, dtype=torch.float64)
    out = contract.run(smlp_kernels.smlp_mix, args, contract.randn(b, c_out, h, w), "cpu", dtype)
    named = list(zip(contract.MIX_NAMES, out, strict=True))
    for op, n in (("row_mix", w), ("col_mix", h)):
        axis_args = [contract.randn(b, c, h, w, seed=2), contract.randn(n, n, seed=3) * n**-0.5,
                     contract.randn(n, seed=4)]  # fmt: skip
        fn = getattr(smlp_kernels, op)
        grad = contract.randn(b, c, h, w, seed=5)
        got = contract.run(fn, axis_args, grad, "cpu", dtype)
        named += [(f"{op}.{k}", t) for k, t in zip(contract.AXIS_NAMES, got, strict=True)]
    return named


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dt)
def test_levels_agree(monkeypatch, dtype):
    """Every supported level within 16 eps of the best one's results (of each output's largest
    value): their sums differ only in order and in which multiply-adds are fused."""
    supported = ISA["supported"]
    if len(supported) < 2:
        pytest.skip(f"one level runs here ({supported}): nothing to compare")
    results = {}
    for level in supported:
        monkeypatch.setenv(ENV, level)
        results[level] = _all_ops(dtype)
    best = supported[0]
    eps = torch.finfo(dtype).eps
    for level in supported[1:]:
        for (name, want), (_, got) in zip(results[best], results[level], strict=True):
            scale = max(want.abs().max().item(), 1e-30)
            diff = contract.max_err(got, want) / scale
            assert diff <= 16 * eps, f"{level} vs {best}, {name}: {diff:.3g} of the largest value"
    if dtype == torch.float32 and "baseline" != best:
        # SMLP_CPU_ISA reaches the launches: SSE2 code (no FMA) and the best level's do not
        # give the same bits everywhere in float32.
        same = all(
            torch.equal(a, b)
            for (_, a), (_, b) in zip(results[best], results["baseline"], strict=True)
        )
        assert not same, f"baseline and {best} gave identical float32 bits: was the level forced?"


# --------------------------------------------------------------------------------------------
# A bad SMLP_CPU_ISA
# --------------------------------------------------------------------------------------------


def _mix_args():
    return _helpers.make_args(2, 3, 4, 5, 6), contract.randn(2, 4, 5, 6).float()


def test_bogus_value_is_refused_everywhere_and_leaves_nothing_behind(monkeypatch):
    args, grad = _mix_args()
    before = smlp_kernels.smlp_mix(*args, backend="cpu")

    monkeypatch.setenv(ENV, "bogus")
    with pytest.raises(ValueError, match=r"^SMLP_CPU_ISA='bogus' is not a level"):
        _C.cpu_isa()
    with pytest.raises(ValueError, match="SMLP_CPU_ISA"):
        smlp_kernels.smlp_mix(*args, backend="cpu")  # the forward's launch
    with pytest.raises(ValueError, match="SMLP_CPU_ISA"):
        smlp_kernels.row_mix(args[0], args[1], args[2], backend="cpu")  # the axis launch

    # The backward's launch, of a forward run with a good value.
    monkeypatch.delenv(ENV)
    leaves = [t.detach().requires_grad_() for t in args]
    y = smlp_kernels.smlp_mix(*leaves, backend="cpu")
    monkeypatch.setenv(ENV, "bogus")
    with pytest.raises(ValueError, match="SMLP_CPU_ISA"):
        y.backward(grad)

    # No sticky state: unset, and the next launches work and give the same result.
    monkeypatch.delenv(ENV)
    assert _C.cpu_isa() == ISA
    assert torch.equal(smlp_kernels.smlp_mix(*args, backend="cpu"), before)
    leaves = [t.detach().requires_grad_() for t in args]
    smlp_kernels.smlp_mix(*leaves, backend="cpu").backward(grad)
    assert all(t.grad is not None for t in leaves)


@pytest.mark.parametrize("level", LEVELS)
def test_a_level_that_cannot_run_here_is_refused(monkeypatch, level):
    """A level this CPU lacks names the variable and says "lacks"; a level not built into the
    module says so; neither runs anything."""
    if level in ISA["supported"]:
        pytest.skip(f"{level} is built and this CPU supports it: nothing to refuse")
    words = "lacks" if level in ISA["built"] else "no kernels for that level"
    args, _ = _mix_args()
    monkeypatch.setenv(ENV, level)
    with pytest.raises(ValueError, match=rf"^SMLP_CPU_ISA={level}: .*{words}"):
        _C.cpu_isa()
    with pytest.raises(ValueError, match=rf"SMLP_CPU_ISA={level}: .*{words}"):
        smlp_kernels.smlp_mix(*args, backend="cpu")
    monkeypatch.delenv(ENV)
    smlp_kernels.smlp_mix(*args, backend="cpu")


# --------------------------------------------------------------------------------------------
# CPU bfloat16 autocast runs the cpu backend
# --------------------------------------------------------------------------------------------


def test_cpu_bf16_autocast_runs_the_cpu_backend(monkeypatch):
    b, c, c_out, h, w = 9, 40, 37, 7, 7
    args64 = _helpers.make_args(b, c, c_out, h, w, dtype=torch.float64)
    grad = contract.randn(b, c_out, h, w)
    calls = []

    def counting(name):
        original = getattr(CpuBackend, name)

        def wrapper(self, *a, **kw):
            calls.append((name, a[0].dtype))
            return original(self, *a, **kw)

        return wrapper

    for name in ("mix", "mix_grads"):
        monkeypatch.setattr(CpuBackend, name, counting(name))

    leaves = [t.float().requires_grad_() for t in args64]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert registry.resolve_backend(None, "mix", leaves[0].bfloat16(), c_out) == "cpu"
        y = smlp_kernels.smlp_mix(*leaves)  # backend=None: the automatic choice
    assert y.dtype == torch.bfloat16
    y.backward(grad.to(y.dtype))
    assert calls == [("mix", torch.bfloat16), ("mix_grads", torch.bfloat16)], calls
    assert all(t.grad.dtype == torch.float32 for t in leaves)
    ours = [y.detach(), *(t.grad for t in leaves)]

    # The contract's rule, on the inputs as the kernels take them: x and the parameters in
    # bfloat16 (the cpu backend casts float32 parameters to x's dtype).
    rounded = [t.bfloat16() for t in args64]
    truth = contract.run(smlp_kernels.smlp_mix, [t.double() for t in rounded], grad, "reference")
    base = contract.run(smlp_kernels.smlp_mix, rounded, grad, "reference")
    floor = [t.to(torch.bfloat16) for t in truth]
    contract.assert_within(ours, base, truth, contract.MIX_NAMES, torch.bfloat16, floor)


# --------------------------------------------------------------------------------------------
# The instructions of each level's code in the built module
# --------------------------------------------------------------------------------------------

# dispatch.cpp's struct Level: the name, then supported, mix_fwd, mix_wgrad, axis_mix_fwd,
# axis_mix_wgrad, last_launch_threads (pointers); the level's own code is from mix_fwd on.
_LEVEL_WORDS = 7
_FIRST_KERNEL_WORD = 2


def _sections(so: str) -> dict[str, tuple[int, int]]:
    """{name: (address, size)} of the module's sections (objdump -h)."""
    out = subprocess.run(["objdump", "-h", "-w", so], capture_output=True, text=True, check=True)
    secs = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            secs[parts[1]] = (int(parts[3], 16), int(parts[2], 16))
    return secs


def _load_address(so: str) -> int:
    """Where this process mapped the module (its mapping at file offset 0)."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and int(parts[2], 16) == 0 and os.path.realpath(parts[5]) == so:
                return int(parts[0].split("-")[0], 16)
    raise AssertionError(f"{so} is not mapped in this process")


def _level_entry_points(so: str, secs: dict) -> dict[str, list[int]]:
    """{level: the module addresses of its kernels' entry points}, from dispatch.cpp's
    ``levels()`` table (a std::vector<Level>, begin/end/capacity, in the module's data)."""
    built = ISA["built"]  # also makes sure levels() has been built
    base = _load_address(so)
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:

        def read(addr: int, n: int) -> bytes | None:
            try:
                return os.pread(fd, n, addr)
            except OSError:  # not mapped: a candidate that is not a pointer
                return None

        def name_at(addr: int) -> str | None:
            raw = read(addr, 16)
            return None if raw is None else raw.split(b"\0")[0].decode("latin-1")

        data = [secs[s] for s in (".data.rel.ro", ".data", ".bss") if s in secs]
        lo, hi = min(a for a, _ in data), max(a + n for a, n in data)
        mem = read(base + lo, hi - lo) or b""
        words = struct.unpack(f"<{len(mem) // 8}Q", mem[: len(mem) // 8 * 8])
        size = 8 * _LEVEL_WORDS * len(built)
        tables = []
        for i in range(len(words) - 2):
            begin, end, cap = words[i : i + 3]
            if begin == 0 or end - begin != size or cap < end:
                continue
            raw = read(begin, size)
            if raw is None:
                continue
            entries = struct.iter_unpack(f"<{_LEVEL_WORDS}Q", raw)
            entries = [(name_at(e[0]), e) for e in entries]
            if [n for n, _ in entries] == built:
                tables.append({n: [p - base for p in e[_FIRST_KERNEL_WORD:]] for n, e in entries})
    finally:
        os.close(fd)
    assert len(tables) == 1, (
        f"found {len(tables)} tables of levels {built} in {so}'s data "
        "(has dispatch.cpp's struct Level changed? update _LEVEL_WORDS)"
    )
    return tables[0]


_INSN = re.compile(r"^\s*([0-9a-f]+):\t(\S+)\s*([^#]*?)\s*(?:#\s*([0-9a-f]+)\b.*)?$")
_BRANCH = re.compile(r"^(call|jmp|j[a-z]+)$")
_DIRECT = re.compile(r"^([0-9a-f]+)(?: <.*>)?$")


def _level_code(so: str) -> dict[str, list[tuple[str, str]]]:
    """{level: [(mnemonic, operands)] of every function its entry points reach}."""
    secs = _sections(so)
    entries = _level_entry_points(so, secs)
    frames = subprocess.run(["readelf", "--debug-dump=frames", "-W", so], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    pattern = r"FDE cie=\w+ pc=([0-9a-f]+)\.\.([0-9a-f]+)"
    fdes = sorted({(int(a, 16), int(b, 16)) for a, b in re.findall(pattern, frames)})
    starts = [s for s, _ in fdes]
    start_set = set(starts)
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-j", ".text", so],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    addrs, insns = [], []
    for line in dis.splitlines():
        m = _INSN.match(line)
        if m:
            addrs.append(int(m.group(1), 16))
            insns.append((m.group(2), m.group(3), m.group(4)))
    text_lo, text_size = secs[".text"]
    text_hi = text_lo + text_size

    def function_at(addr: int) -> tuple[int, int]:
        i = bisect.bisect_right(starts, addr) - 1
        assert i >= 0 and fdes[i][0] <= addr < fdes[i][1], f"no .eh_frame entry for {addr:#x}"
        return fdes[i]

    code = {}
    for level, points in entries.items():
        todo = [function_at(a) for a in points]
        seen = set(todo)
        while todo:
            lo, hi = todo.pop()
            for k in range(bisect.bisect_left(addrs, lo), bisect.bisect_left(addrs, hi)):
                mnemonic, ops, comment = insns[k]
                target = None
                m = _DIRECT.match(ops)
                if _BRANCH.match(mnemonic) and m:
                    target = int(m.group(1), 16)
                elif mnemonic == "lea" and "(%rip)" in ops and comment:
                    address = int(comment, 16)  # a function's address: an OpenMP body
                    target = address if address in start_set else None
                if target is None or lo <= target < hi or not text_lo <= target < text_hi:
                    continue  # inside the function, or outside .text (the PLT: libraries)
                f = function_at(target)
                if f not in seen:
                    seen.add(f)
                    todo.append(f)
        body = []
        for lo, hi in seen:
            i, j = bisect.bisect_left(addrs, lo), bisect.bisect_left(addrs, hi)
            body += [(mn, ops) for mn, ops, _ in insns[i:j]]
        code[level] = body
    return code


@pytest.fixture(scope="module")
def level_code():
    if shutil.which("objdump") is None or shutil.which("readelf") is None:
        pytest.skip("objdump or readelf not found")
    if platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith(
        "linux"
    ):
        pytest.skip("reads an x86-64 Linux process's memory and code")
    return _level_code(os.path.realpath(_C.__file__))


def _count(body, pattern: str) -> int:
    """Instructions whose mnemonic and operands match ``pattern``."""
    rx = re.compile(pattern)
    return sum(1 for mn, ops in body if rx.search(f"{mn} {ops}"))


_ZMM, _YMM = r"%zmm\d", r"%ymm\d"
_EVEX_ONLY = r"%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b"  # mask registers, registers 16-31
_FMA = r"^vf(n)?m(add|sub)"
# Mnemonics beyond x86-64's SSE2: SSE3, SSSE3, SSE4.1/4.2, POPCNT/LZCNT, BMI1/2 (VEX, but
# without a "v"). Not TZCNT: it is REP BSF, which GCC emits for any x86-64.
_POST_SSE2 = re.compile(
    r"haddp[sd]|hsubp[sd]|addsubp[sd]|movddup|movs[hl]dup|lddqu|pshufb|palignr|pabs[bwd]|"
    r"phadd(w|d|sw)|phsub(w|d|sw)|pmaddubsw|pmulhrsw|psign[bwd]|pmulld|pmuldq|"
    r"pmin(sb|sd|uw|ud)|pmax(sb|sd|uw|ud)|pblend(w|vb)|blendv?p[sd]|round[ps][sd]|insertps|"
    r"extractps|pextr[bdq]|pinsr[bdq]|ptest|dpp[sd]|pmov[sz]x\w+|pcmp[ei]str[im]|"
    r"pcmp(eq|gt)q|packusdw|mpsadbw|phminposuw|crc32\w*|popcnt|lzcnt|andn|bextr|"
    r"bls(i|msk|r)|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx"
)


def _level_body(level_code, level):
    if level not in level_code:
        pytest.skip(f"{level}: not built into this extension (built: {ISA['built']})")
    body = level_code[level]
    assert len(body) > 1000, f"{level}: only {len(body)} instructions found: the search broke"
    return body


def test_avx512bf16_level_uses_vdpbf16ps_and_only_it(level_code):
    body = _level_body(level_code, "avx512bf16")
    assert _count(body, r"^vdpbf16ps") > 0, "the avx512bf16 level has no vdpbf16ps"
    assert _count(body, _ZMM) > 0
    if "avx512" in level_code:
        assert _count(level_code["avx512"], r"^vdpbf16ps") == 0, "vdpbf16ps in the avx512 level"
    for level in ("avx2", "baseline"):
        if level in level_code:
            assert _count(level_code[level], r"^vdpbf16ps") == 0, f"vdpbf16ps in {level}"


def test_avx512_level_uses_zmm(level_code):
    body = _level_body(level_code, "avx512")
    assert _count(body, _ZMM) > 0, "the avx512 level never uses a zmm register"
    assert _count(body, _FMA) > 0, "the avx512 level has no FMA"


def test_avx2_level_uses_ymm_and_fma_but_no_avx512(level_code):
    body = _level_body(level_code, "avx2")
    assert _count(body, _YMM) > 0, "the avx2 level never uses a ymm register"
    assert _count(body, _FMA) > 0, "the avx2 level has no FMA"
    assert _count(body, _ZMM) == 0, "zmm in the avx2 level"
    assert _count(body, _EVEX_ONLY) == 0, "AVX-512 registers (k0-7, xmm/ymm16-31) in avx2"


def test_baseline_level_is_sse2_only(level_code):
    body = _level_body(level_code, "baseline")
    assert _count(body, r"%xmm\d") > 0, "the baseline level never uses an SSE register"
    for what, pattern in [
        ("ymm", _YMM),
        ("zmm", _ZMM),
        ("AVX-512 registers", _EVEX_ONLY),
        ("VEX/EVEX instructions", r"^v"),
    ]:
        found = sorted({mn for mn, ops in body if re.search(pattern, f"{mn} {ops}")})
        assert not found, f"{what} in the baseline level: {found[:10]}"
    found = sorted({mn for mn, _ in body if _POST_SSE2.fullmatch(mn)})
    assert not found, f"instructions beyond SSE2 in the baseline level: {found[:10]}"
