"""``<sweep>/index.html``: every point of a sweep with its overrides, status, validation AUROC and
headline test metric with CI, linking each run's page, the 06_compare report and the best trial.

Written from files only (``sweep.json``, each run's ``run_status.json``, ``train_summary.json``,
``metrics.json``), so any worker can rebuild it at any time.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

from cxr_helpers.evaluate.report import headline_entries, read_metrics
from cxr_helpers.paths import write_text
from cxr_helpers.run.index_pages import PAGE_CSS, read_status
from cxr_helpers.run.sweep_point import validation_auroc
from cxr_helpers.run.sweep_state import read_sweep

COMPARE_HTML = "06_compare.html"
BEST_DIR = "best"


def test_headline(run_dir: Path) -> Optional[tuple[str, dict[str, Any]]]:
    """(label, {"value", "ci_low", "ci_high"}) of the run's first headline test metric, if 03 ran."""
    metrics = read_metrics(run_dir) if (run_dir / "metrics.json").is_file() else None
    entries = headline_entries(metrics or {})
    return entries[0] if entries else None


def _fmt(entry: Optional[dict[str, Any]]) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    ci = f" ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{entry['value']:.3f}{ci}"


def _row(sweep_dir: Path, name: str, entry: dict[str, Any], href_dir: str) -> str:
    run_dir = sweep_dir / href_dir
    status = entry.get("status", "pending")
    run_status = read_status(run_dir).get("status")
    cls = {"ok": "ok", "failed": "failed"}.get(status, "notrun")
    val = validation_auroc(run_dir)
    head = test_headline(run_dir)
    link = (f"<a href='{html.escape(href_dir)}/index.html'>{html.escape(name)}</a>"
            if (run_dir / "index.html").is_file() else html.escape(name))
    err = f"<br><code>{html.escape(str(entry['error']))}</code>" if entry.get("error") else ""
    secs = f"{entry['seconds']:.0f}" if entry.get("seconds") is not None else "—"
    overrides = " ".join(f"<code>{html.escape(o)}</code>" for o in entry.get("overrides", [])) or "—"
    run_note = f" (run: {html.escape(run_status)})" if run_status and run_status not in (status, "ok") else ""
    return (f"<tr><td>{link}</td><td>{overrides}</td><td class='{cls}'>{html.escape(status)}{run_note}{err}</td>"
            f"<td>{'—' if val is None else f'{val:.4f}'}</td>"
            f"<td>{html.escape(head[0]) + ': ' + _fmt(head[1]) if head else '—'}</td><td>{secs}</td></tr>")


def write_sweep_index(sweep_dir: Path) -> Path:
    """Write ``<sweep>/index.html`` from ``sweep.json`` and the run dirs; return its path."""
    state = read_sweep(sweep_dir)
    spec = state.get("spec") or {}
    points = state.get("points") or {}
    counts: dict[str, int] = {}
    for entry in points.values():
        counts[entry.get("status", "pending")] = counts.get(entry.get("status", "pending"), 0) + 1
    title = f"cxr sweep {sweep_dir.name}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{PAGE_CSS}</style></head><body><h1>cxr sweep <code>{html.escape(sweep_dir.name)}</code></h1>",
             "<p>" + ", ".join(f"{n} {html.escape(s)}" for s, n in sorted(counts.items())) + f" of {len(points)} "
             f"{'trials' if state.get('kind') == 'search' else 'runs'}. Config <code>{html.escape(str(spec.get('config')))}"
             "</code>" + "".join(f" <code>--set {html.escape(s)}</code>" for s in spec.get("sets", [])) + "</p>"]
    if state.get("storage"):
        parts.append(f"<p>Optuna storage: <code>{html.escape(str(state['storage']))}</code></p>")
    compare = state.get("compare") or {}
    if (sweep_dir / COMPARE_HTML).is_file():
        parts.append(f"<p><b><a href='{COMPARE_HTML}'>06_compare report</a></b>: config differences, paired tests, "
                     "seed ensembles" + (f" (<span class='failed'>FAILED: {html.escape(str(compare.get('error')))}"
                                         "</span>)" if compare.get("status") == "failed" else "") + "</p>")
    elif compare.get("status"):
        parts.append(f"<p>06_compare: {html.escape(str(compare.get('status')))} "
                     f"{html.escape(str(compare.get('error') or ''))}</p>")
    ensemble = test_headline(sweep_dir)
    if ensemble:
        parts.append(f"<p>Seed ensemble with the best validation AUROC (06_compare), {html.escape(ensemble[0])}: "
                     f"{_fmt(ensemble[1])} — <a href='metrics.json'>metrics.json</a></p>")
    best = state.get("best")
    if best:
        best_head = test_headline(sweep_dir / BEST_DIR)
        link = (f"<a href='{BEST_DIR}/index.html'>{BEST_DIR}/</a>" if (sweep_dir / BEST_DIR / "index.html").is_file()
                else "not run on test yet (--test-best)")
        parts.append(f"<h2>Chosen on validation</h2><p>trial {best.get('trial')} "
                     f"<code>{html.escape(str(best.get('point')))}</code>, validation AUROC "
                     f"{best.get('val_auroc', float('nan')):.4f}; run once on test: {link}"
                     + (f" — {html.escape(best_head[0])}: {_fmt(best_head[1])}" if best_head else "") + "</p>")
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>overrides</th><th>status</th><th>val macro AUROC</th>"
                 "<th>test headline (95% CI)</th><th>seconds</th></tr>")
    parts += [_row(sweep_dir, name, entry, f"runs/{name}") for name, entry in sorted(points.items())]
    parts.append("</table><p><a href='sweep.json'>sweep.json</a> · <a href='../index.html'>all runs</a></p>"
                 "</body></html>")
    out = sweep_dir / "index.html"
    write_text(out, "\n".join(parts))
    return out
