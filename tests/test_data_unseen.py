"""The built-in `test_unseen` split: synthetic faces from a second generator (part-swapped, warped
composites of real test faces), with boxes and human maps, and a cue that carries no information."""

import torch

from salience.data.builtin import BuiltinBenchmark, _composites, _identities, _pca, _sources, builtin_dataset


def test_unseen_split_has_boxes_human_maps_and_an_uninformative_cue():
    ds = builtin_dataset("test_unseen", BuiltinBenchmark(n_test=100))
    assert len(ds) == 100
    assert all(len(r.boxes) == 1 and r.human_map is not None and r.human_map.max() > 0 for r in ds.records)
    labels = torch.tensor([r.labels[0] for r in ds.records])
    assert labels.sum() == 50
    agreement = (ds.cue == labels).float().mean().item()
    assert 0.3 < agreement < 0.7  # test: 0.95


def test_unseen_generator_is_not_the_pca_sampler():
    cfg = BuiltinBenchmark()
    faces = _sources()[0]
    ids = _identities(cfg)
    mean, comps = _pca(faces[ids["train"]], cfg.pca_rank)
    basis = torch.linalg.qr(comps.T.double())[0]  # [625, rank]

    def off_subspace(crops):  # share of the centred crop's energy outside the train PCA subspace
        x = crops.reshape(len(crops), -1).double() - mean.double()
        return ((x - x @ basis @ basis.T).norm(dim=1) / x.norm(dim=1)).mean().item()

    g = torch.Generator().manual_seed(0)
    pca = (mean + torch.randn(64, cfg.pca_rank, generator=g) @ comps).reshape(64, 25, 25).clamp(0, 1)
    unseen = _composites(faces[ids["test"]], 64, g)
    assert unseen.shape == (64, 25, 25) and unseen.min() >= 0 and unseen.max() <= 1
    assert off_subspace(pca) < 0.1 < 0.4 < off_subspace(unseen)
