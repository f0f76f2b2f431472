"""The training loop (plain or guided), per-epoch validation, checkpoints, Pareto front, resume.

`train(config) -> run dir` works in one process or under `torchrun` (DDP; gloo on CPU, nccl on
GPU, chosen from the device). Randomness: at the start of epoch e, process r seeds torch's global
generator, the guidance class sampler and the loader from (seed, e, r), so a checkpoint's
(seed, epoch) restores every random stream exactly, for any number of processes or workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from salience import distributed as dist
from salience.data.core import SalienceDataset, collate
from salience.data.formats import check_files
from salience.guidance.step import SHARED_FORWARD, Guide
from salience.io.checkpoint import load_checkpoint, save_checkpoint
from salience.io.config import ConfigError, GuidanceConfig, TrainConfig, validate
from salience.io.datasets import check_guidance_data, is_multi_label, open_split
from salience.models.adapt import check_scores
from salience.training.evaluate import evaluate_models, task_metric_names
from salience.training.pareto import ParetoFront

log = logging.getLogger("salience")


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss); the message names the step and batch."""


def _seed(config: TrainConfig, epoch: int, rank: int) -> int:
    return (config.seed * 1_000_003 + epoch * 1009 + rank) % (2**63)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier for `epoch` (0-based): linear warm-up, then constant/cosine/step."""
    s = config.schedule
    if epoch < s.warmup_epochs:
        return (epoch + 1) / (s.warmup_epochs + 1)
    e = epoch - s.warmup_epochs
    if s.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * e / max(1, config.epochs - s.warmup_epochs)))
    if s.name == "step":
        return s.gamma ** (e // s.step_epochs)
    return 1.0


def _to(batch: dict, device: torch.device) -> dict:
    out: dict = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v
    return out


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def _same_run(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two config dumps, except those a resume may change."""
    free = {"epochs", "out", "device", "data.workers", "eval"}
    diffs = []

    def walk(a, b, prefix):
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}{key}"
            if name in free:
                continue
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                walk(a[key], b[key], name + ".")
            elif a.get(key) != b.get(key):
                diffs.append(name)

    walk(old, new, "")
    return diffs


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train as `config` says; return the run directory.

    Writes (rank 0 only) `config.yaml`, `log.jsonl` (one JSON object per epoch),
    `checkpoints/last.pt` and `checkpoints/epoch_NNN.pt` for the epochs on the Pareto front of
    (task metric, EPG, IoU) on the validation split, listed in `checkpoints/pareto.json`.
    """
    ctx = dist.setup(config.device)
    try:
        return _train(config, resume, progress, ctx)
    finally:
        dist.teardown(ctx)


@dataclass
class _Run:
    """What the epochs of one run share: set up once by `_setup`, used by each epoch's parts."""

    config: TrainConfig
    ctx: dist.Context
    out: Path  # the run directory
    train_ds: SalienceDataset
    sampler: DistributedSampler[int]
    val_loader: DataLoader
    multi_label: bool
    core: nn.Module  # the model: evaluated and saved
    model: nn.Module  # `core`, or its DDP wrapper when there are several processes: trained
    guide: Guide
    eval_method: str
    eval_depth: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    front: ParetoFront
    autocast: AbstractContextManager

    @property
    def last(self) -> Path:
        return self.out / "checkpoints" / "last.pt"


def _train(config: TrainConfig, resume: bool, progress: bool, ctx: dist.Context) -> Path:
    """Set the run up, then each epoch: train, validate, and (rank 0) log and checkpoint."""
    r, start = _setup(config, resume, ctx)
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        train_stats = _train_epoch(r, epoch, progress)
        record = _validate(r, epoch, train_stats, t0)
        if ctx.is_main:
            _checkpoint(r, epoch, record)
        dist.barrier(ctx)
    return r.out


def _setup(config: TrainConfig, resume: bool, ctx: dist.Context) -> tuple[_Run, int]:
    """Check `out`, read the data, build and check the model, guide and optimiser, load the checkpoint when
    resuming and write `config.yaml`. Returns the run and the number of epochs already done."""
    run = Path(config.out)
    ckpt_dir = run / "checkpoints"
    _check_out(run, resume, ctx)
    torch.manual_seed(config.seed)
    train_ds, val_ds, multi_label = _open_data(config)
    model = _build_model(config, val_ds, len(train_ds.classes), ctx.device)
    guide, eval_method, eval_depth = _checked_guides(config, model, multi_label)
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(config, e))
    front = ParetoFront(ckpt_dir, (*task_metric_names(multi_label), "epg", "iou"))
    start = _resume(config, ckpt_dir, model, optimizer, scheduler, front, ctx) if resume else 0
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        dist.atomic_write_text(run / "config.yaml", yaml.safe_dump(config.dump(), sort_keys=False))
        _trim_log(run / "log.jsonl", start)
    trained = model
    if ctx.world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    sampler: DistributedSampler[int] = DistributedSampler(
        train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed
    )
    val_loader = DataLoader(
        val_ds,
        batch_size=config.eval.batch_size or config.batch_size,
        collate_fn=collate,
        sampler=dist.ShardSampler(len(val_ds), ctx.rank, ctx.world_size),
        num_workers=config.data.workers,
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if config.amp and ctx.device.type == "cuda" else nullcontext()
    )
    r = _Run(
        config=config,
        ctx=ctx,
        out=run,
        train_ds=train_ds,
        sampler=sampler,
        val_loader=val_loader,
        multi_label=multi_label,
        core=model,
        model=trained,
        guide=guide,
        eval_method=eval_method,
        eval_depth=eval_depth,
        optimizer=optimizer,
        scheduler=scheduler,
        front=front,
        autocast=autocast,
    )
    return r, start


def _check_out(run: Path, resume: bool, ctx: dist.Context) -> None:
    """Refuse an `out` that holds a run (without `resume`) or none (with it); rank 0 creates `out/checkpoints`
    now, so an unusable `out` fails before the data are read."""
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"out: {run} already holds a run; pass --resume to continue it or choose another out")
    if resume and not _candidates(ckpt_dir):
        raise ConfigError(f"out: --resume given but {last} does not exist")
    if ctx.is_main:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"out: cannot create {run} ({err.strerror or err})") from None


def _open_data(config: TrainConfig) -> tuple[SalienceDataset, SalienceDataset, bool]:
    """The train and validation splits, their files checked, and whether the task is multi-label."""
    g = config.guidance
    train_ds = open_split(
        config.data, config.data.train_split, train=True, fraction=g.annotated_fraction, seed=config.seed
    )
    val_ds = open_split(config.data, config.data.val_split)
    for ds in (train_ds, val_ds):  # a missing or corrupt file fails now, not hours into training
        check_files(ds)
    multi_label = is_multi_label(config.data, train_ds)
    check_guidance_data(g.loss, train_ds)
    return train_ds, val_ds, multi_label


def _build_model(config: TrainConfig, val_ds: SalienceDataset, num_classes: int, device: torch.device) -> nn.Module:
    """The model on `device`, its scores checked on the first validation image: `[1, num_classes]`."""
    model = config.model.build(num_classes, config.model.weights).to(device)
    try:  # a wrong `output` or a head of another size fails now, naming what the forward returns
        check_scores(model, val_ds[0]["image"][None].to(device), num_classes)
    except ValueError as err:
        raise ConfigError(f"model: {config.model.name}: {err}") from None
    return model


def _checked_guides(config: TrainConfig, model: nn.Module, multi_label: bool) -> tuple[Guide, str, str]:
    """The training `Guide` and the validation's attribution method and depth, each checked against `model`."""
    guide = make_guide(config.guidance, multi_label)
    try:
        guide.check(model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    eval_method = config.eval.method or config.guidance.method
    eval_depth = config.eval.depth or config.guidance.depth
    try:
        Guide("energy", eval_method, eval_depth).check(model)
    except ValueError as err:  # the same checks, for the keys under eval
        raise ConfigError(str(err).replace("guidance.", "eval.")) from None
    return guide, eval_method, eval_depth


def _resume(
    config: TrainConfig,
    ckpt_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    front: ParetoFront,
    ctx: dist.Context,
) -> int:
    """Load the newest readable checkpoint (its config must match `config`) into the model, optimiser,
    scheduler and front; returns the number of epochs it holds."""
    state, used = _load_resume_state(ckpt_dir, ctx.device)
    saved = validate(state["config"], f"{used} (saved config)").dump()  # keys added since take defaults
    diffs = _same_run(saved, config.dump())
    if diffs:
        raise ConfigError(f"--resume: the config differs from the run's in {', '.join(diffs)}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    front.load_state_dict(state["pareto"])
    start = state["epoch"]
    if ctx.is_main:
        _restore_front(front, ckpt_dir, start, used)
    for group in optimizer.param_groups:  # `epochs` may change on resume: follow the new schedule
        group["lr"] = group["initial_lr"] * lr_factor(config, start)
    return start


def _train_epoch(r: _Run, epoch: int, progress: bool) -> dict:
    """Train one epoch, every random stream seeded from (seed, epoch, rank), then step the schedule.

    Returns the means over all processes' images: `loss`, `task`, `guidance` (over guided images; None if
    none) and `guided_fraction`.
    """
    seed = _seed(r.config, epoch, r.ctx.rank)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    r.sampler.set_epoch(epoch)
    loader = DataLoader(
        r.train_ds,
        batch_size=r.config.batch_size,
        sampler=r.sampler,
        collate_fn=collate,
        num_workers=r.config.data.workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=r.ctx.device.type == "cuda",
        drop_last=False,
    )
    r.model.train()
    sums = torch.zeros(5, dtype=torch.float64, device=r.ctx.device)  # loss, task, guidance, guided, images
    with _progress(progress and r.ctx.is_main) as bar:
        task_id = bar.add_task(f"epoch {epoch + 1}/{r.config.epochs}", total=len(loader), loss=float("nan"))
        for step, batch in enumerate(loader):
            batch = _to(batch, r.ctx.device)
            out = _train_step(r, batch, generator, epoch, step, len(loader))
            n = batch["image"].shape[0]
            sums += torch.tensor(
                [
                    out["total"].item() * n,
                    out["task"].item() * n,
                    out["guidance"].item() * out["guided"],
                    out["guided"],
                    n,
                ],
                dtype=torch.float64,
                device=r.ctx.device,
            )
            bar.update(task_id, advance=1, loss=out["total"].item())
    r.scheduler.step()
    sums = dist.all_sum(sums, r.ctx)
    return {
        "loss": (sums[0] / sums[4]).item(),
        "task": (sums[1] / sums[4]).item(),
        "guidance": (sums[2] / sums[3]).item() if sums[3] > 0 else None,
        "guided_fraction": (sums[3] / sums[4]).item(),
    }


def _train_step(r: _Run, batch: dict, generator: torch.Generator, epoch: int, step: int, steps: int) -> dict:
    """One optimiser step on `batch` (step `step` of `steps` in `epoch`); stops with `TrainingError` when
    the loss is not finite on some process. Returns the guide's output: scalar `total`, `task`, `guidance`
    losses and the number of `guided` images."""
    with r.autocast:
        out = r.guide(r.model, batch, generator, r.multi_label)
    finite = dist.all_true(torch.isfinite(out["total"].detach()), r.ctx)
    if not finite:
        raise TrainingError(
            f"non-finite loss (total {out['total'].item()}, task {out['task'].item()}, guidance "
            f"{out['guidance'].item()}) at epoch {epoch + 1}, step {step} (global step "
            f"{epoch * steps + step}), batch of images {batch['id'][:8]}"
            f"{' ...' if len(batch['id']) > 8 else ''} on rank {r.ctx.rank}; last good checkpoint: "
            f"{r.last if r.last.exists() else 'none yet'}"
        )
    r.optimizer.zero_grad(set_to_none=True)
    out["total"].backward()
    r.optimizer.step()
    return out


def _validate(r: _Run, epoch: int, train_stats: dict, t0: float) -> dict:
    """Evaluate on the validation split; returns the epoch's log record (`t0`: when the epoch began)."""
    t_val = time.perf_counter()
    c = r.config
    val = evaluate_models(
        [r.core], r.val_loader, r.multi_label, r.eval_method, r.eval_depth, c.eval.iou_threshold, ctx=r.ctx, amp=c.amp
    )[0]
    return {
        "epoch": epoch + 1,
        "lr": r.optimizer.param_groups[0]["lr"],
        "train": train_stats,
        "val": val,
        "seconds": round(time.perf_counter() - t0, 3),
        "validation_seconds": round(time.perf_counter() - t_val, 3),
    }


def _checkpoint(r: _Run, epoch: int, record: dict) -> None:
    """Append `record` to `log.jsonl`, then save `last.pt` (the previous one kept as `prev.pt`) and update the
    Pareto front's files. Rank 0 only."""
    val = record["val"]
    objectives = (*(val[k] for k in task_metric_names(r.multi_label)), val["epg"], val["iou"])
    state = {
        "model": r.core.state_dict(),
        "optimizer": r.optimizer.state_dict(),
        "scheduler": r.scheduler.state_dict(),
        "epoch": epoch + 1,
        "config": r.config.dump(),
        "metrics": record,
        "multi_label": r.multi_label,
        "classes": list(r.train_ds.classes),
        "rng": {"seed": r.config.seed, "epoch": epoch + 1, "derivation": "seed*1000003 + epoch*1009 + rank"},
    }
    keep = r.front.consider(epoch + 1, objectives)
    state["pareto"] = r.front.state_dict()
    # the log line first: a death before the checkpoint leaves a line that resume trims away
    with open(r.out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    save_checkpoint(state, r.last, previous=r.out / "checkpoints" / "prev.pt")
    r.front.commit(epoch + 1, keep, r.last)


def _restore_front(front: ParetoFront, ckpt_dir: Path, epoch: int, source: Path) -> None:
    """Make the files match the resumed front: drop files of abandoned later epochs and temporary files
    of a killed process, copy `source` to the resumed epoch's file if a crash came before that copy,
    rewrite pareto.json."""
    for p in ckpt_dir.glob("epoch_*.pt"):
        if int(p.stem.split("_")[1]) > epoch:
            p.unlink()
    for p in ckpt_dir.glob("*.pt.tmp*"):  # temporary files of a killed process
        p.unlink()
    missing = any(e["epoch"] == epoch and not (ckpt_dir / e["file"]).exists() for e in front.entries)
    front.commit(epoch, missing, source)


def _candidates(ckpt_dir: Path) -> list[Path]:
    """Checkpoints to resume from, newest first: last.pt, prev.pt, then the Pareto files by epoch."""
    epochs = sorted(ckpt_dir.glob("epoch_*.pt"), reverse=True)
    return [p for p in (ckpt_dir / "last.pt", ckpt_dir / "prev.pt", *epochs) if p.is_file()]


def make_guide(g: GuidanceConfig, multi_label: bool) -> Guide:
    """The `Guide` for a `guidance` section, `auto` settings resolved.

    `output: auto`: the `logit` for `cyborg` (CYBORG's CAM) and multi-label tasks, else `log_softmax` with a
    shared-forward method. `target: auto`: `predicted` for `cyborg` (CYBORG), else the drawn `true` class.
    `alpha` (CYBORG's α) sets the objective to `α · task + (1 − α) · guidance` in place of `task + λ · guidance`.
    """
    output, target = g.output, g.target
    if output == "auto":
        shared = not multi_label and g.method in SHARED_FORWARD and g.loss != "cyborg"
        output = "log_softmax" if shared else "logit"
    if target == "auto":
        target = "predicted" if g.loss == "cyborg" else "true"
    task_weight, lam = (1.0, g.lam) if g.alpha is None else (g.alpha, 1.0 - g.alpha)
    return Guide(g.loss, g.method, g.depth, lam, g.ig_steps, g.box_dilation, output, target, task_weight, g.reduction)


def _load_resume_state(ckpt_dir: Path, device) -> tuple[dict, Path]:
    """The newest checkpoint that loads and passes its checksum; says so when it is not last.pt."""
    problems = []
    best = None
    for path in _candidates(ckpt_dir):
        try:
            state = load_checkpoint(path, map_location=device)
        except (ValueError, FileNotFoundError) as err:  # damaged, or removed meanwhile by rank 0
            problems.append(str(err))
            continue
        if best is None or state["epoch"] > best[0]["epoch"]:
            best = (state, path)
        if path.name == "last.pt":
            break
    if best is None:
        raise ConfigError("--resume: no readable checkpoint in " + str(ckpt_dir) + ": " + "; ".join(problems))
    if problems:
        log.warning("--resume: %s; falling back to %s (epoch %d)", "; ".join(problems), best[1], best[0]["epoch"])
    return best


def _trim_log(path: Path, epochs_done: int) -> None:
    """Keep the log lines of epochs 1..epochs_done (a resumed run rewrites what follows)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
    dist.atomic_write_text(path, "".join(ln + "\n" for ln in lines))
