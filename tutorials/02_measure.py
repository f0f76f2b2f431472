# %% [markdown]
# # 2. Measure the maps
#
# Maps can look convincing and still say nothing about the model. This tutorial measures the maps of
# [tutorial 1](01_explain.md)'s five methods on a small CNN trained for a few seconds on the built-in benchmark
# (faces with their boxes, no download): the sanity checks first, then faithfulness and localisation, and then
# the question of which method to trust for this model. The measures are the registry
# `salience.measures.MEASURES` (the [table of every measure](../api/registries.md#measures-saliencemeasuresmeasures)),
# defined in [Definitions](../definitions.md); [Measures](../measures.md) says how they run.

# %%
import os

import torch
import torch.nn.functional as F
from IPython.display import Markdown

import salience
from salience import attribution as A
from salience.data import BuiltinBenchmark, builtin_dataset, collate
from salience.measures import MEASURES, evaluate
from salience.models import build

TINY = os.environ.get("SALIENCE_TUTORIAL_TINY") == "1"  # the test suite runs every tutorial small
SIZE, N_TRAIN, TRAIN_STEPS, N_IMAGES, SAMPLES, STEPS = (32, 64, 3, 4, 2, 4) if TINY else (64, 640, 60, 16, 10, 16)
torch.manual_seed(0)

# %% [markdown]
# A small CNN trained with cross-entropy for a few steps on the benchmark, in plain PyTorch (`salience train`
# does this from a config: [tutorial 4](04_guidance.md)). The benchmark's corner square agrees with the label
# in 95 % of the images, so the model can learn it instead of the face.

# %%
benchmark = BuiltinBenchmark(size=SIZE, n_train=N_TRAIN, n_val=0, n_test=N_IMAGES)
train = collate(list(builtin_dataset("train", benchmark)))
model = build("smallcnn", 2)
optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(TRAIN_STEPS):
    pick = torch.randint(0, len(train["image"]), (32,))
    loss = F.cross_entropy(model(train["image"][pick]), train["labels"][pick].argmax(1))
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
model.eval()

test = builtin_dataset("test", benchmark)
batch = collate(list(test))
x, masks, target = batch["image"], batch["mask"], batch["labels"].argmax(1)  # masks: the face boxes
methods = ["grad_cam@final", "grad_cam_pp@final", "layer_cam@mid3", "input_x_gradient", "gradient"]
maps = A.attribute_many(model, x, target, methods)
salience.show(x[:4], {spec: m[:4] for spec, m in maps.items()}, titles=[test.classes[int(t)] for t in target[:4]])

# %% [markdown]
# `evaluate(model, images, target, method=..., layer=..., masks=..., measures=[...])` runs measures for one
# method and returns one value per image. A small helper runs a list of measures for every method and
# tabulates the means; the arrow says which direction is better, read from the registry.


# %%
def measure(names: list[str]) -> dict[str, dict[str, float]]:
    table = {}
    for spec in methods:
        name, layer = A.parse_method(spec)
        values = evaluate(
            model,
            x,
            target,
            method=name,
            layer=layer,
            masks=masks,
            measures=names,
            samples=SAMPLES,
            deletion_steps=STEPS,
        )
        table[spec] = {n: float(v.nanmean()) for n, v in values.items()}
    return table


def tabulate(table: dict[str, dict[str, float]]) -> Markdown:
    names = list(next(iter(table.values())))
    arrow = {"higher": " ↑", "lower": " ↓", None: ""}
    lines = ["| method | " + " | ".join(f"`{n}`{arrow[MEASURES[n].better]}" for n in names) + " |"]
    lines.append("|---" * (len(names) + 1) + "|")
    lines += [f"| `{spec}` | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |" for spec, row in table.items()]
    return Markdown("\n".join(lines))


# %% [markdown]
# ## Sanity checks first
#
# A map that explains the model must change when the model changes and when the class changes.
# `mprt` (model parameter randomisation) randomises the model layer by layer from the top and gives the rank
# correlation of the new maps with the original ones; `random_logit` compares the map of the explained class
# with the map of a random other class. Both: lower is better; a method near 1 draws the same map
# whatever the model or class, and no later number can rescue it.

# %%
sanity = measure(["mprt", "random_logit"])
tabulate(sanity)

# %% [markdown]
# ## Faithfulness and localisation
#
# Faithfulness: do the pixels the map calls important matter to the model? Deletion (the score as the most
# salient pixels are removed; lower is better), insertion (higher is better) and the faithfulness
# correlation between summed attribution and score drop. Localisation: does the map fall on the face?
# EPG, the share of positive salience inside the face box, and the pointing game.

# %%
quality = measure(["deletion_auc", "insertion_auc", "faithfulness_correlation", "epg", "pointing_game"])
tabulate(quality)

# %% [markdown]
# ## Which method should I trust for this model?
#
# One reasonable rule, not the only one: drop the methods whose maps barely react to randomising the
# model or changing the class (a sanity value above 0.5), then rank the rest on each faithfulness measure
# (in the direction the registry gives) and take the best mean rank. Localisation is kept apart on purpose:
# a model that uses the corner square *should* get maps off the face, and a method that puts them on the
# face anyway would be flattering the model, not explaining it.

# %%
passed = [s for s in methods if sanity[s]["mprt"] <= 0.5 and sanity[s]["random_logit"] <= 0.5]
candidates = passed or methods  # with every method failing, rank them all (and distrust the answer)
faithfulness = ["deletion_auc", "insertion_auc", "faithfulness_correlation"]
rank = dict.fromkeys(candidates, 0.0)
for n in faithfulness:
    ordered = sorted(candidates, key=lambda s: quality[s][n], reverse=MEASURES[n].better == "higher")
    for place, s in enumerate(ordered):
        rank[s] += place / len(faithfulness)
best = min(rank, key=rank.__getitem__)
print("passed the sanity checks:", passed or "none")
print("mean faithfulness rank:", {s: round(r, 2) for s, r in sorted(rank.items(), key=lambda kv: kv[1])})
print("trust first:", best)

# %% [markdown]
# The same measures run at scale in a study (`measures.select` in the study file, one row per image and map in
# `per_image.csv`): see [tutorial 3](03_study.md) and [Studies](../study.md). With several methods, a study's
# report compares them within each group, sanity checks first, and names the methods whose maps barely change
# when the model is randomised.
