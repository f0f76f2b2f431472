"""Models trained elsewhere: state dicts in their common wrappings, pickled whole models (refused unless
allowed), TorchScript and torch.export files, and files that are not torch files at all."""

import copy
import pickle
import re
import zipfile

import pytest
import torch
from torch import nn

from salience import attribution as A
from salience.models import build, load_model, load_weights


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = build("resnet18", 3).eval()
    with torch.no_grad():  # non-default batch-norm statistics, so a model left at its init would differ
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_and_its_wrappings_load(source, tmp_path):
    sd = source.state_dict()
    x = torch.rand(2, 3, 32, 32)
    wrappings = {
        "plain.pth": sd,
        "ddp.pth": nn.DataParallel(source).state_dict(),
        "prefixed.pth": {f"module.{k}": v for k, v in sd.items()},
        "lightning_like.ckpt": {"state_dict": sd, "epoch": 7, "hyper_parameters": {"lr": 0.1}},
        "model_key.pt": {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
    }
    assert all(k.startswith("module.") for k in wrappings["ddp.pth"])
    for file, obj in wrappings.items():
        torch.save(obj, tmp_path / file)
        model = build("resnet18", 3, weights=tmp_path / file)
        assert _same(model, source), file
        assert torch.equal(load_model(tmp_path / file, "resnet18", 3).eval()(x), source(x)), file


def test_densenet_keys_of_old_torchvision_are_renamed(tmp_path):
    torch.manual_seed(0)
    source = build("densenet121", 2)
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v  # densenet121-a639ec97.pth's layout:
        for k, v in source.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }  # torch < 0.4.1
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save({f"module.{k}": v for k, v in old.items()}, tmp_path / "densenet_s0.pth")
    assert _same(build("densenet121", 2, weights=tmp_path / "densenet_s0.pth"), source)


def test_dicts_that_hold_no_state_dict_are_refused(source, tmp_path):
    file = tmp_path / "other.pt"
    torch.save({"net": source.state_dict(), "epoch": 3}, file)
    with pytest.raises(
        ValueError, match=re.escape(f"{file} holds a dict that is not a state dict") + r".*\['net', 'epoch'\]"
    ):
        build("resnet18", 3, weights=file)
    torch.save({"state_dict": {"a": 1}, "model": "resnet18"}, file)  # entries that are not tensors
    with pytest.raises(ValueError, match="has no 'state_dict' or 'model' entry holding one"):
        build("resnet18", 3, weights=file)
    torch.save([source.state_dict()], file)
    with pytest.raises(ValueError, match=re.escape(f"{file} holds a list, not a state dict")):
        build("resnet18", 3, weights=file)


def test_mismatched_state_dict_names_file_model_and_keys(tmp_path):
    file = tmp_path / "smallcnn.pth"
    torch.save(build("smallcnn", 3).state_dict(), file)
    with pytest.raises(ValueError) as err:
        build("resnet18", 3, weights=file)
    message = str(err.value)
    assert str(file) in message and "model 'resnet18'" in message
    assert re.search(r"\d+ missing keys \['conv1.weight', ", message), message
    assert re.search(r"\d+ unexpected keys \['block1.0.weight', ", message), message
    model = build("resnet18", 3)
    with pytest.raises(ValueError, match=re.escape(f"weights {file} do not match model 'ResNet'")):
        load_weights(model, file)  # no name given: the class names the model


def test_pickled_whole_model_is_refused_then_allowed(source, tmp_path):
    for file, kwargs in [
        (tmp_path / "whole.pt", {}),
        (tmp_path / "legacy.pt", {"_use_new_zipfile_serialization": False}),
    ]:
        torch.save(source, file, **kwargs)
        with pytest.raises(ValueError) as err:
            build("resnet18", 3, weights=file)
        message = str(err.value)
        assert str(file) in message, message
        assert "torch.save(model.state_dict(), " in message and "allow_pickle=True" in message
        assert _same(build("resnet18", 3, weights=file, allow_pickle=True), source)
        assert _same(load_model(file, "resnet18", 3, allow_pickle=True), source)
        model = build("resnet18", 3)
        load_weights(model, file, "resnet18", allow_pickle=True)
        assert _same(model, source)
    torch.save({"model": source, "epoch": 1}, tmp_path / "wrapped.pt")  # a module inside a checkpoint
    with pytest.raises(ValueError, match="allow_pickle=True"):
        build("resnet18", 3, weights=tmp_path / "wrapped.pt")
    assert _same(build("resnet18", 3, weights=tmp_path / "wrapped.pt", allow_pickle=True), source)


def test_torchscript_and_export_give_the_same_maps(source, tmp_path):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([0, 2])
    scripted, exported = tmp_path / "model.ts", tmp_path / "model.pt2"
    torch.jit.save(torch.jit.script(source), scripted)
    program = torch.export.export(source, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, exported)
    renamed = tmp_path / "export_named.pt"  # an export archive is known by its content, not its name
    renamed.write_bytes(exported.read_bytes())
    for file in (scripted, exported, renamed):
        model = load_model(file)
        assert model.salience_opaque is True
        assert not isinstance(model, type(source))
        assert torch.allclose(model(x), source(x), atol=1e-5)
        for method in (A.gradient, A.input_x_gradient, lambda m, x, t: A.integrated_gradients(m, x, t, steps=8)):
            expected = method(source, x, target)
            assert expected.abs().max() > 0
            assert torch.allclose(method(model, x, target), expected, atol=1e-5), file
    train_mode = tmp_path / "train_mode.ts"
    torch.jit.save(torch.jit.script(copy.deepcopy(source).train()), train_mode)
    assert torch.jit.load(train_mode).training and not load_model(train_mode).training
    assert torch.allclose(load_model(train_mode)(x), source(x), atol=1e-5)
    with pytest.raises(ValueError, match=re.escape(f"{scripted} is a TorchScript archive") + ".*load_model"):
        build("resnet18", 3, weights=scripted)
    with pytest.raises(ValueError, match=re.escape(f"{exported} is a torch.export archive") + ".*load_model"):
        build("resnet18", 3, weights=exported)
    assert not hasattr(build("resnet18", 3), "salience_opaque")


def test_files_that_are_not_torch_files_are_named(tmp_path):
    junk = tmp_path / "notes.pth"
    plain_pickle, other_zip = tmp_path / "weights.pkl", tmp_path / "images.zip"
    plain_pickle.write_bytes(pickle.dumps({"conv1.weight": [0.0, 1.0]}))
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("a/readme.txt", "hello")
    for file in (plain_pickle, other_zip):
        with pytest.raises(ValueError, match=re.escape(f"weights file {file} could not be read")):
            build("resnet18", 3, weights=file)
        with pytest.raises(ValueError, match=re.escape(f"weights file {file} could not be read")):
            build("resnet18", 3, weights=file, allow_pickle=True)
    broken = tmp_path / "broken.ts"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("broken/constants.pkl", "not a pickle")
    with pytest.raises(ValueError, match=re.escape(f"model file {broken} looks like a TorchScript archive but")):
        load_model(broken)
    junk.write_text("these are not weights")
    with pytest.raises(ValueError, match=re.escape(f"weights file {junk} could not be read")):
        build("resnet18", 3, weights=junk)
    with pytest.raises(ValueError, match=re.escape(f"weights file {junk} could not be read")):
        load_model(junk, "resnet18", 3)
    with pytest.raises(ValueError, match=re.escape(f"{junk} is not a TorchScript or torch.export archive") + ".*name="):
        load_model(junk)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_model(tmp_path / "nowhere.pt")
