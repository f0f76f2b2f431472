"""MetaQuantus' meta-evaluation (`salience.measures.meta`, `salience.study.meta`) against `metaquantus` 0.0.5: its
Wilcoxon p-values, IEC and MC on the same scores, and the whole run on a tiny model with the same perturbation
draws (its input noise and weight noise recorded and fed to ours)."""

from __future__ import annotations

import copy
import gc
import json
import sys
import warnings

import numpy as np
import pytest
import torch

from salience.attribution import attribute, upsample
from salience.measures import meta as M

pytestmark = pytest.mark.usefixtures("one_thread")


def _their_iac(q, q_hat, keep):
    """Transcription of `metaquantus.MetaEvaluation.compute_iac_score` (resilience): scipy's two-sided Wilcoxon
    with zeros split over the kept entries, 0 where scipy raises."""
    from scipy.stats import wilcoxon

    try:
        return wilcoxon(q[keep], q_hat[keep], alternative="two-sided", zero_method="zsplit")[1]
    except ValueError:
        return 0.0


def test_wilcoxon_p_equals_scipy_with_ties_zeros_and_masks():
    rng = np.random.default_rng(0)
    for b, rows in ((1, 12), (2, 12), (5, 24), (7, 3), (26, 24), (51, 24), (60, 24)):  # every branch
        q = rng.normal(size=(rows, b))
        q_hat = q + rng.normal(size=(rows, b))
        q[: rows // 3], q_hat[: rows // 3] = q[: rows // 3].round(), q_hat[: rows // 3].round()  # ties
        q_hat[rows // 3 : rows // 2, : b // 2] = q[rows // 3 : rows // 2, : b // 2]  # zero differences
        keep = rng.random((rows, b)) < 0.8
        ours = M.wilcoxon_p(torch.tensor(q), torch.tensor(q_hat), torch.tensor(keep)).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = [_their_iac(q[r], q_hat[r], keep[r]) for r in range(rows)]
        np.testing.assert_allclose(ours, theirs, atol=1e-12, equal_nan=True)


@pytest.mark.slow
def test_wilcoxon_p_equals_metaquantus_iac():
    metaquantus = pytest.importorskip("metaquantus")  # its import alone takes ~20 s
    rng = np.random.default_rng(2)
    q, q_hat, keep = rng.normal(size=(30, 14)).round(1), rng.normal(size=(30, 14)).round(1), rng.random((30, 14)) < 0.8
    ours = M.wilcoxon_p(torch.tensor(q), torch.tensor(q_hat), torch.tensor(keep)).numpy()
    theirs = [metaquantus.MetaEvaluation.compute_iac_score(q[r], q_hat[r], keep[r], "Input Resilience Test")
              for r in range(30)]  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=1e-12, equal_nan=True)


def _their_iec(q_star, q_hat, keep, adversary, lower_better):
    """Transcription of `metaquantus.MetaEvaluation.compute_iec_adversary` / `compute_iec_resilience`."""
    if adversary:
        worse = q_star < q_hat if lower_better else q_star > q_hat
        u = worse[:, keep].ravel()
    else:
        r_star, r_hat = np.argsort(q_star, axis=0, kind="stable"), np.argsort(q_hat, axis=0, kind="stable")
        u = (r_star == r_hat)[:, keep].ravel()
    return float(np.mean(u)) if u.size else np.nan


def test_iec_and_mc_equal_a_transcription_of_metaquantus():
    rng = np.random.default_rng(1)
    n_m, n_i, n_k, b = 3, 2, 4, 6
    q = rng.normal(size=(n_m, b))
    q_hat = q[:, None, None] + rng.normal(size=(n_m, n_i, n_k, b)) * 0.5
    keep = rng.random((n_i, n_k, b)) < 0.7
    keep[0, 0] = False  # no image kept: NaN
    for adversary, better in ((False, None), (True, "higher"), (True, "lower")):
        ours = M.inter_consistency(torch.tensor(q), torch.tensor(q_hat), torch.tensor(keep), adversary, better)
        theirs = [[_their_iec(q, q_hat[:, i, k], keep[i, k], adversary, better == "lower") for k in range(n_k)]
                  for i in range(n_i)]  # fmt: skip
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12, equal_nan=True)
    parts = {s: torch.tensor(rng.random((n_m, n_i, n_k) if s.startswith("IAC") else (n_i, n_k))) for s in M.SCORES}
    parts["IEC_AR"][0, 1] = torch.nan
    # metaquantus (current code, NaN-means): per iteration, IAC over methods and perturbations, IEC over
    # perturbations; MC = mean of the four (all 4 x I values), sd over iterations of their per-iteration mean
    per_iter = np.stack([np.nanmean(parts[s].numpy(), axis=(0, 2)) if s.startswith("IAC")
                         else np.nanmean(parts[s].numpy(), axis=1) for s in M.SCORES])  # fmt: skip
    ours = M.meta_consistency(parts)
    assert ours["MC"]["mean"] == pytest.approx(np.nanmean(per_iter), abs=1e-12)
    assert ours["MC"]["std"] == pytest.approx(np.nanstd(np.nanmean(per_iter, axis=0)), abs=1e-12)
    for j, s in enumerate(M.SCORES):
        assert ours[s]["mean"] == pytest.approx(np.nanmean(per_iter[j]), abs=1e-12)
        assert ours[s]["std"] == pytest.approx(np.nanstd(per_iter[j]), abs=1e-12)


def _explainers(methods):
    def bind(method):
        return lambda net: lambda xx, t: attribute(method, net, xx, t)

    return {m: bind(m) for m in methods}


def _toy(net, explain, x, target, maps, seed):
    """A deterministic probe: the target's logit times the mean |map| (reads the model, the images and the maps)."""
    with torch.no_grad():
        return net(x).gather(1, target[:, None])[:, 0] * maps.abs().mean((1, 2))


def _their_scores(model, x, y, methods, test, noise, shape):
    """Transcription of metaquantus' perturbation tests for `_toy`: input tests explain the clean images and score
    on the noisy ones clipped below at the batch minimum; model tests copy the model, multiply its parameters by
    the noise, explain and score. Returns the scores `[M, I, K, B]` and whether each prediction stayed."""
    q_hat, same = np.zeros((len(methods), *shape, len(x))), np.zeros((*shape, len(x)), dtype=bool)
    for i in range(shape[0]):
        for k in range(shape[1]):
            net, xx = model, x
            if test.startswith("input"):
                xx = torch.clamp(x + noise[test][i, k], min=float(x.min()))
            else:
                net = copy.deepcopy(model)
                with torch.no_grad():
                    for p, f in zip(net.parameters(), noise[test], strict=True):
                        p.mul_(f[i * shape[1] + k])
            with torch.no_grad():
                same[i, k] = (net(xx).argmax(1) == y).numpy()
            for j, m in enumerate(methods):
                maps = attribute(m, model if test.startswith("input") else net, x, y)
                q_hat[j, i, k] = _toy(net, None, xx, y, maps, 0).numpy()
    return q_hat, same


def test_meta_evaluate_equals_a_transcription_of_metaquantus():
    model, x = _tiny()
    methods, shape = ["gradient", "input_x_gradient"], (2, 3)
    gen = torch.Generator().manual_seed(3)
    uniform = lambda a: (torch.rand(*shape, *x.shape, generator=gen) * 2 - 1) * a
    normal = lambda s: [1 + s * torch.randn(shape[0] * shape[1], *p.shape, generator=gen) for p in model.parameters()]
    noise = {"input_resilience": uniform(0.001), "input_adversary": uniform(5.0), "model_resilience": normal(0.001),
             "model_adversary": normal(0.5)}  # fmt: skip
    ours = M.meta_evaluate(model, x, _explainers(methods), {"toy": _toy}, {"toy": "higher"}, iterations=shape[0],
                           perturbations=shape[1], noise=noise)["toy"]  # fmt: skip
    y = model(x).argmax(1)
    q = np.stack([_toy(model, None, x, y, attribute(m, model, x, y), 0).numpy() for m in methods])
    for test in M.TESTS:
        adversary = test.endswith("adversary")
        q_hat, same = _their_scores(model, x, y, methods, test, noise, shape)
        keep = ~same if adversary else same
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = np.array([[[_their_iac(q[j], q_hat[j, i, k], keep[i, k]) for k in range(shape[1])]
                           for i in range(shape[0])] for j in range(len(methods))])  # fmt: skip
        iec = [[_their_iec(q, q_hat[:, i, k], keep[i, k], adversary, False) for k in range(shape[1])]
               for i in range(shape[0])]  # fmt: skip
        np.testing.assert_allclose(ours["tests"][test]["IAC"], 1 - p if adversary else p, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(ours["tests"][test]["IEC"], iec, atol=1e-12, equal_nan=True)
    assert ours["tests"]["model_adversary"]["kept"] > 0 and ours["tests"]["input_resilience"]["kept"] == 1


def _tiny():
    from salience.models import build

    torch.manual_seed(0)
    return build("smallcnn", 10).eval(), torch.rand(4, 3, 16, 16)


def _recorded_run(metaquantus, estimator, direction, model, x, methods, iterations, k):
    """metaquantus' run, its input-noise and weight-noise draws recorded (gc.collect, which it calls before every
    explanation and dominates its time here, is skipped)."""
    ipt, mpt = [], []
    uniform, sample, collect = np.random.uniform, torch.distributions.Normal.sample, gc.collect

    def rec_uniform(*a, **kw):
        out = uniform(*a, **kw)
        if sys._getframe(1).f_code.co_filename.endswith("ipt.py"):
            ipt.append(np.array(out))
        return out

    def rec_sample(self, *a, **kw):
        out = sample(self, *a, **kw)
        mpt.append(out.clone())
        return out

    def explain(model, inputs, targets, method, **kw):
        xx, t = torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()
        return upsample(attribute(method, model, xx, t).detach(), (16, 16))[:, None].numpy()

    P = metaquantus
    suite = {
        "Model Resilience Test": P.ModelPerturbationTest(noise_type="multiplicative", mean=1.0, std=0.001,
                                                         type="Resilience"),
        "Model Adversary Test": P.ModelPerturbationTest(noise_type="multiplicative", mean=1.0, std=0.5,
                                                        type="Adversary"),
        "Input Resilience Test": P.InputPerturbationTest(noise=0.001, type="Resilience"),
        "Input Adversary Test": P.InputPerturbationTest(noise=5.0, type="Adversary"),
    }  # fmt: skip
    np.random.uniform, torch.distributions.Normal.sample, gc.collect = rec_uniform, rec_sample, lambda *a: 0
    try:
        np.random.seed(0)
        me = P.MetaEvaluation(test_suite=suite, xai_methods={m: {} for m in methods}, iterations=iterations,
                              nr_perturbations=k, explain_func=explain, write_to_file=False)  # fmt: skip
        me(estimator=estimator, model=model, x_batch=x.numpy(), y_batch=np.zeros(len(x), dtype=int),
           channel_first=True, softmax=False, device="cpu", score_direction=direction)  # fmt: skip
    finally:
        np.random.uniform, torch.distributions.Normal.sample, gc.collect = uniform, sample, collect
    return me, ipt, mpt


def _fed_noise(ipt, mpt, n_params, shape, x_shape):
    n = shape[0] * shape[1]

    def weights(start):
        return [torch.stack([mpt[(start + c) * n_params + p] for c in range(n)]) for p in range(n_params)]

    inputs = [torch.tensor(np.stack(ipt[j * n : (j + 1) * n])).view(*shape, *x_shape).float() for j in (0, 1)]
    return {"input_resilience": inputs[0], "input_adversary": inputs[1],
            "model_resilience": weights(0), "model_adversary": weights(n)}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("measure", ["sparseness", "max_sensitivity"])
def test_meta_evaluate_equals_metaquantus_with_the_same_draws(measure):
    metaquantus = pytest.importorskip("metaquantus")
    quantus = pytest.importorskip("quantus")
    from salience.measures.complexity import sparseness
    from salience.measures.robustness import sensitivity

    model, x = _tiny()
    methods, shape, samples = ["gradient", "input_x_gradient"], (2, 2), 2
    g = (torch.rand(samples, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1) * 0.2
    step = [0]  # sensitivity's noise: sample j adds g[j] to every image, on both sides

    def their_noise(arr, indices=None, **kw):
        step[0] += 1
        return arr + g[(step[0] - 1) % samples].reshape(1, -1).numpy()

    def our_noise(size):
        idx = [(step[0] + i) % samples for i in range(size[0])]
        step[0] += size[0]
        return g[idx][:, None].expand(size)

    if measure == "sparseness":  # None: metaquantus' comparison for "higher is better" (see docs/meta.md)
        estimator, direction = quantus.Sparseness(disable_warnings=True), None
        scorer = lambda net, ex, xx, t, maps, seed: sparseness(upsample(maps, (16, 16)))
    else:
        estimator = quantus.MaxSensitivity(nr_samples=samples, perturb_func=their_noise, disable_warnings=True)
        direction = "lower"
        scorer = lambda net, ex, xx, t, maps, seed: sensitivity(ex, xx, t, maps, samples, draw=our_noise).amax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        me, ipt, mpt = _recorded_run(metaquantus, estimator, direction, model, x, methods, *shape)
    step[0] = 0
    noise = _fed_noise(ipt, mpt, len(list(model.parameters())), shape, x.shape)
    explainers = _explainers(methods)
    better = {measure: "higher" if measure == "sparseness" else "lower"}
    ours = M.meta_evaluate(model, x, explainers, {measure: scorer}, better, iterations=shape[0],
                           perturbations=shape[1], noise=noise)[measure]  # fmt: skip
    for test in M.TESTS:
        name = f"{test.split('_')[0].title()} {test.split('_')[1].title()} Test"
        iac = np.stack([me.results_intra_scores[name][m] for m in methods])
        np.testing.assert_allclose(ours["tests"][test]["IAC"], iac, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(ours["tests"][test]["IEC"], me.results_inter_scores[name], atol=1e-12,
                                   equal_nan=True)  # fmt: skip
    assert 0 < ours["tests"]["model_adversary"]["kept"] < 1  # some predictions flip: both branches are compared
    for kind in ("input", "model"):
        assert 0 <= ours[kind]["MC"]["mean"] <= 1


def test_default_draws_are_seeded_and_registry_scorers_run():
    model, x = _tiny()
    explainers = _explainers(["gradient", "input_x_gradient"])
    scorers = {n: M.registry_scorer(n, samples=2) for n in ("sparseness", "max_sensitivity")}
    better = {"sparseness": "higher", "max_sensitivity": "lower"}
    run = lambda seed: M.meta_evaluate(model, x, explainers, scorers, better, iterations=2, perturbations=2, seed=seed)
    a, b = run(0), run(0)
    assert a["max_sensitivity"]["model"]["MC"] == b["max_sensitivity"]["model"]["MC"]
    assert json.dumps(a) == json.dumps(b)
    # the package scores the clean maps on the noisy images: a maps-only measure cannot react to input noise
    assert a["sparseness"]["input"]["IAC_NR"]["mean"] == 1 and a["sparseness"]["input"]["IEC_NR"]["mean"] == 1
    with pytest.raises(ValueError, match="mprt"):
        M.registry_scorer("mprt")


def _meta_results(mc_input, mc_model):
    part = lambda v: {"mean": v, "std": 0.01}
    kinds = {k: {s: part(v) for s in (*M.SCORES, "MC")} for k, v in (("input", mc_input), ("model", mc_model))}
    return {"settings": {"images": 4, "iterations": 2, "perturbations": 3, "methods": ["gradient"]},
            "measures": ["sparseness"], "summary": {"sparseness": kinds}}  # fmt: skip


def test_findings_and_report_name_unreliable_measures_and_their_comparisons():
    from salience.report.render import _meta_table
    from salience.study.findings import meta_findings, unreliable

    comps = {"sparseness": {"B vs A": {"diff": 0.1, "cohens_d": 1.0, "p_value": 0.01}}}
    results = {"meta": _meta_results(0.5, 0.42), "comparisons": comps}
    assert unreliable(results["meta"]) == {"sparseness": {"model": 0.42}}
    found = meta_findings(results)
    assert "sparseness (model MC 0.42)" in found[0] and "B vs A" in found[1]
    assert "(not reliable)" in _meta_table(results) and "model MC" in _meta_table(results)
    fine = {"meta": _meta_results(0.5, 0.9), "comparisons": comps}
    assert unreliable(fine["meta"]) == {} and len(meta_findings(fine)) == 1
    assert meta_findings({}) == [] and _meta_table({}) == ""


@pytest.mark.slow
def test_a_study_with_meta_writes_the_table_and_findings(tmp_path, monkeypatch):
    from PIL import Image

    from salience.models import build
    from salience.study import meta as stage
    from salience.study import run

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    torch.manual_seed(0)
    torch.save(build("smallcnn", 2).state_dict(), tmp_path / "m0.pt")
    monkeypatch.setattr(stage.meta_members, "__kwdefaults__", {**stage.meta_members.__kwdefaults__,
                        "images": 4, "iterations": 2, "perturbations": 2})  # fmt: skip
    study = {"out": str(tmp_path / "out"), "meta": True, "data": {"format": "imagefolder", "root": str(tmp_path / "img")},
             "explain": {"methods": ["gradient", "input_x_gradient"], "target": "predicted"},
             "measures": {"n_probe": 2, "n_boot": 100, "n_perm": 100, "gallery": 0, "select": ["sparseness", "complexity"]},
             "groups": {"A": {"model": "smallcnn", "num_classes": 2, "weights": [str(tmp_path / "m0.pt")]}}}  # fmt: skip
    results = run(study, progress=False)
    assert results["meta"]["measures"] == ["sparseness", "complexity"]
    assert set(results["meta"]["summary"]["sparseness"]) == {"input", "model"}
    assert (tmp_path / "out" / "meta.json").is_file()
    assert "Meta-evaluation of the measures" in (tmp_path / "out" / "report.html").read_text()
    assert any("MetaQuantus MC" in f for f in results["findings"])
