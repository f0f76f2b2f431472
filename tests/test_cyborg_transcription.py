"""salience's CYBORG recipe equals CYBORG's own loss: one batch's loss and parameter gradients, float64.

`_their_loss` transcribes CVRL/CYBORG `training_code/train_cam.py` (the training phase's loss block) and
`dataset_Loader_cam.py` (the human map's `map_transform` and min-max) line by line; comments quote the
original. Changes: the device is the CPU, the model float64, and `hmap` is cast to the CAMs' dtype for
the MSE. The taps are theirs: DenseNet-121 `model.features(data)`, ResNet-50 `layer4[-1].conv3`; for
ResNet-18, whose BasicBlock has no conv3, the same place in the block, `layer4[-1].conv2`; for the
demo's smallcnn, its final block `block4` read with the hook as they read ResNet's.
"""

import copy

import numpy as np
import pytest
import torch
import torchvision.transforms as transforms
from PIL import Image

from salience.io.config import load_config
from salience.models import build
from salience.training.loop import make_guide

RECIPE = "configs/builtin_cyborg.yaml"


def _their_human_map(grey: np.ndarray, map_size: int) -> torch.Tensor:
    map_transform = transforms.Compose([transforms.Resize([map_size, map_size]), transforms.ToTensor()])
    human_map = Image.fromarray(grey, mode="L")  # Image.open(map_location + name): an 8-bit PNG
    transform_human_map = map_transform(human_map)
    transform_human_map = transform_human_map.type(torch.float)
    transform_human_map = torch.squeeze(transform_human_map)
    transform_human_map = transform_human_map - torch.min(transform_human_map)
    transform_human_map = transform_human_map / torch.max(transform_human_map)
    return transform_human_map


def _their_loss(model, data, cls, hmap, network, tap, alpha=0.5):
    activation = {}

    def getActivation(name):
        def hook(model, input, output):
            activation[name] = output

        return hook

    if network != "densenet":
        model.get_submodule(tap).register_forward_hook(getActivation("features"))
    criterion = torch.nn.CrossEntropyLoss()
    criterion_hmap = torch.nn.MSELoss()
    outputs = model(data)
    pred = torch.max(outputs, dim=1)[1]
    class_loss = criterion(outputs, cls)
    if network == "densenet":
        features = model.features(data)
        params = list(model.classifier.parameters())[0]
    else:  # "resnet" (and "inception", "xception"): the hooked tap and the fc weights
        features = activation["features"]
        params = list(model.fc.parameters())[0]
    bz, nc, h, w = features.shape
    beforeDot = features.reshape((bz, nc, h * w))
    cams = []
    for ids, bd in enumerate(beforeDot):
        weight = params[pred[ids]]
        cam = torch.matmul(weight, bd)
        cam_img = cam.reshape(h, w)
        cam_img = cam_img - torch.min(cam_img)
        cam_img = cam_img / torch.max(cam_img)
        cams.append(cam_img)
    cams = torch.stack(cams)
    hmap_loss = criterion_hmap(cams, hmap.to(cams.dtype))
    loss = (alpha) * (class_loss) + (1 - alpha) * (hmap_loss)
    return loss


def _human_maps(n: int, size: int, seed: int) -> np.ndarray:
    """8-bit human maps `[n, size, size]`: a few random Gaussian blobs each (eyes, nose, mouth alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    maps = np.zeros((n, size, size))
    for i in range(n):
        for cy, cx, s in rng.uniform([0.2, 0.2, 0.04], [0.8, 0.8, 0.12], size=(4, 3)):
            maps[i] = np.maximum(maps[i], np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2)))
    return (maps * 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    "name,network,tap,size",
    [
        ("smallcnn", "resnet", "block4", 64),
        ("resnet18", "resnet", "layer4.1.conv2", 96),
        ("resnet50", "resnet", "layer4.2.conv3", 96),
        ("densenet121", "densenet", "features", 96),
    ],
)
def test_recipe_loss_and_gradients_equal_cyborgs_train_cam(name, network, tap, size):
    torch.manual_seed(0)
    ours = build(name, 2).double().train()
    theirs = copy.deepcopy(ours)
    n = 4
    data = torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cls = torch.tensor([0, 1, 1, 0])
    grey = _human_maps(n, size, seed=2)
    map_size = size // 32 if name != "smallcnn" else size // 8
    hmap = torch.stack([_their_human_map(g, map_size) for g in grey])

    g = load_config(RECIPE, [f"guidance.depth={tap}", f"model.name={name}"]).guidance
    guide = make_guide(g, multi_label=False)
    guide.check(ours)
    batch = {
        "image": data,
        "labels": torch.nn.functional.one_hot(cls, 2).double(),
        "annotated": torch.ones(n, dtype=torch.bool),
        "has_human_map": torch.ones(n, dtype=torch.bool),
        "human_map": torch.from_numpy(grey).double() / 255,
    }
    out = guide(ours, batch, torch.Generator().manual_seed(0))
    out["total"].backward()
    reference = _their_loss(theirs, data, cls, hmap, network, tap)
    reference.backward()

    assert out["guided"] == n
    assert abs(out["total"].item() - reference.item()) <= 1e-6
    assert hmap.amax() == 1 and out["guidance"].item() > 1e-3  # a real comparison, not 0 = 0
    worst = max(
        (a.grad - b.grad).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters(), strict=True)
    )
    assert worst <= 1e-6, f"{name}: largest parameter-gradient difference {worst:.2e}"
