"""The run's front page (``<run>/index.html``) and the list of all runs (``outputs/index.html``).

Both are plain self-contained HTML written from files in the run dir (run_status.json,
metrics.json, train_summary.json, cam_metrics.json, eda_summary.json), so they can be rebuilt
at any time and never depend on a notebook's memory.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Optional

import nbformat

from cxr_helpers.data.report import leakage_index_rows, read_eda_summary
from cxr_helpers.evaluate.report import headline_entries, read_metrics
from cxr_helpers.explain.report import read_cam_metrics
from cxr_helpers.paths import outputs_root, read_json, write_json, write_text
from cxr_helpers.run.provenance import now_iso, read_provenance
from cxr_helpers.run.sweep_state import known_sweeps, read_sweep
from cxr_helpers.train.summary import read_train_summary

PAGE_CSS = """
body { font: 14px/1.45 -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px;
  color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
th { background: #f4f4f4; } .ok { color: #176b2c; font-weight: 600; } .failed { color: #b00020; font-weight: 700; }
.notrun, .running { color: #888; } .banner { padding: 10px 14px; border-radius: 6px; margin: 10px 0; }
.banner.failed { background: #fde8ea; border: 1px solid #f2b8bf; } .banner.ok { background: #e8f6ec; border: 1px solid #b9e2c4; }
.banner.synthetic { background: #fff6e0; border: 1px solid #f0d79a; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } .figs figure { margin: 0; max-width: 520px; }
.figs img { max-width: 520px; border: 1px solid #eee; } figcaption { font-size: 12px; color: #555; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; }
"""

STATUS_FILE = "run_status.json"


def save_status(run_dir: Path, status: dict[str, Any]) -> Path:
    """Write ``run_status.json`` (run name, status, per-notebook status/seconds/error), stamped ``updated``."""
    status["updated"] = now_iso()
    return write_json(Path(run_dir) / STATUS_FILE, status)


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run_status.json`` of a run dir; {} when absent or unreadable."""
    obj = read_json(Path(run_dir) / STATUS_FILE)
    return obj if isinstance(obj, dict) else {}


def mark_stopped(run_dir: Path, state: str, reason: str) -> None:
    """Mark a run that was stopped from outside (a sweep's pruner, an interrupted sweep) as ``state``
    in ``run_status.json``: its running and pending notebooks become "not run", and the run's page
    says why. A run without a status file, or whose notebooks had all ended, is left alone."""
    status = read_status(run_dir)
    unfinished = [nb for nb in status.get("notebooks", []) if nb.get("status") in ("running", "pending")]
    if not unfinished:  # it had finished (or never started): a finished run is never re-labelled
        return
    for nb in unfinished:
        nb["status"] = "not run"
    status.update(status=state, stopped=reason, ended=now_iso())
    save_status(run_dir, status)
    write_run_index(Path(run_dir))


def _fmt_ci(m: Any) -> str:
    if isinstance(m, dict) and m.get("value") is not None:
        v = m["value"]
        lo, hi = m.get("ci_low"), m.get("ci_high")
        ci = f" (95% CI {lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
        return f"{v:.3f}{ci}"
    if isinstance(m, (int, float)):
        return f"{m:.3f}"
    return "—"


STALE = " (stale: from an earlier run)"


def stale_numbers(status: dict[str, Any]) -> set[str]:
    """Notebook numbers ("01".."06") whose result files may be older than this run: every notebook
    the status lists that is not "ok" now (failed, not run, stale, pending) or that it does not
    list at all. Empty without a status (nothing to compare with)."""
    if not status.get("notebooks"):
        return set()
    ok = {nb["name"][:2] for nb in status["notebooks"] if nb.get("status") == "ok"}
    return {f"{k:02d}" for k in range(1, 7)} - ok


def headline_metrics(run_dir: Path) -> list[tuple[str, str]]:
    """(label, value) pairs for the front pages, from whichever result files exist (each read by
    the module that writes it). A value written by a notebook that is not "ok" in this run's
    status (a failed or partial re-run left it behind) ends with ``STALE``."""
    stale = stale_numbers(read_status(run_dir))

    def mark(number: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(k, v + STALE) for k, v in pairs] if number in stale else pairs

    out: list[tuple[str, str]] = []
    metrics = read_metrics(run_dir) or {}
    out += mark("03", [(label, _fmt_ci(entry)) for label, entry in headline_entries(metrics)])
    train = read_train_summary(run_dir) or {}
    if train:
        best = train.get("best_metric")
        pairs = []
        if best is not None and "macro_auroc" not in metrics:
            pairs.append((f"Val {train.get('monitor', 'metric')} (best epoch {train.get('best_epoch')})", _fmt_ci(best)))
        if train.get("seconds") is not None:
            pairs.append(("Training time", f"{train['seconds']:.0f} s on {train.get('device', '?')}"))
        out += mark("02", pairs)
    cam = read_cam_metrics(run_dir) or {}
    if cam.get("summary"):
        out += mark("04", [("Grad-CAM", str(cam["summary"]))])
    eda = read_eda_summary(run_dir) or {}
    if eda.get("n_images") is not None:
        pairs = [("Images (train/val/test)", _split_counts(eda))]
        if eda.get("n_skipped") or eda.get("n_missing"):
            pairs.append(("Skipped / missing files", f"{eda.get('n_skipped', 0)} / {eda.get('n_missing', 0)}"))
        pairs += leakage_index_rows(eda)
        out += mark("01", pairs)
    return out


def _split_counts(eda: dict) -> str:
    per = eda.get("split_sizes") or {}
    parts = [str(per.get(s, "?")) for s in ("train", "val", "test")] if per else []
    return f"{eda['n_images']}" + (f" ({' / '.join(parts)})" if parts else "")


def _first_figure(ipynb: Path, tag: str = "key-figure") -> Optional[str]:
    """base64 PNG of the notebook's key figure: a cell tagged ``key-figure``, else its first image."""
    try:
        nb = nbformat.read(str(ipynb), as_version=4)
    except (OSError, ValueError):
        return None
    first = None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png") if isinstance(out, dict) else None
            if png:
                if tag in cell.get("metadata", {}).get("tags", []):
                    return png.replace("\n", "")
                first = first or png.replace("\n", "")
    return first


def write_run_index(run_dir: Path, outputs_dir: Optional[Path] = None) -> Path:
    """Write ``run_dir/index.html`` from the status and result files; return its path.

    ``outputs_dir``: where ``outputs/index.html`` (all runs) lives, for the link back to it
    (default ``paths.outputs_root()``); a run made with ``--out`` elsewhere links there, not to a
    ``../index.html`` that does not exist."""
    status = read_status(run_dir)
    prov = read_provenance(run_dir)
    eda = read_eda_summary(run_dir) or {}
    name = status.get("name") or run_dir.name
    state = status.get("status", "unknown")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>cxr run: {html.escape(name)}</title>",
             f"<style>{PAGE_CSS}</style></head><body>", f"<h1>cxr run <code>{html.escape(name)}</code></h1>"]
    if state == "failed":
        fail = status.get("failure") or {}
        parts.append(f"<div class='banner failed'><b>FAILED</b> in {html.escape(str(fail.get('notebook')))}: "
                     f"<code>{html.escape(str(fail.get('error')))}</code></div>")
    elif state == "ok":
        parts.append("<div class='banner ok'><b>OK</b>: every notebook ran.</div>")
    else:
        why = f": {html.escape(str(status['stopped']))}" if status.get("stopped") else ""
        parts.append(f"<div class='banner'>Status: {html.escape(state)}{why}</div>")
    if eda.get("synthetic") or status.get("synthetic"):
        parts.append("<div class='banner synthetic'><b>Synthetic data.</b> This run uses the embedded synthetic "
                     "CXR-like dataset (generated images with known lesion masks), not real radiographs.</div>")
    heads = headline_metrics(run_dir)
    if heads:
        parts.append("<h2>Headline results</h2><table>")
        parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in heads]
        parts.append("</table>")
    if (run_dir / "model_card.html").is_file():
        parts.append("<p><a href='model_card.html'><b>Model card</b></a>: intended use, data, performance with "
                     "CIs, limitations, TRIPOD+AI / CLAIM 2024 items (<a href='model_card.md'>markdown</a>)</p>")
    parts.append("<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>seconds</th><th>report</th></tr>")
    figs = []
    for nb in status.get("notebooks", []):
        nb_state = nb.get("status", "not run")
        cls = {"ok": "ok", "failed": "failed"}.get(nb_state, "notrun")
        report = run_dir / "reports" / f"{nb['name']}.html"
        link = f"<a href='reports/{nb['name']}.html'>{nb['name']}.html</a>" if report.is_file() else "—"
        secs = f"{nb['seconds']:.1f}" if nb.get("seconds") is not None else "—"
        err = f"<br><code>{html.escape(nb['error'])}</code>" if nb.get("error") else ""
        if nb_state == "stale":
            err += f"<br>results from before {html.escape(str(nb.get('stale_after')))} was re-run"
        parts.append(f"<tr><td>{nb['name']}</td><td class='{cls}'>{nb_state}{err}</td><td>{secs}</td><td>{link}</td></tr>")
        png = _first_figure(run_dir / "notebooks" / f"{nb['name']}.ipynb") if nb_state == "ok" else None
        if png:
            figs.append(f"<figure><a href='reports/{nb['name']}.html'><img src='data:image/png;base64,{png}'></a>"
                        f"<figcaption>{nb['name']}</figcaption></figure>")
    parts.append("</table>")
    if figs:
        parts.append("<h2>Key figures</h2><div class='figs'>" + "".join(figs) + "</div>")
    links = [f for f in ("config.yaml", "provenance.json", "model_card.md", "metrics.json", "report.md", "history.csv",
                         "thresholds.json", "calibration.json", "cam_metrics.json") if (run_dir / f).is_file()]
    if links:
        parts.append("<h2>Files</h2><p>" + " · ".join(f"<a href='{f}'>{f}</a>" for f in links) + "</p>")
    if prov:
        git = prov.get("git") or {}
        dev = prov.get("device") or {}
        pk = prov.get("packages") or {}
        parts.append("<h2>Provenance</h2><table>"
                     f"<tr><th>commit</th><td>{html.escape(str(git.get('commit')))}"
                     f"{' (uncommitted changes)' if git.get('dirty') else ''}</td></tr>"
                     f"<tr><th>device</th><td>{html.escape(str(dev.get('device')))}</td></tr>"
                     f"<tr><th>python / torch / timm</th><td>{prov.get('python')} / {pk.get('torch')} / {pk.get('timm')}</td></tr>"
                     f"<tr><th>seed</th><td>{prov.get('seed')}</td></tr>"
                     f"<tr><th>started / ended</th><td>{prov.get('started')} / {prov.get('ended', '—')}</td></tr></table>")
    sweep = run_dir.parent.parent
    in_sweep = run_dir.parent.name == "runs" and (sweep / "sweep.json").is_file()
    all_runs = _href((outputs_dir or outputs_root()) / "index.html", run_dir)
    back = (f"<a href='../../index.html'>the sweep {html.escape(sweep.name)}</a>" if in_sweep
            else f"<a href='{html.escape(all_runs)}'>all runs</a>")
    parts.append(f"<p>{back}</p></body></html>")
    out = run_dir / "index.html"
    write_text(out, "\n".join(parts))
    return out


def _href(target: Path, page_dir: Path) -> str:
    """A link to ``target`` from a page in ``page_dir``: relative where possible, else a file URI."""
    try:
        return os.path.relpath(target, page_dir)
    except ValueError:  # pragma: no cover - another drive on Windows
        return Path(target).as_uri()


def _registry_path(outputs_dir: Path) -> Path:
    return outputs_dir / ".runs.json"


def register_run(outputs_dir: Path, run_dir: Path) -> None:
    """Remember a run dir (it may live outside ``outputs/`` with --out)."""
    outputs_dir.mkdir(parents=True, exist_ok=True)
    reg = read_json(_registry_path(outputs_dir)) or []
    path = str(run_dir.resolve())
    reg = [p for p in reg if p != path] + [path]
    write_text(_registry_path(outputs_dir), json.dumps(reg, indent=1))


def known_run_dirs(outputs_dir: Path) -> set[str]:
    """Resolved run dirs ``outputs/index.html`` lists: those under ``outputs_dir`` and those registered
    from elsewhere (``--out``), each with a ``run_status.json``."""
    if not outputs_dir.is_dir():
        return set()
    dirs = {str(p.resolve()) for p in outputs_dir.iterdir() if (p / STATUS_FILE).is_file()}
    return dirs | {p for p in (read_json(_registry_path(outputs_dir)) or []) if (Path(p) / STATUS_FILE).is_file()}


def _sweeps_table(outputs_dir: Path) -> str:
    """The sweeps section of ``outputs/index.html``: each sweep's kind, point counts by status, last
    update and link; empty when there is none."""
    rows = []
    for d in sorted(known_sweeps(outputs_dir), key=lambda p: read_sweep(p).get("updated", ""), reverse=True):
        st = read_sweep(d)
        counts: dict[str, int] = {}
        for entry in (st.get("points") or {}).values():
            counts[entry.get("status", "pending")] = counts.get(entry.get("status", "pending"), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs yet"
        href = _href(d / "index.html", outputs_dir)
        rows.append(f"<tr><td><a href='{html.escape(href)}'>{html.escape(d.name)}</a></td>"
                    f"<td>{html.escape(str(st.get('kind', '?')))}</td><td>{html.escape(summary)}</td>"
                    f"<td>{html.escape(str(st.get('updated', '')))}</td><td><code>{html.escape(str(d))}</code></td></tr>")
    if not rows:
        return ""
    return ("<h2>Sweeps</h2><table><tr><th>sweep</th><th>kind</th><th>runs</th><th>updated</th><th>folder</th></tr>"
            + "".join(rows) + "</table><h2>Runs</h2>")


def write_outputs_index(outputs_dir: Path) -> Path:
    """Write ``outputs/index.html``: every known sweep (``sweep_state.known_sweeps``), then every known
    run, newest first, with status and headline metric."""
    outputs_dir.mkdir(parents=True, exist_ok=True)
    dirs = known_run_dirs(outputs_dir)
    runs = []
    for d in dirs:
        st = read_status(d)
        runs.append((st.get("updated") or st.get("started") or "", Path(d), st))
    runs.sort(key=lambda r: r[0], reverse=True)
    rows = []
    for when, d, st in runs:
        state = st.get("status", "unknown")
        cls = {"ok": "ok", "failed": "failed"}.get(state, "notrun")
        heads = headline_metrics(d)
        head = html.escape(f"{heads[0][0]}: {heads[0][1]}") if heads else "—"
        err = ""
        if state == "failed" and st.get("failure"):
            err = f"<br><code>{html.escape(str(st['failure'].get('notebook')))}: {html.escape(str(st['failure'].get('error')))}</code>"
        href = _href(d / "index.html", outputs_dir)
        rows.append(f"<tr><td><a href='{html.escape(href)}'>{html.escape(st.get('name') or d.name)}</a></td>"
                    f"<td class='{cls}'>{state.upper() if state == 'failed' else state}{err}</td>"
                    f"<td>{html.escape(when)}</td><td>{head}</td><td><code>{html.escape(str(d))}</code></td></tr>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>cxr runs</title><style>{PAGE_CSS}</style></head>"
            "<body><h1>cxr runs</h1>" + _sweeps_table(outputs_dir) + "<table><tr><th>run</th><th>status</th>"
            "<th>updated</th><th>headline</th><th>folder</th></tr>" + "".join(rows) + "</table></body></html>")
    out = outputs_dir / "index.html"
    write_text(out, page)
    return out
