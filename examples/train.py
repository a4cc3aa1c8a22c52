"""Train sMLPNet with the fused sMLP op, on one or many GPUs or on CPUs, under torchrun.

The model comes from the zoo (:mod:`smlp_kernels.models`), whose token mixers are
:class:`smlp_kernels.nn.SparseMLP` and whose state_dict is SPACH's: ``--init-from`` loads a
SPACH checkpoint, and the saved checkpoint loads back into SPACH's own ``sMLPNet``. (To use
SPACH's model object itself instead, build it and call ``smlp_kernels.convert_spach(model)``
before wrapping it in DDP; the blocks are swapped in place and keep their weights.)

Examples::

    # 8 GPUs on one machine, bfloat16 autocast, compiled
    torchrun --standalone --nproc-per-node=8 examples/train.py --model=tiny --amp=bf16 --compile

    # one GPU
    torchrun --standalone --nproc-per-node=1 examples/train.py --model=tiny --amp=bf16

    # 2 CPU processes (gloo), small images: a smoke test
    torchrun --standalone --nproc-per-node=2 examples/train.py --model=tiny --image-size=32 \\
        --batch-size=2 --steps=2

    # ImageNet-style folders (needs torchvision)
    torchrun --standalone --nproc-per-node=8 examples/train.py --data=/data/imagenet/train

Data is synthetic (random images and labels) unless ``--data`` names an ImageFolder tree.
``--batch-size`` is per process. The process group is NCCL on GPUs and gloo on CPUs; run
without torchrun, the script trains in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import smlp_kernels
from smlp_kernels.models import smlpnet_base, smlpnet_small, smlpnet_tiny
from smlp_kernels.registry import resolve_backend

MODELS = {"tiny": smlpnet_tiny, "small": smlpnet_small, "base": smlpnet_base}
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(MODELS), default="tiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--backend", default=None, help="smlp_kernels backend (default: automatic)")
    p.add_argument("--amp", choices=list(AMP), default="none", help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--data", default=None, help="ImageFolder root (default: synthetic data)")
    p.add_argument("--workers", type=int, default=8, help="data loader workers (--data)")
    p.add_argument("--init-from", default=None, help="a SPACH or smlp_kernels checkpoint")
    p.add_argument("--save", default=None, help="save the final state_dict here (rank 0)")
    p.add_argument("--log-every", type=int, default=1)
    return p.parse_args()


def setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when run by torchrun."""
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, device
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            # NCCL takes one GPU per process: two processes cannot share one.
            raise SystemExit(
                f"LOCAL_RANK {local_rank}, but this machine has {torch.cuda.device_count()} "
                "GPU(s): run torchrun with --nproc-per-node at most the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # device_id binds the communicator to this process's GPU (no guessing from rank).
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def batches(args, rank: int, world: int, device: torch.device):
    """An endless stream of (images, labels) for this process."""
    if args.data is None:
        gen = torch.Generator().manual_seed(rank)
        shape = (args.batch_size, 3, args.image_size, args.image_size)
        while True:
            x = torch.randn(shape, generator=gen)
            y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = datasets.ImageFolder(args.data, tf)
    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        epoch += 1


def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    amp_dtype = AMP[args.amp]

    model = MODELS[args.model](
        num_classes=args.num_classes, image_size=args.image_size, backend=args.backend
    )
    if args.init_from:
        # SPACH's training checkpoints (DeiT's format) hold the run's argparse.Namespace
        # beside the weights, which torch.load's default weights_only=True (torch >= 2.6)
        # refuses unless it is allowed by name.
        torch.serialization.add_safe_globals([argparse.Namespace])
        state = torch.load(args.init_from, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state), strict=True)
    model.to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    else:
        train_model = model
    if args.compile:
        train_model = torch.compile(train_model)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # float16 needs loss scaling; bfloat16 does not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    if rank == 0:
        # Which backend runs the first sMLP block (stage 1, in the dtype autocast gives it).
        side = args.image_size // 4
        probe = torch.empty(1, model.token_mix[0][1].channels, side, side, device=device)
        probe = probe.to(amp_dtype or torch.float32)
        chosen = resolve_backend(args.backend, "mix", probe, probe.shape[1])
        print(
            f"sMLPNet-{args.model}: world size {world}, device {device}, smlp backend "
            f"{chosen}, autocast {args.amp}, compile {args.compile}, "
            f"smlp_kernels {smlp_kernels.__version__}",
            flush=True,
        )

    data = batches(args, rank, world, device)
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = next(data)
        x = x.contiguous(memory_format=memory_format)
        autocast = (
            torch.autocast(device.type, dtype=amp_dtype)
            if amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            loss = F.cross_entropy(train_model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            elapsed = time.perf_counter() - start
            images = step * args.batch_size * world
            print(
                f"step {step}/{args.steps} loss {loss.item():.4f} "
                f"{images / elapsed:.1f} img/s (all processes, since start)",
                flush=True,
            )

    if rank == 0 and args.save:
        torch.save(model.state_dict(), args.save)  # SPACH's keys, no DDP prefix
    if dist.is_initialized():  # torchrun with one process too
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
