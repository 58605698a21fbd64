"""The CSV source's label cells: only 0/1 (or true/false) unless data.csv.label_map says what
another value means; absent files and lateral views are named, not silently dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_helpers.config import Config
from cxr_helpers.data.sources import SourceError, load_source


def _csv(tmp_path: Path, labels: list[str], **extra: list[str]) -> Config:
    """A CSV source of len(labels) readable PNGs, label column 'Edema' (+ extra columns)."""
    for i in range(len(labels)):
        Image.fromarray(np.full((8, 8), i * 9, np.uint8)).save(tmp_path / f"{i}.png")
    pd.DataFrame({"file": [f"{i}.png" for i in range(len(labels))], "Edema": labels, **extra}).to_csv(
        tmp_path / "t.csv", index=False
    )
    cfg = Config()
    cfg.data.source, cfg.data.root, cfg.data.split = "csv", str(tmp_path / "t.csv"), "random"
    cfg.data.val_fraction, cfg.data.test_fraction = 0.0, 0.0
    cfg.data.csv.path_column, cfg.data.csv.label_columns = "file", ["Edema"]
    return cfg


def _error(cfg: Config) -> str:
    with pytest.raises(SourceError) as info:
        load_source(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _labels(cfg: Config) -> list[int]:
    m = load_source(cfg).manifest
    return m["Edema"].to_numpy()[m["image_id"].str.removesuffix(".png").astype(int).argsort()].tolist()


def test_values_other_than_0_1_fail_naming_column_values_and_lines(tmp_path):
    cfg = _csv(tmp_path, ["1", "0", "yes", "-1", "", "2", "0.5", "-1", "1", "-1", "-1"])
    msg = _error(cfg)
    assert "column 'Edema'" in msg and "t.csv" in msg
    assert "'yes' x1 (line 4)" in msg and "'-1' x4 (lines 5, 9, 11 (+1 more))" in msg and "'' x1" in msg
    assert "'1'" not in msg.split("label_map")[0]  # valid values are not blamed
    assert "(+1 more values)" in msg  # '2' and '0.5' are five and six: counted, not dropped
    assert "data.csv.label_map" in msg


def test_every_bad_column_is_named(tmp_path):
    cfg = _csv(tmp_path, ["1", "0", "1"], Mass=["0", "x", "1"], Nodule=["?", "0", "1"])
    cfg.data.csv.label_columns = ["Edema", "Mass", "Nodule"]
    msg = _error(cfg)
    assert "column 'Mass'" in msg and "'x' x1 (line 3)" in msg and "also in 'Nodule' ('?')" in msg


def test_zero_one_true_false_and_float_spellings_are_accepted(tmp_path):
    cfg = _csv(tmp_path, ["1", "0", "true", "FALSE", "1.0", "0.0", " 1 "])
    assert _labels(cfg) == [1, 0, 1, 0, 1, 0, 1]


def test_label_map_maps_chexpert_uncertain_and_blank(tmp_path):
    cfg = _csv(tmp_path, ["1.0", "0.0", "-1.0", "", "-1", "1"])
    cfg.data.csv.label_map = {"-1": 1, "": 0}  # uncertain -> positive (U-Ones), blank -> negative
    assert _labels(cfg) == [1, 0, 1, 0, 1, 1]
    cfg.data.csv.label_map = {"-1": 0, "": 0}  # U-Zeros
    assert _labels(cfg) == [1, 0, 0, 0, 0, 1]


def test_label_map_maps_only_what_it_names(tmp_path):
    cfg = _csv(tmp_path, ["1", "0", "-1", "", "yes"])
    cfg.data.csv.label_map = {"-1": 1, "": 0}
    msg = _error(cfg)
    assert "'yes' x1 (line 6)" in msg and "'-1'" not in msg.split(";")[0]


def test_label_map_with_label_column_is_refused(tmp_path):
    cfg = _csv(tmp_path, ["a", "b"])
    cfg.data.csv.label_columns, cfg.data.csv.label_column = [], "Edema"
    cfg.data.csv.label_map = {"-1": 1}
    assert "label_map applies to data.csv.label_columns" in _error(cfg)


def test_rows_with_absent_files_are_named_with_their_lines(tmp_path):
    cfg = _csv(tmp_path, ["1", "0", "1", "0", "1", "0"])
    df = pd.read_csv(tmp_path / "t.csv", dtype=str)
    extra = pd.DataFrame({"file": [f"gone/{i}.png" for i in range(5)], "Edema": ["1"] * 5})
    pd.concat([df.iloc[:2], extra, df.iloc[2:]]).to_csv(tmp_path / "t.csv", index=False)
    sd = load_source(cfg)
    assert sd.missing == 5 and len(sd.manifest) == 6
    note = next(n for n in sd.notes if "absent" in n)
    assert note.startswith("5 rows name a file that is absent")
    assert "'gone/0.png', 'gone/1.png', 'gone/2.png'" in note and "lines 4, 5, 6 (+2 more)" in note


def test_lateral_rows_are_listed_as_skipped_unless_allowed(tmp_path):
    cfg = _csv(tmp_path, ["1", "0", "1", "0", "1"], view=["PA", "Lateral", "AP", "LL", "Frontal"])
    cfg.data.csv.view_column = "view"
    sd = load_source(cfg)
    assert sorted(sd.manifest["image_id"]) == ["0.png", "2.png", "4.png"]
    assert [Path(p).name for p in sd.skipped["path"]] == ["1.png", "3.png"]
    assert sd.skipped["reason"].str.contains("lateral view \\(view = Lateral\\)").iloc[0]
    assert sd.skipped["reason"].str.contains("data.image_checks").all()
    cfg.data.image_checks = ["modality", "body_part"]
    assert len(load_source(cfg).manifest) == 5


def test_split_column_naming_no_split_is_refused_not_replaced(tmp_path):
    """A split column whose values are all unknown would otherwise get generated splits silently."""
    cfg = _csv(tmp_path, ["1", "0", "1", "0"], fold=["fold1", "fold2", "fold1", "fold2"])
    cfg.data.split, cfg.data.csv.split_column = "official", "fold"
    msg = _error(cfg)
    assert msg.startswith("data.csv.split_column: no value names a split ('fold1', 'fold2')"), msg
