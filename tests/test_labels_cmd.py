"""``cxr labels``: report CSV in, the same CSV plus one 1/0/-1/blank column per finding out."""

from __future__ import annotations

import pandas as pd
import pytest

from cxr_helpers.data.labeler import FINDINGS
from cxr_helpers.run.cli import main


@pytest.fixture()
def reports(tmp_path):
    path = tmp_path / "reports.csv"
    pd.DataFrame({
        "uid": ["a1", "a2", "a3", "a4", "a5"],
        "findings": ["Mild cardiomegaly. No pleural effusion.", "Possible left basilar atelectasis.", "",
                     "Degenerative changes of the spine.", "NA"],
        "impression": ["No acute cardiopulmonary process.", "", "Small hiatal hernia.", "", "N/A"],
        "note": ["keep me", "", "NA", "x", ""],
    }).to_csv(path, index=False)
    return path


def test_labels_csv_keeps_input_and_adds_one_column_per_finding(reports, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    assert main(["labels", str(reports), "--text-column", "findings", "--text-column", "impression",
                 "--out", str(out)]) == 0
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(got.columns) == ["uid", "findings", "impression", "note", *FINDINGS]
    assert got["note"].tolist() == ["keep me", "", "NA", "x", ""]  # input cells untouched, "NA" stays text
    row = got.set_index("uid")
    assert row.loc["a1", "Cardiomegaly"] == "1" and row.loc["a1", "Effusion"] == "0"
    assert row.loc["a1", "No Finding"] == "" and row.loc["a1", "Pneumothorax"] == ""
    assert row.loc["a2", "Atelectasis"] == "-1"
    assert row.loc["a3", "Hernia"] == "1"  # the second text column is read too
    assert row.loc["a4", "No Finding"] == "1"
    assert (row.loc["a5", list(FINDINGS)] == "").all()  # "NA" is a missing report, not a normal one
    text = capsys.readouterr().out
    assert f"labelled 5 reports from {reports} -> {out} (1 without text" in text and "uncertain" in text


def test_labels_one_line_errors_and_nothing_overwritten(reports, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    cases = [
        (["labels", str(tmp_path / "nope.csv"), "--text-column", "findings", "--out", str(out)], "nope.csv not found"),
        (["labels", str(reports), "--text-column", "report", "--out", str(out)], "no column 'report'"),
        (["labels", str(reports), "--text-column", "findings", "--out", str(reports)], "is the input file"),
        (["labels", str(reports), "--text-column", "findings", "--out", str(out), "--rules", str(tmp_path / "r.yaml")],
         "r.yaml does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()

    out.write_text("mine\n")
    assert main(["labels", str(reports), "--text-column", "findings", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    assert main(["labels", str(reports), "--text-column", "findings", "--out", str(out), "--overwrite"]) == 0
    assert "Cardiomegaly" in out.read_text()

    labelled = tmp_path / "labelled.csv"
    pd.read_csv(out, dtype=str, keep_default_na=False).to_csv(labelled, index=False)
    assert main(["labels", str(labelled), "--text-column", "findings", "--out", str(tmp_path / "again.csv")]) == 2
    assert "already has finding column(s) Atelectasis" in capsys.readouterr().err
