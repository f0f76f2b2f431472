"""How far TorchCAM's DenseNet-121 maps at `features` are from the definition (salience's maps).

TorchCAM (which "Explain To Me" used) keeps the hooked layer output itself (`output.detach()`), and
torchvision's DenseNet applies `F.relu(features, inplace=True)` right after `features`: TorchCAM's `A` is
therefore `ReLU(A)`. salience records the layer's own output (the rest of the network runs on a copy).

    pip install --no-deps --target /tmp/tc torchcam==0.5.0
    PYTHONPATH=src:/tmp/tc python benchmarks/torchcam_densenet.py [--weights densenet121.pth]

Prints, for CAM and GradCAM of the predicted class on built-in benchmark images (224 px, ImageNet
normalisation), the mean over images of `‖T − S‖ / ‖S‖` for the raw maps and for the min-max
normalised maps (T: TorchCAM, S: salience), and the same for `S'`, salience's formula on `ReLU(A)`, which
should be ~0 if the in-place ReLU is the whole difference.
"""

import argparse

import torch
from torchcam.methods import CAM, GradCAM

from salience.attribution import attribute
from salience.attribution.core import forward_at
from salience.attribution.methods import cam_map, grad_cam_map
from salience.data.builtin import BuiltinBenchmark, builtin_dataset
from salience.guidance.losses import minmax
from salience.models import build


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp(min=1e-12)).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="DenseNet-121 weights (default: random, seed 0)")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build("densenet121", 2 if args.weights is None else 1000, args.weights).eval()
    ds = builtin_dataset("test", BuiltinBenchmark(size=224, n_test=args.images))
    x = torch.stack([ds[i]["image"] for i in range(len(ds))]).float()
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        pred = model(x).argmax(1)
    with torch.enable_grad():  # A = the recorded `features` output (before the in-place ReLU)
        logits, feats = forward_at(model, x, "features")
        (grad,) = torch.autograd.grad(logits[torch.arange(len(x)), pred].sum(), feats)
    feats = feats.detach()
    ours = {
        "cam": cam_map(model.classifier.weight[pred], feats),  # salience's `cam` wants an `fc` head
        "grad_cam": attribute("grad_cam", model, x, pred, layer="features"),
    }
    relu_a = feats.relu()
    on_relu = {"cam": cam_map(model.classifier.weight[pred], relu_a), "grad_cam": grad_cam_map(relu_a, grad)}
    for name, extractor in (("cam", CAM), ("grad_cam", GradCAM)):
        kwargs = {"fc_layer": "classifier"} if name == "cam" else {}
        with extractor(model, target_layer="features", **kwargs) as tc:
            scores = model(x)
            theirs = tc(pred.tolist(), scores, normalized=False)[0].detach()
        s, t, r = ours[name], theirs, on_relu[name]
        print(
            f"{name:9s} raw: TorchCAM vs definition {rel(t, s):.3f}, vs definition on ReLU(A) {rel(t, r):.1e}; "
            f"min-max: {rel(minmax(t), minmax(s)):.3f} ({len(x)} images)"
        )


if __name__ == "__main__":
    main()
