"""Distributed training with SparseMLP: DDP and FSDP2 (``fully_shard``), 2 processes on the
gloo backend (CPU), against a single-process run; and a smoke run of examples/train.py under
torchrun.

BatchNorm and the comparison: in train mode each rank normalises with its own batch's
statistics, so a DDP run is *not* a single process on the concatenated batch. What DDP
(and FSDP) computes is the average over ranks of the gradient of each rank's loss on its
own share; the single-process reference computes exactly that, one share at a time, and
takes the same optimizer steps with the averaged gradient. Running statistics (buffers) are
not compared: DDP broadcasts rank 0's at every forward.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _distributed_worker import batch, build_model, loss_fn, optimizer

WORKER = Path(__file__).parent / "_distributed_worker.py"
ROOT = Path(__file__).parent.parent
WORLD = 2
STEPS = 3

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available in this torch build",
)


def _launch(mode: str, tmp_path: Path) -> list[dict]:
    """Run WORLD worker processes; their saved results, rank by rank."""
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                f"--mode={mode}",
                f"--rank={rank}",
                f"--world-size={WORLD}",
                f"--init-method={init}",
                f"--out={tmp_path}",
                f"--steps={STEPS}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"{mode} rank {rank} failed:\n{out[-4000:]}"
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def _single_process() -> dict:
    """The same training in one process: each step's gradient is the average of the
    gradients of each rank's share, computed one share at a time."""
    model = build_model()
    opt = optimizer(model.parameters())
    grads = []
    for step in range(STEPS):
        total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for rank in range(WORLD):
            model.zero_grad(set_to_none=True)
            loss_fn(model, *batch(step, rank)).backward()
            for n, p in model.named_parameters():
                total[n] += p.grad
        for n, p in model.named_parameters():
            p.grad = total[n] / WORLD
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"grads": grads, "params": {n: p.detach().clone() for n, p in model.named_parameters()}}


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for name in want:
        scale = want[name].abs().max().item()
        torch.testing.assert_close(
            got[name],
            want[name],
            rtol=1e-10,
            atol=1e-12 * scale,
            msg=lambda m, n=name: f"{what}, {n}: {m}",
        )


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_gradients_and_steps_equal_single_process(mode, tmp_path):
    """float64 model, 3 SGD steps (momentum 0.9): every step's gradients and the final
    parameters equal the single-process run's, and are identical across ranks."""
    ranks = _launch(mode, tmp_path)
    want = _single_process()
    assert len(want["grads"]) == STEPS
    # Every token mixer is a SparseMLP, and its parameters received gradients.
    assert any(".proj_h." in n for n in want["grads"][0])
    for step in range(STEPS):
        for r in range(1, WORLD):
            for n, g in ranks[0]["grads"][step].items():
                assert torch.equal(g, ranks[r]["grads"][step][n]), (mode, step, r, n)
        _assert_close(ranks[0]["grads"][step], want["grads"][step], f"{mode} step {step} grads")
    for r in range(WORLD):
        _assert_close(ranks[r]["params"], want["params"], f"{mode} rank {r} final params")
    # The steps moved the parameters: the comparison is not of untouched initial values.
    initial = dict(build_model().named_parameters())
    assert any(not torch.equal(initial[n], p) for n, p in want["params"].items())


def test_example_training_script_under_torchrun(tmp_path):
    """examples/train.py, 2 CPU processes (gloo) via torchrun, 2 steps on synthetic data."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        str(ROOT / "examples" / "train.py"),
        "--model=tiny",
        "--image-size=32",
        "--num-classes=10",
        "--batch-size=2",
        "--steps=2",
        f"--save={tmp_path / 'ckpt.pt'}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "step 2/2" in out, out[-4000:]
    assert "world size 2" in out, out[-4000:]
    state = torch.load(tmp_path / "ckpt.pt")
    assert "token_mix.0.1.proj_h.weight" in state  # SPACH's keys: loads into SPACH's sMLPNet
