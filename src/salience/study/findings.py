"""The study's findings: plain sentences generated from the numbers of its results (`results["findings"]`,
shown at the top of the report)."""

from __future__ import annotations

import math

from salience.report.methods import BARELY_CHANGES, MPRT_FIGURE, mprt_curves


def findings(results: dict) -> list[str]:
    """The sanity checks' verdicts, how each group compares with the reference group, accuracy lost on the
    `evaluate` splits, what limits the comparisons, and which group ranks first on concentration and
    consistency."""
    groups = [g for g, names in results["groups"].items() if names]
    return (
        sanity_findings(results)
        + versus_reference(results, groups)
        + accuracy_gaps(results, groups)
        + caveats(results, groups)
        + rankings(results, groups)
        + meta_findings(results)
    )


UNRELIABLE_MC = 0.5
"""A measure whose MC score under the input or the model perturbation test is below this is named not reliable
(MC is in [0, 1], higher is better; a measure that cannot tell minor from disruptive perturbations scores about
0.5)."""


def unreliable(meta: dict, threshold: float = UNRELIABLE_MC) -> dict[str, dict[str, float]]:
    """The measures whose MC (mean over models) under the input or the model test is below `threshold`:
    measure -> {perturbation type: MC}."""
    out: dict[str, dict[str, float]] = {}
    for name, kinds in meta.get("summary", {}).items():
        low = {k: v["MC"]["mean"] for k, v in kinds.items() if v["MC"]["mean"] < threshold}
        if low:
            out[name] = low
    return out


def meta_findings(results: dict) -> list[str]:
    """From the meta-evaluation (`results["meta"]`, when run): the measures not reliable for these models (MC
    below `UNRELIABLE_MC` under input or model perturbation), and per such measure the group comparisons that
    rest on it."""
    if not results.get("meta"):
        return []
    low = unreliable(results["meta"])
    if not low:
        return [f"No meta-evaluated measure scores MetaQuantus MC below {UNRELIABLE_MC} for these models."]
    listed = "; ".join(f"{n} ({', '.join(f'{k} MC {v:.2f}' for k, v in kinds.items())})" for n, kinds in low.items())
    out = [f"Not reliable for these models (MetaQuantus MC below {UNRELIABLE_MC}): {listed}."]
    for name in low:
        comps = results.get("comparisons", {}).get(name, {})
        if comps:
            told = "; ".join(
                f"{pair} (difference {c['diff']:+.3f}, p = {c['p_value']:.3g})" for pair, c in comps.items()
            )
            out.append(f"Group comparisons on {name} rest on a measure not reliable here: {told}.")
    return out


def sanity_findings(results: dict) -> list[str]:
    """A sentence per method whose maps barely change under cascading randomisation (see `BARELY_CHANGES`), and
    one naming the method that changes most when several were compared."""
    last = {
        spec: sum(c["similarity"][-1] for c in curves.values()) / len(curves)
        for spec, curves in mprt_curves(results).items()
    }
    out = [
        f"{spec} fails the randomisation sanity check: its maps barely change when every layer of the model is "
        f"randomised (Spearman {v:.2f} with the original maps; figure '{MPRT_FIGURE}'). Its maps say little "
        f"about what the model learned."
        for spec, v in last.items()
        if v == v and v >= BARELY_CHANGES
    ]
    if len(last) > 1:
        best = min(last, key=lambda spec: last[spec])
        out.append(
            f"Most sensitive to model randomisation (lowest Spearman after randomising every layer): {best} ({last[best]:.2f})."
        )
    return out


def versus_reference(results: dict, groups: list[str]) -> list[str]:
    """Per group but the reference, whether it beat the reference on EPG and each accuracy (with the test of
    the difference, where there is one)."""
    s, c, ref = results["summary"], results["comparisons"], results["reference"]
    about = {
        "epg": "EPG (share of positive salience inside the objects' boxes)",
        "accuracy": "accuracy",
        **{f"{k}_accuracy": f"accuracy on {k}" for k in results["data"]["evaluate"]},
    }
    out = []
    for g in groups:
        if g == ref:
            continue
        for key, what in about.items():
            if key not in s:
                continue
            a, b = s[key][g]["mean"], s[key][ref]["mean"]
            if a != a or b != b:
                continue
            sentence = f"{g} models {'beat' if a > b else 'did not beat'} {ref} on {what}: {a:.3f} vs {b:.3f}"
            cmp = c.get(key, {}).get(f"{g} vs {ref}")
            if cmp:
                sentence += f" (difference {cmp['diff']:+.3f}, Cohen's d {cmp['cohens_d']:.2f}, permutation p = {cmp['p_value']:.3g})"
            elif key in results["accuracy_keys"]:
                sentence += " (one model per group: no test of the difference)"
            out.append(sentence + ".")
    return out


def accuracy_gaps(results: dict, groups: list[str]) -> list[str]:
    """A sentence per group and `evaluate` split on which the group loses more than 0.2 accuracy."""
    s = results["summary"]
    out = []
    for g in groups:
        for split in results["data"]["evaluate"]:
            key = f"{split}_accuracy"
            if "accuracy" in s and key in s:
                gap = s["accuracy"][g]["mean"] - s[key][g]["mean"]
                if gap > 0.2:
                    out.append(
                        f"{g} models lose {gap:.2f} accuracy on {split}: they follow something that {split} changes."
                    )
    return out


def caveats(results: dict, groups: list[str]) -> list[str]:
    """What limits the comparisons: a reference group that barely learned the task, and the smallest p-value
    a permutation test of per-model accuracies can give."""
    s, ref = results["summary"], results["reference"]
    out = []
    if "accuracy" in s and s["accuracy"][ref]["mean"] < 0.75:
        out.append(
            f"{ref} models barely learned the task (accuracy {s['accuracy'][ref]['mean']:.2f}): the "
            f"comparisons above mean little."
        )
    sizes = [len(results["groups"][g]) for g in groups]
    if min(sizes) >= 2 and results["accuracy_keys"]:
        n = min(sizes)
        out.append(
            f"Accuracies are compared per model ({n} per group): the smallest p-value a permutation test "
            f"can give is {2 / math.comb(2 * n, n):.2g}."
        )
    return out


def rankings(results: dict, groups: list[str]) -> list[str]:
    """The group with the most concentrated maps, the most stable across its models and the most consistent
    under transforms (each where measured)."""
    s = results["summary"]
    ranked = {
        "entropy_histogram": (min, "Lowest histogram entropy (most concentrated salience)"),
        "stability": (max, "Most stable across models of a group (mean pairwise SSIM)"),
        "transform_ssim": (max, "Most consistent under flips, rotations and shifts (mean SSIM)"),
    }
    out = []
    for key, (pick, what) in ranked.items():
        means = (
            {g: v["ssim"]["mean"] for g, v in results["stability"].items()}
            if key == "stability"
            else {g: s[key][g]["mean"] for g in groups}
            if key in s
            else {}
        )
        if means:
            best = pick(means, key=means.__getitem__)
            out.append(f"{what}: {best} ({means[best]:.3f}).")
    return out
