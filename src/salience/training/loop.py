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
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from salience import distributed as dist
from salience.data.core import collate
from salience.data.formats import check_files
from salience.guidance.step import SHARED_FORWARD, Guide
from salience.io.checkpoint import load_checkpoint, save_checkpoint
from salience.io.config import ConfigError, GuidanceConfig, TrainConfig, validate
from salience.io.datasets import check_guidance_data, is_multi_label, open_split
from salience.models.adapt import check_scores
from salience.training.evaluate import evaluate, task_metric_names
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


def _train(config: TrainConfig, resume: bool, progress: bool, ctx: dist.Context) -> Path:
    run = Path(config.out)
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"out: {run} already holds a run; pass --resume to continue it or choose another out")
    if resume and not _candidates(ckpt_dir):
        raise ConfigError(f"out: --resume given but {last} does not exist")
    if ctx.is_main:  # an unusable out fails now, not after the data are read
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"out: cannot create {run} ({err.strerror or err})") from None
    g = config.guidance
    torch.manual_seed(config.seed)
    train_ds = open_split(
        config.data, config.data.train_split, train=True, fraction=g.annotated_fraction, seed=config.seed
    )
    val_ds = open_split(config.data, config.data.val_split)
    for ds in (train_ds, val_ds):  # a missing or corrupt file fails now, not hours into training
        check_files(ds)
    multi_label = is_multi_label(config.data, train_ds)
    check_guidance_data(g.loss, train_ds)
    num_classes = len(train_ds.classes)
    model = config.model.build(num_classes, config.model.weights).to(ctx.device)
    try:  # a wrong `output` or a head of another size fails now, naming what the forward returns
        check_scores(model, val_ds[0]["image"][None].to(ctx.device), num_classes)
    except ValueError as err:
        raise ConfigError(f"model: {config.model.name}: {err}") from None
    guide = make_guide(g, multi_label)
    try:
        guide.check(model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    eval_method = config.eval.method or g.method
    eval_depth = config.eval.depth or g.depth
    try:
        Guide("energy", eval_method, eval_depth).check(model)
    except ValueError as err:  # the same checks, for the keys under eval
        raise ConfigError(str(err).replace("guidance.", "eval.")) from None
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(config, e))
    front = ParetoFront(ckpt_dir, (*task_metric_names(multi_label), "epg", "iou"))
    start = 0
    if resume:
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
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        dist.atomic_write_text(run / "config.yaml", yaml.safe_dump(config.dump(), sort_keys=False))
        _trim_log(run / "log.jsonl", start)
    core = model
    if ctx.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
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
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        seed = _seed(config, epoch, ctx.rank)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        sampler.set_epoch(epoch)
        loader = DataLoader(
            train_ds,
            batch_size=config.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=config.data.workers,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=ctx.device.type == "cuda",
            drop_last=False,
        )
        model.train()
        sums = torch.zeros(5, dtype=torch.float64, device=ctx.device)  # loss, task, guidance, guided, images
        with _progress(progress and ctx.is_main) as bar:
            task_id = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(loader), loss=float("nan"))
            for step, batch in enumerate(loader):
                batch = _to(batch, ctx.device)
                with autocast:
                    out = guide(model, batch, generator, multi_label)
                finite = dist.all_true(torch.isfinite(out["total"].detach()), ctx)
                if not finite:
                    raise TrainingError(
                        f"non-finite loss (total {out['total'].item()}, task {out['task'].item()}, guidance "
                        f"{out['guidance'].item()}) at epoch {epoch + 1}, step {step} (global step "
                        f"{epoch * len(loader) + step}), batch of images {batch['id'][:8]}"
                        f"{' ...' if len(batch['id']) > 8 else ''} on rank {ctx.rank}; last good checkpoint: "
                        f"{last if last.exists() else 'none yet'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                out["total"].backward()
                optimizer.step()
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
                    device=ctx.device,
                )
                bar.update(task_id, advance=1, loss=out["total"].item())
        scheduler.step()
        sums = dist.all_sum(sums, ctx)
        train_stats = {
            "loss": (sums[0] / sums[4]).item(),
            "task": (sums[1] / sums[4]).item(),
            "guidance": (sums[2] / sums[3]).item() if sums[3] > 0 else None,
            "guided_fraction": (sums[3] / sums[4]).item(),
        }
        t_val = time.perf_counter()
        val = evaluate(
            core, val_loader, multi_label, eval_method, eval_depth, config.eval.iou_threshold, ctx=ctx, amp=config.amp
        )
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train": train_stats,
            "val": val,
            "seconds": round(time.perf_counter() - t0, 3),
            "validation_seconds": round(time.perf_counter() - t_val, 3),
        }
        if ctx.is_main:
            objectives = (*(val[k] for k in task_metric_names(multi_label)), val["epg"], val["iou"])
            state = {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "config": config.dump(),
                "metrics": record,
                "multi_label": multi_label,
                "classes": list(train_ds.classes),
                "rng": {"seed": config.seed, "epoch": epoch + 1, "derivation": "seed*1000003 + epoch*1009 + rank"},
            }
            keep = front.consider(epoch + 1, objectives)
            state["pareto"] = front.state_dict()
            # the log line first: a death before the checkpoint leaves a line that resume trims away
            with open(run / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            save_checkpoint(state, last, previous=ckpt_dir / "prev.pt")
            front.commit(epoch + 1, keep, last)
        dist.barrier(ctx)
    return run


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
