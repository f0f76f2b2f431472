"""The built-in benchmark is calibrated: plain CE learns the spurious cue, the face alone is learnable.

A tiny CNN (4 conv + batch norm blocks, 16 channels) trained with cross-entropy scores high on
`test` (cue agrees with the label) and low on `test_shift` (cue reversed); the same network on
face crops alone (no cue inside the box) is well above chance.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from salience.data import BuiltinBenchmark, builtin_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn() -> nn.Module:
    layers, c = [], 3
    for _ in range(4):
        layers += [nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)]
        c = 16
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))


def train_ce(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """Adam 2e-3 with a one-cycle schedule, batch 64, plain cross-entropy."""
    torch.manual_seed(seed)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    steps = epochs * -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def tensors(ds):
    x = torch.stack([r.image for r in ds.records]).float() / 255
    y = torch.tensor([r.labels[0] for r in ds.records])
    return x, y


def face_crops(ds, size: int = 32) -> torch.Tensor:
    out = []
    for r in ds.records:
        x0, y0, x1, y1 = r.boxes[0].long().tolist()
        out.append(
            F.interpolate(
                r.image[None, :, y0:y1, x0:x1].float() / 255, size=(size, size), mode="bilinear", antialias=True
            )
        )
    return torch.cat(out)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def test_ce_learns_the_cue_small():
    """Fast version: 800 training images, 4 epochs."""
    cfg = BuiltinBenchmark(n_train=800, n_test=400)
    model = train_ce(*tensors(builtin_dataset("train", cfg)), epochs=4)
    test = accuracy(model, *tensors(builtin_dataset("test", cfg)))
    shift = accuracy(model, *tensors(builtin_dataset("test_shift", cfg)))
    assert test >= 0.75 and shift <= 0.35 and test - shift >= 0.4, (test, shift)


def test_face_signal_in_the_box_small():
    """Fast version of 'the face alone is learnable': one hand-made feature, the high-frequency
    energy of the face crop relative to its contrast (real faces keep detail that a rank-10
    eigenface model lacks), thresholded on train, is well above chance on held-out identities."""
    cfg = BuiltinBenchmark(n_train=800, n_test=400)

    def feature(ds):
        c = face_crops(ds).mean(1)
        lap = 4 * c[:, 1:-1, 1:-1] - c[:, :-2, 1:-1] - c[:, 2:, 1:-1] - c[:, 1:-1, :-2] - c[:, 1:-1, 2:]
        return lap.flatten(1).std(1) / (c.flatten(1).std(1) + 1e-3)

    train, test = builtin_dataset("train", cfg), builtin_dataset("test", cfg)
    (_, ytr), (_, yte) = tensors(train), tensors(test)
    ftr, fte = feature(train), feature(test)
    th = max(ftr.tolist(), key=lambda t: ((ftr < t).long() == ytr).float().mean().item())
    acc = ((fte < th).long() == yte).float().mean().item()
    assert acc >= 0.7, acc


@pytest.mark.slow
def test_calibration_full():
    """3,000 training images, 4 epochs: CE test high, test_shift low; crops-only well above chance."""
    cfg = BuiltinBenchmark(n_train=3000, n_test=1000)
    train, test, shift = (builtin_dataset(s, cfg) for s in ("train", "test", "test_shift"))
    xtr, ytr = tensors(train)
    model = train_ce(xtr, ytr, epochs=4)
    acc_test, acc_shift = accuracy(model, *tensors(test)), accuracy(model, *tensors(shift))
    crops = train_ce(face_crops(train), ytr, epochs=4)
    acc_crops = accuracy(crops, face_crops(test), tensors(test)[1])
    print(f"calibration: test {acc_test:.3f} test_shift {acc_shift:.3f} crops-only {acc_crops:.3f}")
    assert acc_test >= 0.9 and acc_shift <= 0.25 and acc_crops >= 0.85, (acc_test, acc_shift, acc_crops)
