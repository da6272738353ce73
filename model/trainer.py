"""The training loop every stage shares: epochs, progress, checkpoints, resume, best-by-validation, DDP.

A stage supplies the module to optimise, a batch iterator, a loss and a validation function; `fit` does the
rest. Under `torchrun` the module is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA) and each
rank takes its share of every epoch's batches; rank 0 alone validates and writes checkpoints and figures.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .metrics import format_line
from .plots import confusion_png, curves_png


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule. 'adamw' with cosine decay is the default; 'adam' and 'sgd' with step decay
    express the paper's (Adam lr 0.01, wd 1e-3) and the reference's (SGD lr 0.06, momentum 0.9, dampening 0.9,
    wd 1e-3, lr x0.1 at given epochs) settings."""

    name: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    dampening: float = 0.0
    milestones: tuple[int, ...] = ()  # step decay epochs; empty: cosine decay with warm-up
    warmup_epochs: float = 1.0


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose adamw, adam or sgd")


def lr_factor(cfg: OptimConfig, epoch_float: float, epochs: int) -> float:
    if cfg.milestones:
        return 0.1 ** sum(epoch_float >= m for m in cfg.milestones)
    if epoch_float < cfg.warmup_epochs:
        return (epoch_float + 1e-3) / cfg.warmup_epochs
    progress = (epoch_float - cfg.warmup_epochs) / max(epochs - cfg.warmup_epochs, 1e-6)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 at full speed: a CUDA GPU that supports it, or a CPU whose oneDNN has
    bf16 kernels (AVX512 or AMX). An AVX2-only CPU emulates bf16: there the face stage trained about 10 times slower
    in bf16 than in fp32 (docs/performance.md)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# ---- distributed -------------------------------------------------------------------------------------------

def init_distributed(device: str) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main(rank: int) -> bool:
    return rank == 0


def average_buffers(module: nn.Module, world: int) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks: DDP syncs gradients, not these,
    and each rank saw different batches."""
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)


# ---- the loop ------------------------------------------------------------------------------------------------

@dataclass
class Stage:
    """What one training stage supplies to `fit`."""

    name: str
    module: nn.Module  # parameters with requires_grad are optimised
    batches: Callable[[int, tuple[int, int]], Iterator[tuple]]  # (epoch, (rank, world)) -> this rank's batches
    loss: Callable[[nn.Module, tuple], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # -> loss, logits, targets
    validate: Callable[[], dict]  # -> metrics.summarise output
    save: Callable[[Path, torch.optim.Optimizer, dict], None]  # write a checkpoint (path, optimizer, extra)
    labels: tuple[str, ...]
    steps_per_epoch: int
    validates_on_device: bool = False  # validate() runs the module wherever it is (else it visits the CPU)


def to_device(batch: tuple, device: str) -> tuple:
    """The tensors of a batch on `device` (other entries, e.g. None, as they are)."""
    if device == "cpu":
        return batch
    return tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)


def _validate_on_cpu(stage: Stage, module: nn.Module, device: str) -> dict:
    module.to("cpu")
    try:
        return stage.validate()
    finally:
        module.to(device)


def last_state(out_dir: Path) -> dict | None:
    """What a run folder's last.pt holds (written whole after each epoch: the stage's weights, the optimizer, the
    history), or None when it has none."""
    last = out_dir / "last.pt"
    return torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None


def fit(stage: Stage, *, epochs: int, optim: OptimConfig, out_dir: Path, device: str = "cpu",
        autocast_bf16: bool = False, resume: bool = True, log: Callable[[str], None] = print,
        progress: bool = True, compiled: bool = False) -> dict:
    """Train `stage` for `epochs`, keeping the best validation accuracy; returns the run's summary.

    With `compiled`, the training steps run the module through `torch.compile` (TorchInductor: fused kernels, far
    fewer operator calls); validation and checkpoints use the module itself, which shares the weights."""
    from tqdm import tqdm

    rank, world = init_distributed(device)
    if device == "cuda":  # one GPU per process under torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = stage.module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, optim)
    train_module: nn.Module = module
    if world > 1:
        if stage.steps_per_epoch < world:
            raise ValueError(f"{world} processes need at least {world} batches an epoch, and the {stage.name} stage "
                             f"has {stage.steps_per_epoch}; start fewer processes or give it more data")
        train_module = nn.parallel.DistributedDataParallel(module)
    if compiled:
        train_module = torch.compile(train_module)
    history: list[dict] = []
    start_epoch, best = 0, {"val_accuracy": -1.0}
    last = out_dir / "last.pt"
    if resume and (state := last_state(out_dir)) is not None:
        module.load_state_dict(state["extra"]["stage_module"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["extra"]["history"]
        best = state["extra"]["best"]
        start_epoch = len(history)
        log(f"[{stage.name}] resuming from {last} at epoch {start_epoch + 1}")

    def save(path: Path, metrics: dict) -> None:
        extra = {"stage": stage.name, "history": history, "best": best, "stage_module": module.state_dict(),
                 "val": metrics}
        stage.save(path, optimizer, extra)

    for epoch in range(start_epoch, epochs):
        module.train()
        t0 = time.time()
        total_loss = total_correct = total_n = 0.0
        bar = tqdm(stage.batches(epoch, (rank, world)), total=stage.steps_per_epoch // world,
                   desc=f"[{stage.name}] epoch {epoch + 1}/{epochs}",
                   disable=not (progress and is_main(rank)), leave=False, mininterval=2.0)
        for step, batch in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("base_lr", optim.lr) * lr_factor(
                    optim, epoch + step / max(stage.steps_per_epoch // world, 1), epochs)
            batch = to_device(batch, device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast_bf16):
                loss, logits, targets = stage.loss(train_module, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            n = targets.shape[0]
            total_loss += float(loss.detach()) * n
            total_correct += float((logits.argmax(1) == targets).sum())
            total_n += n
            bar.set_postfix(loss=f"{total_loss / total_n:.3f}", acc=f"{total_correct / total_n:.3f}")
        if world > 1:
            average_buffers(module, world)
        if not is_main(rank):
            continue  # rank 0 validates and writes; the others go on to wait at the next epoch's first all-reduce
        module.eval()
        # Validation data lives on the CPU: a stage that moves its batches validates on the device, for the
        # others the module visits the CPU.
        on_device = device == "cpu" or stage.validates_on_device
        metrics = stage.validate() if on_device else _validate_on_cpu(stage, module, device)
        record = {"epoch": epoch + 1, "train_loss": total_loss / max(total_n, 1),
                  "train_accuracy": total_correct / max(total_n, 1), "val_accuracy": metrics["accuracy"],
                  "val_uar": metrics["uar"], "val_macro_f1": metrics["macro_f1"], "seconds": time.time() - t0}
        history.append(record)
        score = metrics.get("selection", metrics["accuracy"])  # stages may select on more than accuracy
        if score > best["val_accuracy"]:
            best = {"val_accuracy": score, "epoch": epoch + 1, "metrics": metrics}
            save(out_dir / "best.pt", metrics)
        save(last, metrics)
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        # Said once the epoch is saved: a run stopped after this line resumes after this epoch.
        modes = "".join(f" | {m} {v['accuracy']:.1%}" for m, v in metrics.get("modes", {}).items())
        log(f"[{stage.name}] epoch {epoch + 1}/{epochs} loss {record['train_loss']:.3f} train acc "
            f"{record['train_accuracy']:.1%} | val {format_line('', metrics)[2:]}{modes} | {record['seconds']:.0f} s")
        curves_png(history, out_dir / "curves.png", f"{stage.name}: training curves")
    if is_main(rank) and "metrics" in best:
        confusion_png(best["metrics"]["confusion_matrix"], list(stage.labels), out_dir / "confusion.png",
                      f"{stage.name}: validation, best epoch {best['epoch']}")
    if world > 1:
        from .checkpoint import weights_sha256

        # Rank 0 reports every rank's weights: identical digests show the ranks stayed in lockstep.
        digests: list[str | None] = [None] * world
        dist.all_gather_object(digests, weights_sha256(module))
        for r, digest in enumerate(digests):
            log(f"[{stage.name}] rank {r}/{world} weights sha256 {digest}")
    return {"best": best, "history": history, "rank": rank, "world": world}
