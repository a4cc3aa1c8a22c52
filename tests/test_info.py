"""The two command-line entry points: ``python -m smlp_kernels.info`` and the demo."""

from __future__ import annotations

import subprocess
import sys

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
