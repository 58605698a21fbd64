"""Agreement of the report labeler with the indexers' MeSH terms on the IU X-ray (OpenI) reports.

    python benchmarks/labeler_mesh.py                          # ../shared/data/iu_xray_reports, all 3,851 reports
    python benchmarks/labeler_mesh.py --quick                  # the first 400 reports
    python benchmarks/labeler_mesh.py --reports PATH/indiana_reports.csv --out outputs/bench/labeler_mesh.json
    python benchmarks/labeler_mesh.py --half odd                # only reports with an odd uid (held out)

The text labelled is ``findings`` + ``impression``. Reports indexed "No Indexing" are left out. Per
finding: how many reports MeSH tags with the matching term(s) (``MESH_TO_FINDING``), how many the
labeler calls positive, precision and recall of the labeler's positive against MeSH, and recall
counting uncertain as positive. MeSH is itself imperfect (indexers tag "borderline cardiomegaly" as
Cardiomegaly, chronic findings inconsistently), so this measures agreement, not accuracy.
For No Finding: MeSH ``normal`` against the labeler's No Finding = 1 (MeSH ``normal`` also excludes
granulomas, spine and devices, which are not among the 14 findings, so No Finding is the wider set).

Held-out half: reports split by ``uid`` parity. Rule changes are to be checked against the even-uid
half only (``--half even``); the odd half (``--half odd``) is then an estimate on reports nobody
tuned on. (The rules up to the review of issue 15 were written while looking at all reports, so
both halves are in-sample for them; docs/results.md gives both halves' numbers.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.data.labeler import FINDINGS, NO_FINDING, join_sections, label_reports, load_rules  # noqa: E402
from cxr_helpers.paths import shared_data_dir  # noqa: E402

# MeSH main term (before the first "/") -> NIH finding. Written down once, not tuned per report.
MESH_TO_FINDING = {
    "Pulmonary Atelectasis": "Atelectasis",
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Airspace Disease": "Consolidation",
    "Pulmonary Edema": "Edema",
    "Edema": "Edema",
    "Pulmonary Congestion": "Edema",
    "Emphysema": "Emphysema",
    "Pulmonary Emphysema": "Emphysema",
    "Pulmonary Disease, Chronic Obstructive": "Emphysema",
    "Lung, Hyperlucent": "Emphysema",
    "Pulmonary Fibrosis": "Fibrosis",
    "Fibrosis": "Fibrosis",
    "Cicatrix": "Fibrosis",
    "Hernia, Hiatal": "Hernia",
    "Hernia, Diaphragmatic": "Hernia",
    "Hernia": "Hernia",
}
# (main term, word in the qualifiers) -> finding, checked before the main-term table
MESH_QUALIFIED = {
    ("Lung", "hyperdistention"): "Emphysema",
    ("Thickening", "pleura"): "Pleural_Thickening",
    ("Cicatrix", "pleura"): "Pleural_Thickening",
}
FINDINGS_14 = [f for f in FINDINGS if f != NO_FINDING]


def mesh_findings(mesh: str) -> set[str]:
    """The NIH findings one report's MeSH string names (``"Cardiomegaly/mild;Lung/hyperdistention"``)."""
    out = set()
    for term in str(mesh or "").split(";"):
        parts = [p.strip() for p in term.split("/")]
        main, qualifiers = parts[0], [q.lower() for q in parts[1:]]
        hit = next((f for (m, q), f in MESH_QUALIFIED.items() if m == main and q in qualifiers), None)
        hit = hit or MESH_TO_FINDING.get(main)
        if hit:
            out.add(hit)
    return out


def report_texts(reports: pd.DataFrame) -> pd.Series:
    """``findings`` + ``impression`` of each report, as one text."""
    return pd.Series([join_sections(p) for p in reports[["findings", "impression"]].itertuples(index=False)],
                     index=reports.index)


def agreement(labels: pd.DataFrame, mesh: pd.Series) -> pd.DataFrame:
    """Per finding (rows, then No Finding vs MeSH ``normal``): MeSH count, labeler positives,
    both, precision, recall, and recall counting uncertain as positive."""
    rows = []
    tagged = mesh.map(mesh_findings)
    for f in FINDINGS_14:
        ref = tagged.map(lambda s, f=f: f in s).to_numpy()
        rows.append(_row(f, ref, (labels[f] == 1).to_numpy(), labels[f].isin([1, -1]).to_numpy()))
    normal = mesh.fillna("").str.strip().str.lower().eq("normal").to_numpy()
    nf = (labels[NO_FINDING] == 1).to_numpy()
    rows.append(_row("No Finding vs MeSH normal", normal, nf, nf))
    return pd.DataFrame(rows).set_index("finding")


def _row(name: str, ref, pos, pos_or_unc) -> dict:
    tp = int((ref & pos).sum())
    return {
        "finding": name,
        "mesh": int(ref.sum()),
        "labeler_positive": int(pos.sum()),
        "both": tp,
        "precision": round(tp / pos.sum(), 3) if pos.sum() else float("nan"),
        "recall": round(tp / ref.sum(), 3) if ref.sum() else float("nan"),
        "recall_with_uncertain": round(int((ref & pos_or_unc).sum()) / ref.sum(), 3) if ref.sum() else float("nan"),
    }


HALVES = ("even", "odd")


def run(reports_csv: Path, limit: int | None = None, half: str | None = None) -> tuple[pd.DataFrame, dict]:
    """The agreement table and a summary dict (reports used, seconds, rules files); ``half``
    ("even" / "odd") keeps the reports whose ``uid`` has that parity."""
    reports = pd.read_csv(reports_csv, dtype=str, keep_default_na=False)
    reports = reports[~reports["MeSH"].str.contains("No Indexing", case=False)]
    if half is not None:
        if half not in HALVES:
            raise ValueError(f"half must be one of {HALVES}, got {half!r}")
        parity = pd.to_numeric(reports["uid"], errors="coerce").fillna(0).astype(int) % 2
        reports = reports[parity == HALVES.index(half)]
    if limit:
        reports = reports.head(limit)
    rules = load_rules()
    t = time.perf_counter()
    labels = label_reports(report_texts(reports), rules)
    seconds = time.perf_counter() - t
    table = agreement(labels, reports["MeSH"].reset_index(drop=True))
    info = {"reports": len(reports), "seconds": round(seconds, 2), "rules": list(rules.source),
            "source": str(reports_csv), "half": half or "all"}
    return table, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=Path, default=shared_data_dir() / "iu_xray_reports" / "indiana_reports.csv")
    ap.add_argument("--quick", action="store_true", help="only the first 400 reports")
    ap.add_argument("--half", choices=HALVES, default=None, help="only reports with an even / odd uid")
    ap.add_argument("--out", type=Path, default=None, help="write the table and summary as JSON here")
    a = ap.parse_args(argv)
    if not a.reports.is_file():
        print(f"labeler_mesh: {a.reports} not found (the IU reports, Kaggle layout; --reports PATH)", file=sys.stderr)
        return 2
    table, info = run(a.reports, 400 if a.quick else None, a.half)
    print(f"{info['reports']} reports ({info['half']}) labelled in {info['seconds']} s")
    print(table.to_markdown() if _has_tabulate() else table.to_string())
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {**info, "table": json.loads(table.reset_index().to_json(orient="records"))}
        a.out.write_text(json.dumps(payload, indent=2))
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
