"""The report's view of the measure registry and of studies over several methods: rows ordered by family
(sanity checks first), labels and better directions from `results["measures"]` (written from
`salience.measures.MEASURES`), groups compared per method and methods compared within each group, and the
randomisation sanity check's curves (which the study's findings name too)."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt

from salience.measures.registry import FAMILIES

BARELY_CHANGES = 0.5
"""Mean Spearman correlation of |maps| with those of the fully randomised model (last MPRT step) at or above
which a method's maps are said to barely change when the model is randomised."""

MPRT_FIGURE = "Sanity check: model parameter randomisation"
"""The title of the report's figure of those curves."""

FAMILY_TITLES = {
    "sanity": "Sanity checks",
    "faithfulness": "Faithfulness",
    "axiomatic": "Axioms",
    "robustness": "Robustness",
    "complexity": "Complexity",
    "localisation": "Localisation",
    "explain_to_me": "Explain To Me",
    "stability": "Stability",
}


def ordered_keys(results: dict, summary: dict) -> list[str]:
    """The keys of `summary`: measures by family (sanity checks first, registry order within a family), then
    the rest (accuracies) in their order."""
    info = results.get("measures", {})
    measures = [k for k in summary if k in info]
    rank = {f: i for i, f in enumerate(FAMILIES)}
    measures.sort(key=lambda k: rank.get(info[k]["family"], len(rank)))
    return measures + [k for k in summary if k not in info]


def mprt_curves(results: dict) -> dict[str, dict[str, dict]]:
    """method spec -> model -> its MPRT curve (`{"layers", "similarity"}`), for the models that have one."""
    specs = results["explain"].get("methods") or [results["explain"]["method"]]
    out: dict[str, dict[str, dict]] = {}
    for spec in specs:
        for name, m in results["models"].items():
            curves = m.get("by_method", {}).get(spec, m if spec == specs[0] else {})
            if "mprt" in curves:
                out.setdefault(spec, {})[name] = curves["mprt"]
    return out


def better(results: dict, key: str) -> str | None:
    return results.get("measures", {}).get(key, {}).get("better")


def _fmt(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


def _cell(s: dict) -> str:
    return f"{_fmt(s['mean'])}<br><small>[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}] n={s['n']}</small>"


def methods_html(results: dict, label) -> str:
    """Two sections for a study over several methods (empty otherwise): the groups compared per method, and the
    methods compared within each group (the best mean per row in bold, by the measure's better direction;
    comparisons: each method vs the first, per-image values, permutation p)."""
    by = results.get("by_method")
    if not by:
        return ""
    groups = [g for g, names in results["groups"].items() if names]
    specs = list(by)
    parts = ["<h2>Groups compared, per method</h2>"]
    for spec, b in by.items():
        rows = ""
        for key in ordered_keys(results, b["summary"]):
            comps = "; ".join(
                f"{n}: Δ {c['diff']:+.3f}, p {c['p_value']:.3g}" for n, c in b["comparisons"].get(key, {}).items()
            )
            cells = "".join(f"<td>{_cell(b['summary'][key][g])}</td>" for g in groups if g in b["summary"][key])
            rows += f"<tr><td>{html.escape(label(key))}</td>{cells}<td><small>{comps or '–'}</small></td></tr>"
        head = "".join(f"<th>{html.escape(g)}</th>" for g in groups)
        parts.append(
            f"<h3>{html.escape(spec)}</h3><table><tr><th>measure</th>{head}<th>vs {html.escape(results['reference'])}"
            f"</th></tr>{rows}</table>"
        )
    parts.append(
        f"<h2>Methods compared within each group</h2><p>Bold: the best method per measure (by its better "
        f"direction). Comparisons: each method vs {html.escape(specs[0])} on the per-image values.</p>"
    )
    for g in groups:
        keys = ordered_keys(results, by[specs[0]]["summary"])
        rows = ""
        for key in keys:
            means = {s: by[s]["summary"].get(key, {}).get(g, {}).get("mean") for s in specs}
            finite = {s: v for s, v in means.items() if v is not None and v == v}
            direction = better(results, key)
            best = (
                (max if direction == "higher" else min)(finite, key=lambda s: finite[s])
                if finite and direction
                else None
            )
            cells = ""
            for s in specs:
                st = by[s]["summary"].get(key, {}).get(g)
                text = _cell(st) if st else "–"
                cells += f"<td>{'<b>' + text + '</b>' if s == best else text}</td>"
            comps = "; ".join(
                f"{s}: Δ {by[s]['within'][g][key]['diff']:+.3f}, p {by[s]['within'][g][key]['p_value']:.3g}"
                for s in specs[1:]
                if key in by[s].get("within", {}).get(g, {})
            )
            rows += f"<tr><td>{html.escape(label(key))}</td>{cells}<td><small>{comps or '–'}</small></td></tr>"
        head = "".join(f"<th>{html.escape(s)}</th>" for s in specs)
        parts.append(
            f"<h3>{html.escape(g)}</h3><table><tr><th>measure</th>{head}<th>vs {html.escape(specs[0])}</th></tr>"
            f"{rows}</table>"
        )
    return "".join(parts)


def fig_methods(results: dict, label, color, png) -> str | None:
    """Bars of each measure's mean per method, one bar per group, sanity checks first (several methods only)."""
    by = results.get("by_method")
    if not by:
        return None
    groups = [g for g, names in results["groups"].items() if names]
    specs = list(by)
    keys = [k for k in ordered_keys(results, by[specs[0]]["summary"]) if k in results.get("measures", {})]
    if not keys:
        return None
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    width = 0.8 / len(groups)
    for ax, key in zip(axes.flat, keys, strict=False):
        for gi, g in enumerate(groups):
            vals = [by[s]["summary"].get(key, {}).get(g, {}).get("mean", float("nan")) for s in specs]
            ax.bar([i + gi * width for i in range(len(specs))], vals, width, color=color(results, g), label=g)
        ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(specs))])
        ax.set_xticklabels(specs, rotation=30, ha="right", fontsize=6)
        direction = better(results, key)
        ax.set_title(label(key).split(" (")[0] + (f" ({direction} better)" if direction else ""), fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return png(fig)


def fig_mprt(results: dict, color, png) -> str | None:
    """Per method, the mean Spearman correlation of |maps| with the original as the model is randomised from the
    top down (one line per group, mean over its models); the dotted line marks `BARELY_CHANGES`."""
    curves = mprt_curves(results)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 2.8), squeeze=False)
    for ax, (spec, per_model) in zip(axes[0], curves.items(), strict=True):
        layers = next(iter(per_model.values()))["layers"]
        for g, names in results["groups"].items():
            rows = [per_model[n]["similarity"] for n in names if n in per_model]
            if rows:
                mean = [sum(col) / len(col) for col in zip(*rows, strict=True)]
                ax.plot(range(len(mean)), mean, "o-", ms=3, color=color(results, g), label=g)
        ax.axhline(BARELY_CHANGES, color="k", lw=0.5, ls=":")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=6)
        ax.set_ylim(-1, 1.05)
        ax.set_title(spec, fontsize=9)
        ax.set_xlabel("randomised down to (top first)", fontsize=7)
    axes[0, 0].set_ylabel("Spearman with original |map|")
    axes[0, 0].legend(fontsize=7)
    return png(fig)
