"""Findings about the explanation methods of a study: the sanity checks' verdicts."""

from __future__ import annotations

BARELY_CHANGES = 0.5
"""Mean Spearman correlation of |maps| with those of the fully randomised model (last MPRT step) at or above
which a method's maps are said to barely change when the model is randomised."""

MPRT_FIGURE = "Sanity check: model parameter randomisation"


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
