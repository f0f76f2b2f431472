"""DeepLift, DeepLiftShap, GradientShap, deconvolution and SmoothGrad² against Captum 0.9.0; Ablation-CAM,
Eigen-Grad-CAM, Grad-CAM element-wise and FullGrad against pytorch-grad-cam 1.5.7. float64, random weights with
perturbed batch norms, relative error = max |ours − ref| / max |ref|.

Captum's DeepLift departs from the rescale rule in three ways (docs/definitions.md, "DeepLift ..."):
- it stores a module's output gradient in a hook on the output tensor, registered before the next hooked module
  registers its own hook on that same tensor, so where two supported nonlinearities follow each other directly
  (ReLU -> MaxPool in SmallCNN, VGG and ResNet's stem) the first one reads the next one's *plain* gradient;
- its max-pool rule scatters back with `max_unpool2d`, which keeps one of the values sent to an input position
  by overlapping windows (ResNet's 3x3 / 2 pool) instead of summing them;
- a module called twice (ResNet's BasicBlock `relu`) raises RuntimeError.
Both value departures break DeepLift's summation to `y(x) − y(x0)`. The reference is therefore Captum run on
`captum_deep_lift_mended`: every ReLU module called once (`dedup_relu`), a `+ 0` in front of every supported module (its
own input tensor) and a summing unpool; there it agrees with salience to 1e-12, and
`test_captum_deep_lift_departures` measures the departures on the plain models.
"""

import functools

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from salience import attribution as A
from salience.attribution.perturbation import smooth_grad_sq
from salience.models import build

captum_attr = pytest.importorskip("captum.attr")
captum_dl = pytest.importorskip("captum.attr._core.deep_lift")
pgc = pytest.importorskip("pytorch_grad_cam")
pgc_base = pytest.importorskip("pytorch_grad_cam.base_cam")
pgc_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

from reference_patches import captum_deep_lift_mended, dedup_relu, raw_pytorch_grad_cam  # noqa: E402  (needs both)


def rel_err(ours: torch.Tensor, ref) -> float:
    ref = torch.as_tensor(np.asarray(ref) if not isinstance(ref, torch.Tensor) else ref).double()
    return ((ours.detach().double() - ref).abs().max() / ref.abs().max()).item()


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5) if name == "resnet18" else build(name, 5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.double().eval()


def _batch(size: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64), torch.tensor([1, 4, 2][:n])


@functools.cache
def _reference(name: str) -> nn.Module:
    return dedup_relu(_model(name)) if name == "resnet18" else _model(name)


DEEP_LIFT = [("smallcnn", 32), ("resnet18", 32)]


@pytest.mark.parametrize("name,size", DEEP_LIFT, ids=[d[0] for d in DEEP_LIFT])
def test_deep_lift_and_deep_lift_shap_match_captum(name, size):
    """Baseline 0 and an image baseline; DeepLiftShap with 3 reference images and with the default references
    (4 constant images per image, from its minimum to its maximum; one image, since they depend on it)."""
    x, t = _batch(size)
    x0 = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    refs = torch.rand((3, *x.shape[1:]), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = _model(name)
    with captum_deep_lift_mended(_reference(name)) as ref_model:
        dl, dls = captum_attr.DeepLift(ref_model), captum_attr.DeepLiftShap(ref_model)
        levels = x[0].min() + torch.arange(4, dtype=x.dtype)[:, None, None, None] / 3 * (x[0].max() - x[0].min())
        checks = [
            ("deep_lift", {}, dl.attribute(x, 0.0, target=t)),
            ("deep_lift", {"baseline": x0}, dl.attribute(x, x0, target=t)),
            ("deep_lift_shap", {"baselines": refs}, dls.attribute(x, refs, target=t)),
            ("deep_lift_shap", {}, dls.attribute(x[:1], levels.expand(4, *x.shape[1:]), target=t[:1])),
        ]
    for method, options, ref in checks:
        n = ref.shape[0]
        ours = A.attribute(method, model, x[:n], t[:n], **options)
        assert ours.shape == ref.shape[:1] + ref.shape[2:] and ref.abs().max() > 0
        err = rel_err(ours, ref.sum(1))
        assert err <= 1e-10, f"{method} {list(options)} on {name}: relative error {err:.2e} to Captum"


def test_captum_deep_lift_departures():
    """On the plain models Captum's DeepLift does not sum to y(x) − y(x0) (adjacent ReLU -> MaxPool, overlapping
    pool windows) and raises on ResNet's reused ReLU; salience's maps sum to y(x) − y(x0) on all of them."""
    x, t = _batch(32)
    x0 = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = torch.arange(2)
    for name in ("smallcnn", "resnet18"):
        model = _model(name)
        ours = A.attribute("deep_lift", model, x, t, baseline=x0)
        with torch.no_grad():
            delta = model(x)[rows, t] - model(x0)[rows, t]
        torch.testing.assert_close(ours.sum((1, 2)), delta, rtol=1e-10, atol=1e-10)
        _, captum_gap = captum_attr.DeepLift(_reference(name)).attribute(x, x0, target=t, return_convergence_delta=True)
        assert captum_gap.abs().max() > 1e-3 * delta.abs().max(), name
    with pytest.raises(RuntimeError, match="used more than once"):
        captum_attr.DeepLift(_model("resnet18")).attribute(x, target=t)


class _Tail(nn.Module):
    """conv -> `act` -> conv -> mean -> linear (-> softmax)."""

    def __init__(self, act: nn.Module, softmax: bool = False):
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), act, nn.Conv2d(4, 4, 3, padding=1)
        self.fc, self.out = nn.Linear(4, 3), nn.Softmax(dim=1) if softmax else nn.Identity()

    def forward(self, x):
        return self.out(self.fc(self.conv2(self.act(self.conv1(x))).mean((2, 3))))


ACTIVATIONS = {
    "elu": lambda: _Tail(nn.ELU()),
    "leaky_relu": lambda: _Tail(nn.LeakyReLU(0.1)),
    "sigmoid": lambda: _Tail(nn.Sigmoid()),
    "tanh": lambda: _Tail(nn.Tanh()),
    "softplus": lambda: _Tail(nn.Softplus()),
    "softmax": lambda: _Tail(nn.ReLU(), softmax=True),
}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_deep_lift_rules_match_captum(act):
    """Every supported nonlinearity, with a reference that equals the input in part of the image (so the rule's
    `|Δin| < eps` branch runs); softmax on one image (Captum subtracts the mean over the whole batch)."""
    torch.manual_seed(0)
    model = ACTIVATIONS[act]().double().eval()
    x, t = _batch(8, 1 if act == "softmax" else 3)
    t = t % 3
    x0 = x.clone()
    x0[..., :4] = 0.3  # equal to x on the right: Δin = 0 there, where both keep the ordinary gradient
    ref = captum_attr.DeepLift(model).attribute(x, x0, target=t).sum(1)
    err = rel_err(A.attribute("deep_lift", model, x, t, baseline=x0), ref)
    assert err <= 1e-10, f"deep_lift with {act}: relative error {err:.2e} to Captum"


def test_deep_lift_refuses_a_nonlinearity_off_the_batch():
    class Folded(nn.Module):  # a ReLU on [2 * batch, ...]: rows no longer pair with their references
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(torch.relu(x.reshape(-1, 3, 4, 2)).reshape(x.shape[0], -1))

    with pytest.raises(ValueError, match="deep_lift: relu got"):
        A.attribute("deep_lift", Folded(), torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="baselines must be reference images"):
        A.attribute(
            "deep_lift_shap", Folded(), torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), baselines=torch.rand(3, 4)
        )


@pytest.mark.parametrize("stdevs", [0.0, 0.1])
def test_gradient_shap_matches_captum_draws(stdevs):
    """Captum draws the reference indices and α from NumPy's global generator and the noise from torch's (in the
    default dtype: float64 here, as salience draws in the input's); seeded alike, the maps agree."""
    x, t = _batch(64)
    refs = torch.rand((3, *x.shape[1:]), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = _model("resnet18")
    np_state, dtype = np.random.get_state(), torch.get_default_dtype()
    x, t = _batch(32)
    refs = refs[..., :32, :32]
    try:
        np.random.seed(7)
        torch.manual_seed(7)
        torch.set_default_dtype(torch.float64)
        ref = captum_attr.GradientShap(model).attribute(x, refs, n_samples=4, stdevs=stdevs, target=t)
    finally:
        np.random.set_state(np_state)
        torch.set_default_dtype(dtype)
    ours = A.attribute("gradient_shap", model, x, t, baselines=refs, samples=4, stdevs=stdevs, seed=7)
    err = rel_err(ours, ref.sum(1))
    assert err <= 1e-10, f"gradient_shap (stdevs {stdevs}): relative error {err:.2e} to Captum"


def test_deconvolution_and_smooth_grad_sq_match_captum():
    """Deconvolution on ResNet-18 (Captum hooks the ReLU modules; ResNet has no functional ReLU), max over channels
    of |·| as guided_backprop. SmoothGrad² over grad_cam at layer3 (a 1-channel LayerGradCam, so squaring commutes
    with the channel reduction); every image spans [0, 1], so one σ fits Captum's float stdevs."""
    x, t = _batch(32)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 0.0, 1.0
    model = _model("resnet18")
    ref = captum_attr.Deconvolution(model).attribute(x, target=t).abs().amax(1)
    assert rel_err(A.attribute("deconvolution", model, x, t), ref) <= 1e-10
    cam = captum_attr.LayerGradCam(model, model.layer3)
    torch.manual_seed(3)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = captum_attr.NoiseTunnel(cam).attribute(
            x, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.15, target=t, relu_attributions=True
        )[:, 0]
    finally:
        torch.set_default_dtype(dtype)
    ours = smooth_grad_sq(model, x, t, base="grad_cam", layer="layer3", samples=3, noise_level=0.15, seed=3)
    assert rel_err(ours, ref) <= 1e-10


def _pgc(cls, model, layers, x, t):
    cam = cls(model, layers)
    if cls is pgc.FullGrad:  # its sum over layers and the input, before the final min-max
        cam.aggregate_multi_layers = lambda per_layer: np.sum(per_layer, axis=1)
        maps = cam(x, [pgc_targets.ClassifierOutputTarget(int(c)) for c in t])
    else:
        with raw_pytorch_grad_cam():
            maps = cam(x, [pgc_targets.ClassifierOutputTarget(int(c)) for c in t])
    cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.asarray(maps)).double()


# (method, pytorch-grad-cam class, model, size, tolerance): Eigen-Grad-CAM's projection is float32 with an arbitrary
# sign, Ablation-CAM's scores float32, FullGrad's per-channel maps float32 (scale_cam_image)
CAMS = [
    ("grad_cam_elementwise", "GradCAMElementWise", "resnet18", 64, 1e-10),
    ("eigen_grad_cam", "EigenGradCAM", "resnet18", 64, 1e-5),
    ("ablation_cam", "AblationCAM", "smallcnn", 32, 1e-4),
    ("full_grad", "FullGrad", "resnet18", 64, 1e-5),
    ("full_grad", "FullGrad", "smallcnn", 32, 1e-5),
]


@pytest.mark.parametrize("method,cls,name,size,tol", CAMS, ids=[f"{c[0]}-{c[2]}" for c in CAMS])
def test_cams_match_pytorch_grad_cam(method, cls, name, size, tol):
    x, t = _batch(size)
    model = _model(name)
    layer = model.layer4 if name == "resnet18" else model.block4
    ref = _pgc(getattr(pgc, cls), model, [layer] if method != "full_grad" else [], x, t)
    ours = A.attribute(method, model, x, t)
    if method == "eigen_grad_cam":  # pytorch-grad-cam keeps the SVD's sign; salience makes |max| >= |min|
        flip = ref.flatten(1).amin(1).abs() > ref.flatten(1).amax(1).abs()
        ref = torch.where(flip[:, None, None], -ref, ref)
    ref = torch.relu(ref)
    assert ours.shape == ref.shape and ref.abs().max() > 0
    err = rel_err(ours, ref)
    assert err <= tol, f"{method} on {name}: relative error {err:.2e} to pytorch-grad-cam {cls}"


@pytest.mark.slow
def test_ablation_cam_matches_pytorch_grad_cam_on_resnet18():
    """512 channels x 2 images at 64 px: its layer4 output has zeros, so pytorch-grad-cam ablates to 0 too."""
    x, t = _batch(64)
    model = _model("resnet18")
    ref = torch.relu(_pgc(pgc.AblationCAM, model, [model.layer4], x, t))
    assert rel_err(A.attribute("ablation_cam", model, x, t, batch_size=128), ref) <= 1e-4
