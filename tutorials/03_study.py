# %% [markdown]
# # 3. A study of models trained elsewhere
#
# You have weights files trained somewhere else and a folder of images; you want to know how each group
# of models explains them, and how the groups differ. That is `salience study`
# ([Studies](../study.md)), and `salience view` ([Viewer](../view.md)) opens the result in the browser.
#
# Everything is written into a temporary folder: an image folder with one sub-folder per class
# (faces from the built-in benchmark saved as PNGs), a flat folder of out-of-set images (pictures of
# scikit-image), and four state dicts of a small CNN, saved by plain PyTorch as any training script would.

# %%
# ruff: noqa: E402, B018  -- notebook style: imports where a step first needs them
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from skimage import data as pictures

import salience
import salience.study
from salience.data import BuiltinBenchmark, builtin_dataset, collate
from salience.models import build
from salience.store import MapStore

TINY = os.environ.get("SALIENCE_TUTORIAL_TINY") == "1"  # the test suite runs every tutorial small
SIZE, N_TRAIN, STEPS, N_TEST = (32, 64, 3, 4) if TINY else (64, 512, 40, 12)
work = Path(tempfile.mkdtemp(prefix="salience-study-"))
benchmark = BuiltinBenchmark(size=SIZE, n_train=N_TRAIN, n_val=0, n_test=N_TEST)


def save_png(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)


test = builtin_dataset("test", benchmark)
for i, item in enumerate(test):
    save_png(item["image"], work / "faces" / "test" / test.classes[int(item["labels"].argmax())] / f"{i:03d}.png")
for name in ("coffee", "rocket", "immunohistochemistry"):  # non-faces, from scikit-image
    picture = torch.from_numpy(getattr(pictures, name)()).permute(2, 0, 1)[None].float() / 255
    save_png(F.interpolate(picture, size=(SIZE, SIZE), mode="area")[0], work / "non_faces" / f"{name}.png")
sorted(str(p.relative_to(work)) for p in (work / "faces").rglob("*.png"))[:4]

# %% [markdown]
# The weights: two models trained for a few steps with cross-entropy, and two left at their random
# initialisation, all `smallcnn` with two outputs. Any `torch.save(model.state_dict(), path)` works the same
# (also DataParallel prefixes, checkpoint dicts, old DenseNet keys: see [Models](../models.md)).

# %%
train = collate(list(builtin_dataset("train", benchmark)))
for seed in (1, 2):
    torch.manual_seed(seed)
    model = build("smallcnn", 2)
    torch.save(model.state_dict(), work / f"init_{seed}.pth")
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        pick = torch.randint(0, len(train["image"]), (32,))
        loss = F.cross_entropy(model(train["image"][pick]), train["labels"][pick].argmax(1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.save(model.state_dict(), work / f"ce_{seed}.pth")

# %% [markdown]
# The study file: the images, the out-of-set images, two methods, a few measures, and the groups. Paths are
# relative to where the study runs (here: the temporary folder). `salience study study.yaml` runs it from the
# shell; `salience.study.run` from Python returns the same results dict.

# %%
study = {
    "out": "studies/smallcnn",
    "data": {"format": "imagefolder", "root": "faces/test"},
    "out_of_set": {"format": "imagefolder", "root": "non_faces"},
    "explain": {"methods": ["grad_cam@final", "input_x_gradient"], "target": "predicted"},
    "measures": {
        "select": ["random_logit", "entropy_histogram", "sparseness", "stability_ssim"],
        "n_probe": 2,
        "n_boot": 200,
        "n_perm": 200,
    },
    "groups": {
        "CE": {"model": "smallcnn", "num_classes": 2, "weights": ["ce_1.pth", "ce_2.pth"]},
        "Init": {"model": "smallcnn", "num_classes": 2, "weights": ["init_1.pth", "init_2.pth"]},
    },
}
(work / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
print((work / "study.yaml").read_text())

# %%
os.chdir(work)
results = salience.study.run("study.yaml", progress=False)
out = work / "studies" / "smallcnn"
sorted(p.name for p in out.iterdir())

# %% [markdown]
# `results.json` holds every number, `per_image.csv` one row per model, method and image, and `stores/` the
# maps. The report's findings, and the maps of one group side by side read back from the stores:

# %%
for line in results["findings"]:
    print("-", line)

# %%
n = 3
first = MapStore(out / "stores" / "grad_cam@final" / "ce_1")
ids = list(first.meta.image_ids)[:n]  # paths under faces/test, in the stores' order
x = torch.stack(
    [torch.from_numpy(np.array(Image.open(work / "faces" / "test" / i))).permute(2, 0, 1) / 255 for i in ids]
)
maps = {
    group: {spec: MapStore(out / "stores" / spec / names[0]).read(0, n)[0] for spec in study["explain"]["methods"]}
    for group, names in results["groups"].items()
}
salience.show(x, maps, titles=ids)

# %% [markdown]
# ## The study in `salience view`
#
# `salience view studies/smallcnn` serves an explorer of the folder on `http://127.0.0.1:8765/`: the table of
# `per_image.csv` (sort, filter, search), one image with every model's map, and the ranked views. Here the
# server runs in a thread and headless Chromium (driven by selenium, as the project's browser tests do) opens
# one image and takes a screenshot.

# %%
import shutil

from salience.view import make_server

chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
server = make_server(out, port=0, quiet=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/"
print("serving", out.relative_to(work), "at", url)


# %%
def screenshot(url: str) -> bytes:
    import time

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1200,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={work / 'chromium'}",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        browser.get(url)
        end = time.time() + 20
        while browser.execute_script("return document.body.dataset.loaded") != "table" and time.time() < end:
            time.sleep(0.05)
        browser.find_element(By.CSS_SELECTOR, "#grid tbody tr").click()  # the first row: its image and every map
        while not browser.execute_script("return document.body.dataset.drawn") and time.time() < end:
            time.sleep(0.05)
        return browser.get_screenshot_as_png()
    finally:
        browser.quit()


if chromium and driver_path:
    from IPython.display import Image as Picture

    png = screenshot(url)
    (work / "view.png").write_bytes(png)
    shown = Picture(data=png, width=900)
else:
    shown = print("no chromium / chromedriver here: open", url, "in a browser instead")
server.shutdown()
server.server_close()
shown
