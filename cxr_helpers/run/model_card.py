"""The run's model card: ``<run>/model_card.md`` (and ``model_card.html``), written from the run's own files.

A reviewer asks the same questions of every imaging model: what is it for, what was it trained
and tested on, how well does it work, for whom does it work less well, how sure are the numbers,
where does it break. The card answers them from the files a run already holds: every number is
read from the file named beside it (``card_files``), grouped into sections (``card_sections``),
and the card ends with the TRIPOD+AI (Collins et al., BMJ 2024;385:e078378) and CLAIM 2024
(Tejani et al., Radiol Artif Intell 2024;6(4):e240300) items, one line each (``card_checklists``).
A run made with ``--only 01,02``, or from before a feature, gets "not answered by this run: <why>"
where a file is missing, never an error.

Entry point: :func:`write_model_card`; :func:`build_card` gives the markdown without writing.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

import mistune
import pandas as pd

from cxr_helpers.metrics import fmt_ci
from cxr_helpers.paths import write_text
from cxr_helpers.run.card_checklists import CHECKLISTS, checklist_rows
from cxr_helpers.run.card_files import NOT_ANSWERED, RunFiles, read_run_files
from cxr_helpers.run.card_sections import (
    FORMAT_ERRORS,
    RESEARCH_ONLY,
    build_sections,
    counts_text,
    md_table,
    model_text,
    names_text,
    selection_text,
)

CARD_FILE = "model_card.md"
CARD_HTML = "model_card.html"

# ---------------------------------------------------------------- the card


def summary_lines(files: RunFiles) -> list[str]:
    """The card's opening lines: run, status, data, model and the headline result, each from its file."""
    status = files.status.get("status", "unknown")
    lines = [f"- Run `{files.name}`, status **{status}** (run_status.json); written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."]
    eda, tr, m = files.eda or {}, files.train or {}, files.metrics or {}
    if eda:
        lines.append(f"- Data: {counts_text(files)} (eda_summary.json); leakage check {eda.get('leakage')}.")
    if tr:
        lines.append(f"- Model: {model_text(files)}; {selection_text(files)} (train_summary.json).")
    if m:
        lines.append(f"- Test {m.get('headline')}: **{fmt_ci(m.get('macro_auroc'))}** (metrics.json).")
    return lines


def build_card(files: RunFiles) -> str:
    """The model card's markdown for a run's files (:func:`read_run_files`): summary, sections,
    limitations and both checklists."""
    sections = build_sections(files)
    arch = (files.train or {}).get("arch") or (files.config.model.arch if files.config else "")
    what = f"deep-learning ({arch}) classifier" if arch else "classifier (architecture not recorded)"
    of = f" of {names_text(files.classes)}" if files.classes else " (classes not recorded)"
    title = f"Model card: `{files.name}`: {what}{of}"
    out = [f"# {title}", "", RESEARCH_ONLY, ""]
    if files.synthetic:
        out += ["> **Synthetic data.** This run uses generated CXR-like images, not real radiographs.", ""]
    out += ["Every statement below is read from the run file named beside it; what the files do not hold "
            f"says \"{NOT_ANSWERED}\".", ""]
    try:
        out += summary_lines(files) + [""]
    except FORMAT_ERRORS as exc:
        out += [f"- Summary: {NOT_ANSWERED}: a run file is not in the form this version reads ({exc}).", ""]
    for sec in sections.values():
        out += [f"## {sec.title}", "", f"*From: {', '.join(sec.sources)}*", ""] + sec.lines + [""]
    out += ["## Reporting checklists", "",
            "One line per item: the card section (and run file) that answers it, or why this run does not.", ""]
    for (name, cite, _), rows in zip(CHECKLISTS, checklist_rows(files, sections).values()):
        out += [f"### {name} ({cite})", ""]
        out += md_table(pd.DataFrame(rows, columns=["item", "what it asks", "where this run answers it"]))
        out.append("")
    return "\n".join(out)


_MARKDOWN = mistune.create_markdown(escape=True, plugins=["table"])

HTML_CSS = (
    "body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;"
    "padding:0 16px;color:#222}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;"
    "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}code{background:#f4f4f4;padding:1px 4px}"
    "blockquote{background:#fff6e0;border:1px solid #f0d79a;margin:8px 0;padding:4px 12px}"
)


def card_html(markdown_text: str, name: str) -> str:
    """The card as one self-contained HTML page (for the run's index page to link)."""
    body = _MARKDOWN(markdown_text)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>model card: {html.escape(name)}</title>"
            f"<style>{HTML_CSS}</style></head><body>{body}<p><a href='index.html'>the run's page</a></p></body></html>")


def write_model_card(run_dir: Path) -> Path:
    """Write ``model_card.md`` (and its HTML rendering ``model_card.html``) into ``run_dir``, each
    atomically; returns the markdown's path. Works on any run dir, complete or not."""
    files = read_run_files(run_dir)
    text = build_card(files)
    path = write_text(files.run_dir / CARD_FILE, text)
    write_text(files.run_dir / CARD_HTML, card_html(text, files.name))
    return path
