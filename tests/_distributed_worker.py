"""One rank of the distributed tests (tests/test_distributed.py), run as its own process:

    python tests/_distributed_worker.py --mode ddp|fsdp --rank R --world-size N \\
        --init-method file:///... --out DIR [--steps S] [--backend NAME]

Trains the small sMLPNet of :func:`build_model` (float64, SparseMLP token mixers) for a few
SGD steps on this rank's share of :func:`batch`, wrapped in DDP or FSDP2 (``fully_shard``)
on the gloo process group, and saves each step's full gradients and the final parameters
to ``DIR/rank{R}.pt``. The test compares them with a single-process run of the same
functions.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from smlp_kernels.models import SMLPNet

NUM_CLASSES = 5
PER_RANK_BATCH = 3
IMAGE = 16  # patch 4: 4x4 maps, then 2x2


def build_model(backend: str | None = None) -> torch.nn.Module:
    """float64 (so the comparison can be tight), no stochastic depth, seeded."""
    torch.manual_seed(0)
    model = SMLPNet(
        in_chans=3,
        dim=4,
        depths=(1, 1),
        image_size=IMAGE,
        patch_size=4,
        num_classes=NUM_CLASSES,
        backend=backend,
    )
    return model.double().train()


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s share of step ``step``'s global batch."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(PER_RANK_BATCH, 3, IMAGE, IMAGE, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (PER_RANK_BATCH,), generator=g)
    return x, y


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of the whole value (FSDP2 parameters and gradients are DTensors)."""
    full = getattr(t, "full_tensor", None)
    return (full() if full is not None else t).detach().clone()


def _name(name: str) -> str:
    return name.removeprefix("module.")  # DDP's prefix


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ddp", "fsdp"], required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--init-method", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=args.init_method, rank=args.rank, world_size=args.world_size
    )
    model = build_model(args.backend)
    if args.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.token_mix:
            fully_shard(block)
        fully_shard(model)
    opt = optimizer(model.parameters())

    grads = []
    for step in range(args.steps):
        x, y = batch(step, args.rank)
        loss_fn(model, x, y).backward()
        grads.append({_name(n): _full(p.grad) for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    params = {_name(n): _full(p) for n, p in model.named_parameters()}
    torch.save({"grads": grads, "params": params}, os.path.join(args.out, f"rank{args.rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
