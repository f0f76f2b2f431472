"""Group summaries of a study: per measure (or accuracy) and group, the mean with its bootstrap CI, each group
compared with the reference group, and, for several methods, each method compared with the first within a
group."""

from __future__ import annotations

import torch

from salience.measures.summary import compare_groups, summarise
from salience.study.config import StudyConfig


def summarise_groups(
    cfg: StudyConfig, ref: str, groups: dict[str, list[str]], values: dict[str, torch.Tensor]
) -> tuple[dict, dict]:
    """`(table, comparisons)` of `values` (group -> `[n]`): group -> summary, and `"<group> vs <ref>"` ->
    comparison for every group with two values or more (as the reference)."""
    table = {g: summarise(v, seed=cfg.measures.seed, n_boot=cfg.measures.n_boot) for g, v in values.items()}
    comps = {
        f"{g} vs {ref}": compare_groups(values[g], values[ref], seed=cfg.measures.seed, n_perm=cfg.measures.n_perm)
        for g in groups
        if g != ref and len(values[g]) >= 2 and len(values[ref]) >= 2
    }
    return table, comps


def column(rows: list[dict], c: str, group: str, method: str | None = None) -> torch.Tensor:
    """The finite values `[n]` (float64) of column `c` over the rows of `group` (and of `method`, when given)."""
    keep = [r for r in rows if r["group"] == group and (method is None or r["method"] == method)]
    v = torch.tensor([float(r[c]) for r in keep if r[c] != ""], dtype=torch.float64)
    return v[~torch.isnan(v)]


def measure_tables(
    cfg: StudyConfig, ref: str, groups: dict[str, list[str]], rows: list[dict], columns: list[str]
) -> tuple[dict, dict]:
    """`(table, comparisons)`, measure -> the `summarise_groups` of its per-image values (`rows` of
    `per_image.csv`, of one method), pooled over the models of each group; measures without values left out."""
    table, comparisons = {}, {}
    for c in columns:
        values = {g: column(rows, c, g) for g in groups}
        if any(len(v) for v in values.values()):
            table[c], comparisons[c] = summarise_groups(cfg, ref, groups, values)
    return table, comparisons


def accuracy_tables(
    cfg: StudyConfig, ref: str, groups: dict[str, list[str]], accuracy: dict[str, dict]
) -> tuple[dict, dict]:
    """`(table, comparisons)`, accuracy key -> the `summarise_groups` of its per-model values (keys in order:
    the data's, then each split's, then the out-of-set rate)."""
    table, comparisons = {}, {}
    for k in accuracy_keys(accuracy):
        values = {
            g: torch.tensor([accuracy[n][k] for n in names if k in accuracy[n]], dtype=torch.float64)
            for g, names in groups.items()
        }
        table[k], comparisons[k] = summarise_groups(cfg, ref, groups, values)
    return table, comparisons


def accuracy_keys(accuracy: dict[str, dict]) -> list[str]:
    """Every accuracy key of any model, in first-seen order."""
    return list(dict.fromkeys(k for a in accuracy.values() for k in a))


def within_group(
    cfg: StudyConfig, groups: dict[str, list[str]], rows: list[dict], columns: list[str], spec: str, first: str
) -> dict:
    """group -> measure -> `spec` vs the `first` method on the same images (compare_groups of per-image
    values; measures with fewer than two values left out); empty for the first method itself."""
    out: dict = {}
    if spec == first:
        return out
    for g in groups:
        out[g] = {}
        for c in columns:
            a = column(rows, c, g, spec)
            b = column(rows, c, g, first)
            if len(a) >= 2 and len(b) >= 2:
                out[g][c] = compare_groups(a, b, seed=cfg.measures.seed, n_perm=cfg.measures.n_perm)
    return out
