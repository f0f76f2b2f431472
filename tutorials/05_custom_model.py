# %% [markdown]
# # 5. Your own model class
#
# Any PyTorch model works, whatever its forward returns. Here a face classifier from "your repository" whose
# forward returns a tuple, like MTCNN's ONet: boxes, landmarks, and the class scores. It goes through a study
# twice: named by its import path in a study file, and passed as modules from Python with
# `salience.study.run(models=...)` ([Studies](../study.md), [Models](../models.md)).

# %%
# ruff: noqa: E402  -- notebook style: imports where a step first needs them
import os
import sys
import tempfile
from pathlib import Path

import torch
import yaml

import salience
import salience.study
from salience import attribution as A
from salience.models import adapt, build
from salience.store import MapStore

TINY = os.environ.get("SALIENCE_TUTORIAL_TINY") == "1"  # the test suite runs every tutorial small
SIZE, N_TEST = (32, 4) if TINY else (64, 16)
work = Path(tempfile.mkdtemp(prefix="salience-custom-"))

# %% [markdown]
# The repository: a package `mynets` with the model class. (Written to a temporary folder here; in your
# project it is simply your code.)

# %%
(work / "mynets").mkdir()
(work / "mynets" / "__init__.py").write_text("")
(work / "mynets" / "faces.py").write_text('''
import torch
from torch import nn


class ONet(nn.Module):
    """[B, 3, H, W] -> (boxes [B, 4], landmarks [B, 10], scores [B, num_classes])."""

    def __init__(self, num_classes=2, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)
        self.boxes = nn.Linear(4 * width, 4)
        self.landmarks = nn.Linear(4 * width, 10)
        self.scores = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        h = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        pooled = h.mean((2, 3))
        return self.boxes(pooled), self.landmarks(pooled), torch.softmax(self.scores(pooled), 1)
''')
sys.path.insert(0, str(work))  # from the shell: PYTHONPATH=. salience study study.yaml
from mynets.faces import ONet

ONet()(torch.rand(1, 3, SIZE, SIZE))

# %% [markdown]
# ## Through a study file
#
# `model` is the import path `package.module:Class`, `kwargs` go to its constructor and `output: 2` says the
# class scores are the third element of the tuple. The weights are state dicts, as your training saved them.
# The data here is the built-in benchmark; an image folder works the same ([tutorial 3](03_study.md)).
# Layers are the model's own module names (`conv3`).

# %%
for seed in (1, 2):
    torch.manual_seed(seed)
    torch.save(ONet().state_dict(), work / f"onet_{seed}.pth")

study = {
    "out": str(work / "out"),
    "data": {"format": "builtin", "size": SIZE, "options": {"n_train": 2, "n_val": 2, "n_test": N_TEST, "size": SIZE}},
    "explain": {"methods": ["grad_cam@conv3", "input_x_gradient"], "target": "predicted", "batch_size": 8},
    "measures": {
        "select": ["entropy_histogram", "sparseness", "stability_ssim"],
        "n_probe": 0,
        "n_boot": 100,
        "n_perm": 100,
    },
    "groups": {
        "Faces": {
            "model": "mynets.faces:ONet",
            "kwargs": {"num_classes": 2},
            "output": 2,
            "weights": [str(work / "onet_1.pth"), str(work / "onet_2.pth")],
        }
    },
}
(work / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
print((work / "study.yaml").read_text())

# %% [markdown]
# From the shell, in the repository, `PYTHONPATH=. salience study study.yaml` runs it (the module must be
# importable). Before any work every model runs once: a bad `output`, a bad import path or `kwargs` the
# constructor does not take fail at once, naming the group and what the forward returns:

# %%
try:
    salience.study.run(work / "study.yaml", overrides=["groups.Faces.output=5"], progress=False)
except Exception as error:
    print(type(error).__name__, ":", error)

# %% [markdown]
# ## Modules from Python: `study.run(models=...)`
#
# In a notebook the models are often already in memory. `adapt(model, output=2)` makes a module return its
# scores (a forward hook: module names and `state_dict` stay); `build("mynets.faces:ONet", kwargs=...,
# output=2)` builds and adapts in one call. `models=` adds groups of modules, named `<group>_<i>` or by
# the keys of a dict, next to the file's groups (the file may then have none). One run here does both: the
# file's group `Faces` (the two weights files) and the group `Mine` of modules in memory.

# %%
torch.manual_seed(3)
mine = adapt(ONet(), output=2)
built = build("mynets.faces:ONet", kwargs={"num_classes": 2}, output=2)
results = salience.study.run(work / "study.yaml", models={"Mine": {"tuned": mine, "fresh": built}}, progress=False)
results["groups"], results["models"]["onet_1"]["source"]

# %% [markdown]
# The maps of the first model of each group, read from the study's stores, with the images they explain:

# %%
from salience.data import BuiltinBenchmark, builtin_dataset, collate

x = collate(list(builtin_dataset("test", BuiltinBenchmark(n_train=2, n_val=2, n_test=N_TEST, size=SIZE))))["image"][:3]
maps = {
    group: {
        spec: MapStore(work / "out" / "stores" / spec / names[0]).read(0, 3)[0] for spec in study["explain"]["methods"]
    }
    for group, names in results["groups"].items()
}
salience.show(x, maps)

# %% [markdown]
# The same maps straight from `salience.attribution`, on the adapted module: the study's store holds exactly
# these.

# %%
target = mine.eval()(x).argmax(1)
direct = A.attribute_many(mine, x, target, study["explain"]["methods"])
stored = maps["Mine"]
{spec: float((direct[spec] - stored[spec]).abs().max()) for spec in direct}
