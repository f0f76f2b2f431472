# %% [markdown]
# # 1. Explain a torchvision model
#
# Five attribution methods on a torchvision ResNet-18 in one pass, the maps side by side, and one of them
# checked against Captum. Nothing downloads: the model has random weights unless you point
# `SALIENCE_RESNET18_WEIGHTS` at a local copy of torchvision's `resnet18-f37072fd.pth`, and the images ship
# with scikit-image. (Random weights explain nothing about the pictures; every call below is the one you
# would make with trained weights.)

# %%
# ruff: noqa: E402  -- notebook style: imports where a step first needs them
import os

import torch
import torch.nn.functional as F
from skimage import data as pictures

import salience
from salience import attribution as A
from salience.models import build
from salience.models.adapt import IMAGENET_MEAN_STD, normalise_input

TINY = os.environ.get("SALIENCE_TUTORIAL_TINY") == "1"  # the test suite runs every tutorial small
SIZE = 64 if TINY else 160
torch.manual_seed(0)

# %% [markdown]
# Three pictures from scikit-image, resized to `SIZE` pixels, in [0, 1]. The model normalises its own input
# (a forward pre-hook), so the maps stay in the image's pixels.

# %%
names = ["astronaut", "chelsea", "coffee"]


def load(name: str) -> torch.Tensor:
    image = torch.from_numpy(getattr(pictures, name)()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(SIZE, SIZE), mode="bilinear", antialias=True)[0].clamp(0, 1)


x = torch.stack([load(n) for n in names])
model = build("resnet18", num_classes=1000, weights=os.environ.get("SALIENCE_RESNET18_WEIGHTS")).eval()
normalise_input(model, *IMAGENET_MEAN_STD)
with torch.no_grad():
    target = model(x).argmax(1)  # explain the predicted class
print("images", tuple(x.shape), "classes explained", target.tolist())

# %% [markdown]
# ## Five methods, one pass
#
# `attribute_many` computes the maps of every method that reads the same forward and backward (the
# gradient methods and the gradient CAMs) from one forward, recording each layer asked for, and one
# `autograd.grad`. A spec is `NAME` or `NAME@LAYER`, with layers given as named depths (`final`, `mid3`, ...)
# or module names (`layer4`). Each map is `[P, h, w]` at its layer's resolution.

# %%
methods = ["grad_cam@final", "grad_cam_pp@final", "layer_cam@mid3", "input_x_gradient", "gradient"]
maps = A.attribute_many(model, x, target, methods)
{spec: tuple(m.shape) for spec, m in maps.items()}

# %% [markdown]
# `salience.show` draws each image with its maps, one column per method. By default each column has its own
# colour scale, shared by its images, so the images compare within a method; signed maps (input × gradient)
# are drawn red-blue around 0.

# %%
salience.show(x, maps, titles=names)

# %% [markdown]
# `scale="own"` gives each map its own colour scale (its least to its largest value), to see each map's
# shape whatever its magnitude.

# %%
salience.show(x, maps, titles=names, scale="own")

# %% [markdown]
# ## Checked against Captum
#
# GradCAM at `final` (ResNet's `layer4`) is Captum's `LayerGradCam` with `relu_attributions=True`; input ×
# gradient summed over the colour channels is Captum's `InputXGradient`. In float64 they agree to rounding.

# %%
from captum.attr import InputXGradient, LayerGradCam

model64, x64 = model.double(), x.double()
ours = A.attribute_many(model64, x64, target, ["grad_cam@final", "input_x_gradient"])
theirs = {
    "grad_cam@final": LayerGradCam(model64, model64.layer4)
    .attribute(x64, target=target, relu_attributions=True)[:, 0]
    .detach(),
    "input_x_gradient": InputXGradient(model64).attribute(x64.clone().requires_grad_(), target=target).sum(1).detach(),
}
for spec in ours:
    error = float((ours[spec] - theirs[spec]).abs().max() / theirs[spec].abs().max().clamp(min=1e-30))
    print(f"{spec:18s} largest difference / largest value: {error:.1e}")
    assert error < 1e-6, spec
model.float()  # back to float32
