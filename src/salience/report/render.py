"""Render a study's results directory (`results.json`, `gallery.pt`) into one self-contained
`report.html`: figures are PNGs embedded as base64, so the file opens offline and can be mailed."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from salience.report.methods import MPRT_FIGURE, fig_methods, fig_mprt, methods_html, ordered_keys

PALETTE = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
"""Group colours by the group's place in the study (the demo's CE, Energy, CYBORG: grey, blue, red)."""
LABELS = {
    "epg": "EPG (share of positive salience in the boxes; higher is better)",
    "iou": "IoU of the thresholded map with the boxes",
    "pointing_game": "Pointing game (map maximum inside the boxes)",
    "entropy_histogram": "Entropy, histogram (paper's; lower = more concentrated)",
    "entropy_spatial": "Entropy, spatial (lower = fewer salient pixels)",
    "noise_ssim_0.1": "Map SSIM, clean vs 10 % salt-and-pepper",
    "transform_ssim": "Transformation consistency (mean SSIM over 12 transforms)",
    "blur_nonsalient_score_change": "Score change, blurring non-salient regions",
    "blur_salient_score_change": "Score change, blurring salient regions",
    "deletion_auc": "Deletion AUC (lower = map finds what matters)",
    "insertion_auc": "Insertion AUC (higher = map finds what matters)",
    "accuracy": "Accuracy",
    "auc": "ROC AUC",
    "f1": "F1 (micro)",
    "map": "mAP (macro AP)",
    "worst_group_accuracy": "Worst-group accuracy",
}


_MEASURE_LABELS: dict[str, str] = {}
"""Labels of the measures of the results being rendered (from the registry, via `results["measures"]`)."""


def _label(key: str) -> str:
    """Table label of a measure or accuracy key (`test_shift_accuracy` -> `Accuracy on test_shift`)."""
    if key in _MEASURE_LABELS:
        return _MEASURE_LABELS[key]
    if key in LABELS:
        return LABELS[key]
    if key.startswith("out_of_set_called_"):
        return f"Out-of-set images called '{key[18:]}'"
    for base in ("worst_group_accuracy", "accuracy", "auc", "f1", "map", "epg", "iou"):
        if key.endswith("_" + base):
            return f"{LABELS[base]} on {key[: -len(base) - 1]}"
    return key


def _color(results: dict, group: str) -> str:
    """The colour of `group`: `PALETTE` by its place among the study's groups."""
    return PALETTE[list(results["groups"]).index(group) % len(PALETTE)]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _groups(results: dict) -> list[str]:
    return [g for g, names in results["groups"].items() if names]


def fig_gallery(gallery: dict, results: dict) -> str | None:
    """Images with their boxes (and human maps, where the data have them) and each group's map."""
    groups = list(gallery["maps"])
    n = len(gallery["images"])
    if n == 0:
        return None
    human = bool(torch.as_tensor(gallery["has_human_map"]).any())
    cols = 1 + human + len(groups)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False)
    for i in range(n):
        img = gallery["images"][i].permute(1, 2, 0).clamp(0, 1).numpy()
        label = gallery["labels"][i]
        name = gallery["classes"][label] if 0 <= label < len(gallery["classes"]) else "image"
        panels: list[tuple[str, Any, str | None]] = [
            (name + (" + boxes" if len(gallery["boxes"][i]) else ""), img, None)
        ]
        if human:
            panels.append(("human salience", gallery["human_maps"][i].numpy(), "inferno"))
        panels += [
            (g, gallery["maps"][g][i].clamp(min=0).numpy(), "inferno") for g in groups if i < len(gallery["maps"][g])
        ]
        for j, (title, data, cmap) in enumerate(panels):
            ax = axes[i, j]
            if cmap is None:
                ax.imshow(img)
                for x0, y0, x1, y1 in gallery["boxes"][i].tolist():
                    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.5))
            else:
                ax.imshow(img.mean(2), cmap="gray", vmin=0, vmax=1)
                if data.max() > 0:  # each map min-max normalised on its own; all-zero maps say so
                    ax.imshow(data / data.max(), cmap=cmap, alpha=0.65, vmin=0, vmax=1)
                else:
                    ax.text(0.5, 0.5, "all zero", transform=ax.transAxes, ha="center", color="w", fontsize=8)
            if i == 0 or j == 0:
                ax.set_title(title, fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    return _png(fig)


def fig_accuracy(results: dict) -> str | None:
    groups = _groups(results)
    keys = [k for k in results["accuracy_keys"] if not k.endswith("auc")]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(keys) + 2), 3.2))
    width = 0.8 / len(groups)
    for gi, g in enumerate(groups):
        s = [results["summary"][k][g] for k in keys]
        means = [v["mean"] for v in s]
        err = [0 if v["sd"] != v["sd"] else v["sd"] for v in s]
        ax.bar([k + gi * width for k in range(len(keys))], means, width, yerr=err, label=g, color=_color(results, g))
    ax.set_xticks([k + width * (len(groups) - 1) / 2 for k in range(len(keys))])
    ax.set_xticklabels([_label(k).replace(" on ", "\non ").replace("called", "\ncalled") for k in keys], fontsize=8)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.set_ylabel("rate (mean ± sd over models)")
    ax.legend(fontsize=8)
    return _png(fig)


def _has(results: dict, curve: str) -> bool:
    return all(curve in m for m in results["models"].values())


def fig_entropy(results: dict) -> str | None:
    if not _has(results, "out_of_set"):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for g in _groups(results):
        ins = [v for n in results["groups"][g] for v in results["models"][n]["out_of_set"]["entropy_in"]]
        outs = [v for n in results["groups"][g] for v in results["models"][n]["out_of_set"]["entropy_out"]]
        axes[0].hist(ins, bins=20, range=(0, 1), histtype="step", lw=1.5, color=_color(results, g), label=g)
        axes[1].hist(outs, bins=20, range=(0, 1), histtype="step", lw=1.5, color=_color(results, g), label=g)
    axes[0].set_title("in-set images", fontsize=9)
    axes[1].set_title("out-of-set images", fontsize=9)
    for ax in axes:
        ax.set_xlabel("histogram entropy (normalised)")
    axes[0].legend(fontsize=8)
    return _png(fig)


def _per_group_curve(results: dict, getter) -> dict:
    out = {}
    for g in _groups(results):
        curves = torch.tensor([getter(results["models"][n]) for n in results["groups"][g]], dtype=torch.float64)
        out[g] = curves.mean(0).tolist()
    return out


def fig_noise(results: dict) -> str | None:
    if not _has(results, "noise"):
        return None
    amounts = next(iter(results["models"].values()))["noise"]["amounts"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for g, curve in _per_group_curve(results, lambda m: m["noise"]["ssim"]).items():
        axes[0].plot(amounts, curve, "o-", color=_color(results, g), label=g)
    for g, curve in _per_group_curve(results, lambda m: m["noise"]["score_change"]).items():
        axes[1].plot(amounts, curve, "o-", color=_color(results, g), label=g)
    axes[0].set_ylabel("map SSIM to clean")
    axes[1].set_ylabel("score change")
    for ax in axes:
        ax.set_xlabel("salt-and-pepper amount")
    axes[0].legend(fontsize=8)
    return _png(fig)


def fig_transforms(results: dict) -> str | None:
    if not _has(results, "transforms"):
        return None
    names = list(next(iter(results["models"].values()))["transforms"])
    per = _per_group_curve(results, lambda m: [m["transforms"][t] for t in names])
    fig, ax = plt.subplots(figsize=(9, 2.8))
    width = 0.8 / len(per)
    for gi, (g, vals) in enumerate(per.items()):
        ax.bar([k + gi * width for k in range(len(names))], vals, width, color=_color(results, g), label=g)
    ax.set_xticks([k + width * (len(per) - 1) / 2 for k in range(len(names))])
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("SSIM of T(map(x)) vs map(T(x))")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=8, ncol=len(per), loc="upper center")
    return _png(fig)


def fig_stability(results: dict) -> str | None:
    st = {g: s for g, s in results["stability"].items() if "ssim_matrix" in s}
    if not st:
        return None
    fig, axes = plt.subplots(1, len(st), figsize=(3.2 * len(st), 2.6), squeeze=False)
    for k, (ax, (g, s)) in enumerate(zip(axes[0], st.items(), strict=True)):
        im = ax.imshow(s["ssim_matrix"], vmin=0, vmax=1, cmap="viridis")
        n = len(s["ssim_matrix"])
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{s['ssim_matrix'][i][j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(n))  # one tick per model, at the cell centres
        ax.set_yticks(range(n))
        names = [str(i + 1) for i in range(n)]
        ax.set_xticklabels(names, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("model")
        if k == 0:
            ax.set_ylabel("model")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return _png(fig)


def fig_blur(results: dict) -> str | None:
    if not _has(results, "blur"):
        return None
    groups = _groups(results)
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for k, key in enumerate(["score_change", "ssim"]):
        for gi, g in enumerate(groups):
            vals = [
                sum(results["models"][n]["blur"][mode][key] for n in results["groups"][g]) / len(results["groups"][g])
                for mode in ("nonsalient", "salient")
            ]
            axes[k].bar(
                [m + gi * 0.8 / len(groups) for m in range(2)],
                vals,
                0.8 / len(groups),
                color=_color(results, g),
                label=g,
            )
        axes[k].set_xticks([m + 0.4 - 0.4 / len(groups) for m in range(2)])
        axes[k].set_xticklabels(["blur non-salient", "blur salient"])
    axes[0].set_ylabel("score change")
    axes[1].set_ylabel("map SSIM to clean")
    axes[0].legend(fontsize=8)
    return _png(fig)


def fig_deletion(results: dict) -> str | None:
    names = [c for c in ("deletion_curve", "insertion_curve") if _has(results, c)]  # the measures selected
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 2.8), squeeze=False)
    axes = axes[0]
    for k, name in enumerate(names):
        for g, curve in _per_group_curve(results, lambda m, name=name: m[name]).items():
            axes[k].plot([i / (len(curve) - 1) for i in range(len(curve))], curve, color=_color(results, g), label=g)
        axes[k].set_title(name.split("_")[0], fontsize=9)
        axes[k].set_xlabel("fraction of pixels changed (most salient first)")
    axes[0].set_ylabel("score of the true class")
    axes[0].legend(fontsize=8)
    return _png(fig)


def fig_pareto(results: dict) -> str | None:
    if not any("pareto" in m for m in results["models"].values()):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    labelled = set()
    for m in results["models"].values():
        if "pareto" not in m:
            continue
        pts = [p for p in m["pareto"] if p["accuracy"] is not None and p["epg"] is not None]
        color = _color(results, m["group"])
        ax.plot([p["epg"] for p in pts], [p["accuracy"] for p in pts], "-", color=color, alpha=0.4, lw=0.8)
        front = [p for p in pts if p["pareto"]]
        ax.scatter(
            [p["epg"] for p in front],
            [p["accuracy"] for p in front],
            color=color,
            s=18,
            label=None if m["group"] in labelled else m["group"],
        )
        labelled.add(m["group"])
    ax.set_xlabel("validation EPG")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8, title="kept (Pareto) epochs", title_fontsize=7)
    return _png(fig)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or v != v else f"{v:.{digits}f}"


def _table(results: dict, key: str) -> str:
    groups = _groups(results)
    s = results["summary"][key]
    cells = "".join(
        f"<td>{_fmt(s[g]['mean'])}<br><small>[{_fmt(s[g]['ci_low'])}, {_fmt(s[g]['ci_high'])}] "
        f"n={s[g]['n']}</small></td>"
        for g in groups
    )
    comps = results["comparisons"].get(key, {})
    comp = "; ".join(
        f"{name}: Δ {c['diff']:+.3f}, d {c['cohens_d']:.2f}, p {c['p_value']:.3g}" for name, c in comps.items()
    )
    return f"<tr><td>{html.escape(_label(key))}</td>{cells}<td><small>{comp or '–'}</small></td></tr>"


def _provenance(results: dict) -> str:
    """Where the models and the images came from."""
    data = results["data"]
    lines = [
        f"Images: {html.escape(data['description'])}, {data['images']} images"
        + (f", classes {html.escape(', '.join(data['classes']))}" if data["classes"] else "")
        + "."
    ]
    if data["out_of_set"]:
        lines.append(f"Out-of-set images: {html.escape(data['out_of_set'])}.")
    for name, what in data["evaluate"].items():
        lines.append(f"Also evaluated on {html.escape(name)}: {html.escape(what)}.")
    ex = results["explain"]
    lines.append(
        f"Salience: {html.escape(ex['method'])} at {html.escape(str(ex['layer']))}, explaining the "
        f"{html.escape(ex['target'])} class."
    )
    items = "".join(
        f"<li><b>{html.escape(g)}</b>: "
        + "; ".join(f"{html.escape(n)} ({html.escape(results['models'][n]['source'])})" for n in names)
        + "</li>"
        for g, names in results["groups"].items()
    )
    return (
        "<p>"
        + " ".join(lines)
        + f"</p><p>Models, by group (compared with {html.escape(results['reference'])}):</p><ul>{items}</ul>"
    )


FIGURES: list[tuple[str, str, Callable[[dict, dict | None], str | None]]] = [
    (
        "Gallery",
        "Images with their boxes (green), the human salience map where the data have one, and the "
        "map of each group's first model ({method}, positive part).",
        lambda results, gallery: fig_gallery(gallery, results) if gallery else None,
    ),
    (
        "Accuracy",
        "Task metrics per group on each labelled split, and how out-of-set images are classified. "
        "Bars: mean ± sd over models.",
        lambda results, _: fig_accuracy(results),
    ),
    (
        MPRT_FIGURE,
        "Maps of the model whose layers are randomised one by one from the top (cascading, as Quantus' MPRT) "
        "compared with the original maps. A method that passes drops towards 0; one that stays high explains "
        "the input, not the model.",
        lambda results, _: fig_mprt(results, _color, _png),
    ),
    (
        "Measures by method",
        "Mean of each measure per method (bars: groups), sanity checks first.",
        lambda results, _: fig_methods(results, _label, _color, _png),
    ),
    (
        "(a) Entropy distributions",
        "Normalised histogram entropy of the salience maps of in-set (left) and out-of-set (right) images.",
        lambda results, _: fig_entropy(results),
    ),
    (
        "(b) Response to salt-and-pepper noise",
        "Similarity of maps of noisy images to the clean map, and the change of the explained class's score.",
        lambda results, _: fig_noise(results),
    ),
    (
        "(c) Transformation consistency",
        "SSIM of T(map(x)) with map(T(x)) on the valid region, per "
        "transform. 1 = the map moves exactly with the image.",
        lambda results, _: fig_transforms(results),
    ),
    (
        "(d) Stability across models",
        "Mean SSIM between the maps of the models of one group (e.g. trained with different seeds).",
        lambda results, _: fig_stability(results),
    ),
    (
        "(e) Salience-guided degradation",
        "Spatially varying blur driven by each model's own map: blurring "
        "non-salient regions should hurt little, blurring salient ones a lot.",
        lambda results, _: fig_blur(results),
    ),
    (
        "Deletion and insertion",
        "Score of the explained class as the most salient pixels are deleted (to 0) or inserted (into a blurred copy).",
        lambda results, _: fig_deletion(results),
    ),
    (
        "Training: validation accuracy vs EPG",
        "One line per training run over epochs; dots are the epochs kept on the Pareto front of (accuracy, EPG, IoU).",
        lambda results, _: fig_pareto(results),
    ),
]
"""The report's figures, in page order: title, caption (`{method}`: the explain method) and how to draw it
from the results and the gallery (None: left out, for want of data)."""


def render(results_dir: str | Path) -> Path:
    """Write `results_dir/report.html` from `results.json` and `gallery.pt`; return its path."""
    d = Path(results_dir)
    results_file = d / "results.json"
    if not results_file.is_file():
        raise FileNotFoundError(
            f"{results_file}: not found; run `salience study` (or `salience demo`) with --out {d} first"
        )
    results = json.loads(results_file.read_text())
    _MEASURE_LABELS.clear()
    _MEASURE_LABELS.update({k: v["label"] for k, v in results.get("measures", {}).items()})
    gallery_file = d / "gallery.pt"
    gallery = torch.load(gallery_file, weights_only=False) if gallery_file.is_file() else None
    method = f"{results['explain']['method']} at {results['explain']['layer']}"
    figures = [(title, caption.format(method=method), draw(results, gallery)) for title, caption, draw in FIGURES]
    out = d / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(_page(results, figures, d))
    os.replace(tmp, out)
    return out


def _meta_table(results: dict) -> str:
    """The meta-evaluation's table (`results["meta"]`, `salience.study.meta`): measures x (input, model) tests,
    IAC / IEC for noise resilience (NR) and adversary reactivity (AR) and MC, mean ± sd; empty without it."""
    meta = results.get("meta")
    if not meta:
        return ""
    threshold = meta["settings"].get("unreliable_mc", 0.5)
    scores = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC")
    head = "".join(f"<th>{k} {s.replace('_', ' ')}</th>" for k in ("input", "model") for s in scores)
    rows = ""
    for name, kinds in meta["summary"].items():
        cells = "".join(
            f"<td>{'<b>' if s == 'MC' else ''}{_fmt(kinds[k][s]['mean'], 2)}{'</b>' if s == 'MC' else ''}"
            f"<small> ± {_fmt(kinds[k][s]['std'], 2)}</small></td>"
            for k in ("input", "model")
            for s in scores
        )
        low = any(kinds[k]["MC"]["mean"] < threshold for k in ("input", "model"))
        rows += f"<tr><td>{html.escape(_label(name))}{' (not reliable)' if low else ''}</td>{cells}</tr>"
    st = meta["settings"]
    return (
        f"<h2>Meta-evaluation of the measures (MetaQuantus)</h2><p>Per measure, on {st['images']} images, "
        f"{st['iterations']} iterations of {st['perturbations']} perturbations, methods "
        f"{html.escape(', '.join(st['methods']))}: intra-consistency (IAC) and inter-consistency (IEC) under minor "
        "(noise resilience, NR: higher = the measure's values and the methods' ranking stay put) and disruptive "
        "(adversary reactivity, AR: higher = they react) perturbations of the input and of the model's weights; MC "
        f"is their mean (1 is best). Mean ± sd over models and iterations; MC below {threshold} marks a measure "
        f"not reliable for these models. See docs/meta.md.</p><table><tr><th>measure</th>{head}</tr>{rows}</table>"
    )


def _page(results: dict, figures: list[tuple[str, str, str | None]], d: Path) -> str:
    """The report's HTML: provenance, findings, the first two figures, the measures table, the tables per
    method, the other figures, and what was left out (`figures`: title, caption, PNG data URL or None)."""
    groups = _groups(results)
    ref = results["reference"]
    head = "".join(f"<th>{html.escape(g)}</th>" for g in groups)
    rows = "".join(_table(results, k) for k in ordered_keys(results, results["summary"]))
    specs = results["explain"].get("methods", [])
    sections = [
        f"<section><h2>{html.escape(t)}</h2><p>{html.escape(cap)}</p><img alt='{html.escape(t)}' src='{src}'></section>"
        for t, cap, src in figures
        if src
    ]
    left_out = [t for t, _, src in figures if not src]
    finds = "".join(f"<li>{html.escape(f)}</li>" for f in results["findings"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>salience study report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: 4px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} small {{ color: #555; }} img {{ max-width: 100%; }}
section {{ margin: 1.5em 0; }} .findings li {{ margin: 0.3em 0; }}
</style></head><body>
<h1>salience: are the models right for the right reasons?</h1>
{_provenance(results)}
<p>Study time: {results.get("seconds", 0):.0f} s.</p>
<h2>Findings</h2><ul class="findings">{finds}</ul>
{"".join(sections[:2])}
<h2>Measures per group{" (" + html.escape(specs[0]) + ")" if len(specs) > 1 else ""}</h2>
<p>Mean with seeded 95 % bootstrap CI. Per-image measures pool the images of all models of a group;
accuracies are per model (n = models). Comparisons: difference of means (group − {html.escape(ref)}),
Cohen's d, two-sided permutation p.</p>
<table><tr><th>measure</th>{head}<th>vs {html.escape(ref)}</th></tr>{rows}</table>
{methods_html(results, _label)}
{_meta_table(results)}
{"".join(sections[2:])}
<p><small>Left out, for want of data (no boxes, no out-of-set images, no probes or no training runs):
{html.escape(", ".join(left_out)) or "nothing"}. Files: results.json (every number here), per_image.csv,
stability.csv, summary.json, stores/ (the maps). Re-render with <code>salience report {html.escape(str(d))}</code>. Explore every image, model and map with
<code>salience view {html.escape(str(d))}</code>; this report, opened through it, links to its views.</small></p>
</body></html>
"""
