"""``cxr labels``: the 14 NIH findings + No Finding from report text, as a CSV.

    cxr labels REPORTS.csv --text-column findings --text-column impression --out LABELS.csv [--rules MY.yaml]

The output holds every input column unchanged, then one column per finding (NIH spellings, then
``No Finding``) with 1 (positive), 0 (negated), -1 (uncertain) or blank (not mentioned). Several text
columns are joined as separate paragraphs. Problems (missing file or column, a finding column already
in the input, an existing output) are one line naming the file or column, before any work is done.

Only argparse at module level: ``cxr --help`` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROGRESS_FROM = 1000  # reports; below this the labelling takes well under a second


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare this subcommand's arguments on its parser."""
    p.add_argument("reports", help="CSV file with one report per row")
    p.add_argument("--text-column", dest="text_columns", action="append", required=True, metavar="COLUMN",
                   help="column holding report text (repeatable, e.g. findings and impression; joined in order)")
    p.add_argument("--out", required=True, help="CSV to write: the input columns + one column per finding")
    p.add_argument("--rules", default=None, metavar="FILE",
                   help="YAML extending the shipped phrase lists (see README, 'Labels from report text')")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def command(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit code."""
    import os

    from cxr_helpers.data.labeler import FINDINGS, join_sections, label_counts, label_reports, load_rules
    from cxr_helpers.paths import check_writable, removing_on_failure, temp_name

    src, out = Path(args.reports), Path(args.out)
    rules = load_rules(args.rules)
    table = _read_reports(src)
    missing = [c for c in args.text_columns if c not in table.columns]
    if missing:
        raise ValueError(f"{src}: no column {missing[0]!r} (columns: {_names(table.columns)}); "
                         "give the report text column(s) with --text-column")
    clash = [c for c in FINDINGS if c in table.columns]
    if clash:
        raise ValueError(f"{src}: already has finding column(s) {_names(clash)}; rename them so the labels "
                         "do not replace them")
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the input file; write the labels to another file")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; use --overwrite to replace it or choose another --out")
    check_writable(out.parent if str(out.parent) else Path("."))

    texts = [join_sections(row) for row in table[args.text_columns].itertuples(index=False)]
    labels = label_reports(texts, rules, progress=len(table) >= PROGRESS_FROM)
    result = table.copy()
    for name in FINDINGS:
        result[name] = labels[name].map(lambda v: "" if v != v else str(int(v))).to_numpy()
    tmp = temp_name(out)
    with removing_on_failure(out, tmp):
        result.to_csv(tmp, index=False)
        os.replace(tmp, out)
    empty = int(labels.isna().all(axis=1).sum())
    print(f"labelled {len(table)} reports from {src} -> {out}" + (f" ({empty} without text, e.g. empty or NA: all blank)" if empty else ""))
    print(label_counts(labels).to_string())
    return 0


def _read_reports(src: Path):
    import pandas as pd

    if not src.is_file():
        raise FileNotFoundError(f"{src} not found (give a CSV with one report per row)")
    try:
        table = pd.read_csv(src, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{src}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{src} is empty (expected a header line and one report per row)") from None
    except pd.errors.ParserError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{src}: not a readable CSV ({first})") from None
    return table


def _names(cols) -> str:
    cols = [str(c) for c in cols]
    return ", ".join(cols[:12]) + (f", ... ({len(cols) - 12} more)" if len(cols) > 12 else "")
