"""Narrative helpers of 06_compare: what is compared, and the paired results in sentences.

Sentences state differences with their CI and (Holm-adjusted) p-value and say in words whether
the CI excludes 0, so a reader does not take a difference inside the noise for a real one.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from cxr_helpers.compare.ensemble import Ensemble
from cxr_helpers.compare.runs import Comparison, RunRecord, differing_keys
from cxr_helpers.metrics import fmt

ALPHA = 0.05


def is_synthetic(runs: list[RunRecord]) -> bool:
    """True when any run trained on the toolkit's synthetic images."""
    return any(bool((r.summary or {}).get("synthetic")) or r.cfg.data.source == "synthetic" for r in runs)


def overview_markdown(cmp: Comparison) -> str:
    """What is compared: how many runs, from where, which keys vary, and the folders left out."""
    src = f"sweep `{cmp.sweep_dir}`" if cmp.sweep_dir else "the run dirs given"
    keys = differing_keys(cmp.runs)
    lines = [
        f"**{len(cmp.runs)} runs** from {src}; task **{cmp.runs[0].task}**, classes "
        f"{', '.join(cmp.runs[0].classes)}. Config keys that differ: "
        + (", ".join(f"`{k}`" for k in keys) if keys else "none (identical configs)")
        + f". Outputs go to `{cmp.out_dir}`."
    ]
    if cmp.skipped:
        lines.append(f"**Left out ({len(cmp.skipped)})**: " + "; ".join(f"`{p}`: {why}" for p, why in cmp.skipped))
    recomputed = [r.name for r in cmp.runs if (r.metrics or {}).get("recomputed")]
    if recomputed:
        lines.append("No metrics.json (03 not run) for " + ", ".join(recomputed) + ": their metrics were computed here.")
    return "\n\n".join(lines)


def _verdict(lo: Any, hi: Any, p: Any) -> str:
    if lo is None or hi is None:
        return "no interval (too few valid resamples)"
    if lo > 0 or hi < 0:
        sig = p is not None and p < ALPHA
        return "the CI excludes 0" + ("" if sig else f" but the adjusted p is not below {ALPHA}")
    return "the CI includes 0: no evidence of a difference"


def pair_sentences(pairs: pd.DataFrame) -> list[str]:
    """One sentence per compared pair from ``paired.pairs_table``."""
    out = []
    for r in pairs.to_dict("records"):
        out.append(
            f"{r['a']} vs {r['b']}: AUROC {fmt(r['auroc_a'])} vs {fmt(r['auroc_b'])}, difference "
            f"{fmt(r['diff (a - b)'])} (95% CI {fmt(r['ci_low'])} to {fmt(r['ci_high'])}), "
            f"p = {fmt(r['p (bootstrap)'])} (Holm {fmt(r['p (Holm)'])}); {_verdict(r['ci_low'], r['ci_high'], r['p (Holm)'])}."
        )
    return out


def ensemble_sentences(ensembles: list[Ensemble]) -> list[str]:
    """One sentence per seed ensemble: its test AUROC with CI and the paired difference to its best member."""
    out = []
    for e in ensembles:
        m, vs = e.metrics["macro_auroc"], e.vs_best
        out.append(
            f"Ensemble of {len(e.members)} seeds [{e.group}]: test AUROC {fmt(m.get('value'))} "
            f"(95% CI {fmt(m.get('ci_low'))}-{fmt(m.get('ci_high'))}); against its best member by validation, "
            f"{e.best_member.name} ({fmt(vs.auc_b)}), difference {fmt(vs.diff)} "
            f"(95% CI {fmt(vs.ci_low)} to {fmt(vs.ci_high)}, p = {fmt(vs.p_value)}); "
            f"{_verdict(vs.ci_low, vs.ci_high, vs.p_value)}."
        )
    return out
