"""Engine overhead: the `baseline` method trained through fgcli's loop vs. a bare hand-written PyTorch loop.

Same timm backbone, data, loader, batch size and optimizer, side by side in one process (alternating, so that
machine load affects both alike). Prints the training throughput of each and their ratio (target >= 0.95),
plus the data-loader-only rate vs. the model's consumption rate (which one limits).

    python benchmarks/engine_overhead.py --backbone resnet18 --img-size 96 --epochs 2 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="measured epochs per loop (after one warm-up epoch)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--demo-per-class", type=int, default=30)
    return p.parse_args()


def main() -> None:
    args = parse()
    from fgcli.config import from_dict
    from fgcli.console import setup_logging
    from fgcli.data.prepare import resolve_data
    from fgcli.engine.setup import seed_everything
    from fgcli.engine.trainer import Trainer

    setup_logging(quiet=True)
    cfg = from_dict({
        "method": "baseline",
        "data": {"path": "demo", "img_size": args.img_size, "workers": args.workers,
                 "demo_per_class": args.demo_per_class, "hflip": 0.5},
        "model": {"backbone": args.backbone},
        "optim": {"name": "sgd", "lr": 0.01, "weight_decay": 1e-4},
        "sched": {"name": "none"},
        "train": {"epochs": 100, "batch_size": args.batch_size, "device": args.device, "quiet": True,
                  "project": "/tmp/fgcli-bench", "exist_ok": True, "name": "overhead"},
    })
    resolve_data(cfg.data)  # generate the demo once, outside the timings

    # fgcli: the real Trainer (its train_one_epoch: autocast, accumulation logic, non-finite checks, EMA hook,
    # per-update scheduler, loss-term bookkeeping, progress hooks)
    trainer = Trainer(cfg)
    trainer.setup()
    device = trainer.device
    loader = trainer.data.train_loader
    classes = len(trainer.data.classes)

    # bare: the same timm backbone as a plain classifier, same loader, plain SGD loop
    import timm

    seed_everything(0)
    bare = timm.create_model(args.backbone, num_classes=classes).to(device)
    if device.type == "cuda":
        bare = bare.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(bare.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    amp_dtype = trainer.amp_dtype
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.scaler.is_enabled())

    def bare_epoch() -> float:
        bare.train()
        seen, t0 = 0, time.perf_counter()
        for images, targets, *_ in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = F.cross_entropy(bare(images).float(), targets)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            seen += images.shape[0]
        _sync(device)
        return seen / (time.perf_counter() - t0)

    def fgcli_epoch(epoch: int) -> float:
        stats = trainer.train_one_epoch(epoch, None)
        _sync(device)
        return stats["train_images_per_s"]

    def loader_only() -> float:
        seen, t0 = 0, time.perf_counter()
        for images, *_ in loader:
            seen += images.shape[0]
        return seen / (time.perf_counter() - t0)

    def model_only(steps: int = 10) -> float:
        images, targets, *_ = next(iter(loader))
        images, targets = images.to(device), targets.to(device)
        bare.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = F.cross_entropy(bare(images).float(), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        return steps * images.shape[0] / (time.perf_counter() - t0)

    print(f"device {device}, backbone {args.backbone}, img {args.img_size}, batch {args.batch_size}, "
          f"{len(loader)} batches/epoch, {args.workers} workers, torch threads {torch.get_num_threads()}")
    fgcli_epoch(0)  # warm-up both (allocator, oneDNN / cudnn autotuning, worker start-up)
    bare_epoch()
    ours, theirs = [], []
    for e in range(args.epochs):  # alternate so that load changes hit both loops alike
        ours.append(fgcli_epoch(e + 1))
        theirs.append(bare_epoch())
        print(f"  epoch {e + 1}: fgcli {ours[-1]:.1f} img/s | bare {theirs[-1]:.1f} img/s")
    data_rate = statistics.median(loader_only() for _ in range(2))
    model_rate = model_only()
    f, b = statistics.median(ours), statistics.median(theirs)
    print(f"\ntraining throughput (median of {args.epochs} epochs, loader included)")
    print(f"  fgcli train loop : {f:8.1f} img/s")
    print(f"  bare PyTorch loop: {b:8.1f} img/s")
    print(f"  ratio fgcli/bare : {f / b:8.3f}  (target >= 0.95)")
    print("\nwhat limits")
    print(f"  data loader only : {data_rate:8.1f} img/s")
    print(f"  model only       : {model_rate:8.1f} img/s (one cached batch, fwd+bwd+step)")
    limiter = "the data loader (raise --workers)" if data_rate < model_rate else "the model (the loader keeps up)"
    print(f"  -> {limiter} limits")
    trainer.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
