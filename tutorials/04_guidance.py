# %% [markdown]
# # 4. Guided training with the Energy loss
#
# The built-in benchmark (real vs synthetic faces, no download) has a trap: a red or blue corner square agrees
# with the label in 95 % of the training images and is reversed in `test_shift`. A model trained with
# cross-entropy alone learns the square. The Energy loss of Rao et al. (ICCV 2023) adds a term that pulls the
# model's GradCAM map into the face box while it trains ([Training](../training.md)). This tutorial trains
# one model each way, then draws the maps before and after and scores both on `test_shift`. `make demo` is the
# same experiment at full size, with three seeds per group ([The demo](../demo.md)).

# %%
import os
import tempfile
from pathlib import Path

import torch

import salience
from salience import attribution as A
from salience.data import BuiltinBenchmark, builtin_dataset, collate
from salience.models import build
from salience.training import evaluate_checkpoint, load_config, train

TINY = os.environ.get("SALIENCE_TUTORIAL_TINY") == "1"  # the test suite runs every tutorial small
SIZE, N_TRAIN, EPOCHS = (32, 32, 1) if TINY else (64, 640, 4)
work = Path(tempfile.mkdtemp(prefix="salience-guidance-"))
benchmark = {"size": SIZE, "n_train": N_TRAIN, "n_val": 32 if TINY else 100, "n_test": 8 if TINY else 200}

# %% [markdown]
# Two configs that differ only in `guidance` (the full recipes are `configs/builtin_ce.yaml` and
# `configs/builtin_energy.yaml`; `salience train CONFIG` runs them from the shell). Energy: GradCAM at the last
# block (`depth: final`), explaining the log-probability of the true class, inside the face box, weight λ = 1.

# %%
base = {
    "seed": 0,
    "epochs": EPOCHS,
    "batch_size": 32,
    "model": {"name": "smallcnn"},
    "data": {"format": "builtin", "size": SIZE, "options": benchmark},
    "optim": {"name": "adam", "lr": 2e-3},
    "schedule": {"name": "cosine"},
    "eval": {"method": "grad_cam", "depth": "final"},
}
guidance = {
    "CE": {"loss": None},
    "Energy": {"loss": "energy", "method": "grad_cam", "depth": "final", "lambda": 1.0},
}
runs = {
    name: train(load_config({**base, "out": str(work / name), "guidance": g}), progress=False)
    for name, g in guidance.items()
}
{name: sorted(p.name for p in run.iterdir()) for name, run in runs.items()}

# %% [markdown]
# Each run directory holds `config.yaml`, `log.jsonl` (one line per epoch, with validation accuracy and EPG)
# and `checkpoints/` (`last.pt` and the epochs on the Pareto front of accuracy and EPG). Scores on
# `test_shift`, where the square lies, and EPG (the share of positive GradCAM inside the face box):

# %%
for name, run in runs.items():
    scores = evaluate_checkpoint(run / "checkpoints" / "last.pt", "test_shift", device="cpu")
    print(f"{name:7s} test_shift accuracy {scores['accuracy']:.3f}   EPG {scores['epg']:.3f}")

# %% [markdown]
# ## Maps before and after
#
# GradCAM at the last block for the true class of a few `test_shift` images: the model at its initialisation
# (the same seed gives the same start for both runs), after cross-entropy, after Energy guidance. The face box
# is where the Energy loss wants the map.

# %%
torch.manual_seed(0)
models = {"before": build("smallcnn", 2)}
models |= {name: build("smallcnn", 2, weights=run / "checkpoints" / "last.pt") for name, run in runs.items()}
batch = collate([builtin_dataset("test_shift", BuiltinBenchmark(**benchmark))[i] for i in range(4)])
x, target = batch["image"], batch["labels"].argmax(1)
maps = {name: A.grad_cam(model.eval(), x, target, layer="final") for name, model in models.items()}
salience.show(x, maps, titles=[["real", "synthetic"][int(t)] for t in target])

# %% [markdown]
# With `scale="own"` each map fills its own colour range, which shows where each model looks even where its
# maps are weak:

# %%
salience.show(x, maps, scale="own")
