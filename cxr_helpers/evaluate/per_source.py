"""Metrics per data source next to the pooled ones, for runs that pool sources (``data.sources``).

A model trained on NIH images plus a report-labelled set can look good pooled and poor on one
source (different scanners, populations, label quality). Each source's test images are scored
with the same thresholds and decision probabilities as the pooled table (``evaluate.report.evaluate``
on the subset, patient bootstrap included), so the rows are comparable. A finding a source cannot
have is masked there (NaN truth): its AUROC on that source is reported as not computable and
left out of that source's macro mean.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.evaluate.report import evaluate
from cxr_helpers.metrics import fmt, fmt_ci

POOLED = "pooled"


def per_source_metrics(
    Y: np.ndarray,
    P: np.ndarray,
    sources: np.ndarray,
    classes: list[str],
    task: str,
    thresholds: dict[str, float],
    patient_ids: Optional[np.ndarray] = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    P_decision: Optional[np.ndarray] = None,
) -> dict[str, dict[str, Any]]:
    """``{"pooled": summary, <source>: summary}`` for test ``Y, P: (N, C)`` (Y NaN = unknown) and the
    source name of each row ``sources: (N,)``. A summary holds ``n_images, n_patients, macro_auroc``
    (value + CI), ``macro_ap`` and ``per_class: {class: {"auroc": value or None, "n_known", "n_pos",
    "note"}}``: the compact part of ``evaluate``'s dict that a metrics.json reader needs."""
    Pd = P if P_decision is None else P_decision
    sources = np.asarray(sources).astype(str)
    out: dict[str, dict[str, Any]] = {}
    for name in [POOLED, *sorted(set(sources))]:
        m = np.ones(len(sources), dtype=bool) if name == POOLED else sources == name
        pids = None if patient_ids is None else np.asarray(patient_ids)[m]
        full = evaluate(Y[m], P[m], classes, task, thresholds, pids, n_boot, seed, level, P_decision=Pd[m])
        out[name] = {
            "n_images": full["n_images"],
            "n_patients": full["n_patients"],
            "macro_auroc": full["macro_auroc"],
            "macro_ap": full["macro_ap"],
            "per_class": {
                cls: {
                    "auroc": e["auroc"]["value"],
                    "n_known": int(full["n_images"] - e.get("n_unknown", 0)),
                    "n_pos": e["n_pos"],
                    **({"note": e["note"]} if "note" in e else {}),
                }
                for cls, e in full["per_class"].items()
            },
        }
    return out


def per_source_frame(by_source: dict[str, dict[str, Any]], classes: list[str]) -> pd.DataFrame:
    """Display table: one row per source (pooled first), images, patients, headline AUROC with CI,
    macro AP, and per-class AUROC ('not computable' where the source has no known positive and
    negative for that finding)."""
    rows = []
    for name, s in by_source.items():
        row = {
            "source": name,
            "images": s["n_images"],
            "patients": s["n_patients"],
            "AUROC (95% CI)": fmt_ci(s["macro_auroc"]),
            "macro AP": fmt_ci(s["macro_ap"]),
        }
        for cls in classes:
            e = s["per_class"][cls]
            row[cls] = fmt(e["auroc"]) if e["auroc"] is not None else "not computable"
        rows.append(row)
    return pd.DataFrame(rows)


def per_source_notes(by_source: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per source: which findings it cannot score (masked or one-sided) and why."""
    out = []
    for name, s in by_source.items():
        if name == POOLED:
            continue
        missing = [f"{c} ({e['note'].split(':')[0]})" for c, e in s["per_class"].items() if e["auroc"] is None]
        if missing:
            out.append(f"{name}: not computable for {', '.join(missing)}; left out of its macro AUROC.")
    return out
