"""The two command-line entry points: ``python -m smlp_kernels.info`` and the demo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from smlp_kernels import demo, info


def test_info_runs_and_reports_backends():
    out = subprocess.run(
        [sys.executable, "-m", "smlp_kernels.info"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert f"torch {torch.__version__}" in " ".join(out.split())
    assert "extension smlp_kernels._C:" in out
    line = next(s for s in out.splitlines() if s.strip().startswith("reference"))
    assert "available" in line and "unavailable" not in line


def test_info_collect_is_plain_data():
    data = info.collect()
    assert data["backends"]["reference"]["available"] is True
    assert isinstance(data["extension"]["available"], bool) and data["extension"]["reason"]
    assert data["cuda_devices"] == [] or torch.cuda.is_available()


def test_demo_passes_its_own_checks(capsys):
    assert demo.main(["--batch", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert out.count(" ok") >= 5  # four stage shapes per backend, and the convert_spach check


@pytest.mark.parametrize(
    ("argv", "argument", "value"),
    [
        pytest.param(["--batch", "0"], "--batch", "'0'", id="batch-0"),
        pytest.param(["--batch", "-1"], "--batch", "'-1'", id="batch-negative"),
        pytest.param(["--batch", "two"], "--batch", "'two'", id="batch-not-int"),
        pytest.param(["--repeats", "0"], "--repeats", "'0'", id="repeats-0"),
        pytest.param(["--repeats", "-3"], "--repeats", "'-3'", id="repeats-negative"),
    ],
)
def test_demo_bad_arguments_exit_2_before_running(argv, argument, value, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the demo ran despite a bad argument")

    monkeypatch.setattr(demo, "smlp_mix", must_not_run)
    monkeypatch.setattr(demo, "backends", must_not_run)
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last == (
        f"python -m smlp_kernels.demo: error: argument {argument}: expected an integer >= 1, "
        f"got {value}"
    )


def test_demo_bad_argument_through_the_real_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "smlp_kernels.demo", "--repeats", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "argument --repeats: expected an integer >= 1, got '0'" in proc.stderr
