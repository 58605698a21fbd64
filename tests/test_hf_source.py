"""``data.source: hf``: small local Hugging Face datasets built offline, through the adapter and the
prepared cache; hub failures in one line. (Both sets also go through 01_eda, a one-epoch training
run and 03, pooled with NIH images, in tests/test_multi_source.py, to pay for one chain only.)

Layouts covered: ``save_to_disk`` with an Image column and label columns, parquet files with an
image path column and report text (labelled by the report labeler), a ReXGradient-shaped folder
(per-split JSON metadata with lists of image paths and views), and an imagefolder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_helpers.config import Config, load_config
from cxr_helpers.data.cache import prepare
from cxr_helpers.data.sources import SourceError, hf_hub, hf_staging, load_source
from cxr_helpers.data.sources import hf as hf_source

sys.path.insert(0, str(Path(__file__).parent))
from hf_fixtures import image_label_set, rexgradient_layout  # noqa: E402

pytest.importorskip("datasets")


def _image_cfg(root: Path, cache: Path) -> Config:
    cfg = Config()
    cfg.data.source, cfg.data.root, cfg.data.cache_dir, cfg.data.image_size = "hf", str(root), str(cache), 32
    h = cfg.data.hf
    h.image_column, h.label_columns, h.patient_column = "image", ["Effusion", "Mass"], "patient"
    h.label_map = {"-1": "uncertain", "": "masked"}
    return cfg


def _report_hf(cfg_hf, path_column: str, reports: list[str], patient: str) -> None:
    cfg_hf.path_column, cfg_hf.report_columns, cfg_hf.patient_column = path_column, reports, patient


def test_image_column_set_labels_masks_and_skips_the_corrupt_image(tmp_path, monkeypatch):
    cfg = _image_cfg(image_label_set(tmp_path), tmp_path / "cache")
    sd = load_source(cfg)
    m = sd.manifest
    assert sd.classes == ["Effusion", "Mass"] and set(m["split"]) == {"train", "val", "test"}
    assert (m["source"] == "hf").all() and m["patient_id"].str.contains("-p").all()
    mass = m["Mass"].to_numpy()
    n = len(m)
    assert np.isnan(mass).sum() == sum(1 for i in range(n) if i % 4 in (2, 3))  # -1 and blank masked
    assert set(np.unique(mass[~np.isnan(mass)])) == {0.0, 1.0}
    assert not np.isnan(m["Effusion"].to_numpy()).any()
    prepared = prepare(cfg, progress=False)
    assert len(prepared.manifest) == n - 1 and len(prepared.skipped) == 1  # bad bytes: skipped and listed
    assert "train/00000001" not in set(prepared.manifest["image_id"])
    assert Path(prepared.skipped["path"].iloc[0]).parent.parent.parent.name == "hf-staging"
    monkeypatch.setattr(hf_staging, "open_splits", lambda cfg: pytest.fail("staged rows should be reused"))
    cfg.data.uncertain = "positive"  # labels change without re-reading the dataset
    again = load_source(cfg).manifest["Mass"].to_numpy()
    assert np.isnan(again).sum() == sum(1 for i in range(n) if i % 4 == 3)


def test_rexgradient_layout_one_row_per_image_labels_from_reports(tmp_path):
    cfg = Config()
    cfg.data.source, cfg.data.root, cfg.data.cache_dir = "hf", str(rexgradient_layout(tmp_path)), str(tmp_path / "c")
    base = load_config(Path(__file__).parents[1] / "configs" / "rexgradient.yaml").data.hf
    cfg.data.hf = base
    base.metadata = {"train": "train_metadata.json", "valid": "valid_metadata.json", "test": "test_metadata.json"}
    sd = load_source(cfg)
    m = sd.manifest
    assert len(m) == 18 and len(sd.skipped) == 18  # 36 images, the 18 lateral views listed as skipped
    assert sd.skipped["reason"].str.contains("lateral view").all()
    assert set(m["split"]) == {"train", "val", "test"} and (m["age"] == 61).all()
    first = m[m["image_id"] == "images/train_0_0.png"].iloc[0]  # "Heart size is enlarged. / Cardiomegaly."
    assert first["Cardiomegaly"] == 1 and first["Effusion"] == 0 and "enlarged" in first["report"]
    unsure = m[m["image_id"] == "images/train_3_0.png"].iloc[0]  # "Possible left basilar atelectasis"
    assert np.isnan(unsure["Atelectasis"])  # data.uncertain: masked
    assert any("report labeler" in n or "rule-based" in n for n in sd.notes)


def test_layouts_are_recognised_and_bad_mappings_fail_in_one_line(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgf"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 50 * i, np.uint8)).save(folder / f"{i}.png")
    pd.DataFrame({"file_name": [f"{i}.png" for i in range(4)], "Effusion": [0, 1, 0, 1],
                  "patient": ["a", "a", "b", "c"]}).to_csv(folder / "metadata.csv", index=False)
    cfg = _image_cfg(folder, tmp_path / "cache")
    cfg.data.hf.label_columns = ["Effusion"]
    sd = load_source(cfg)
    assert len(sd.manifest) == 4 and sd.manifest["Effusion"].sum() == 2
    assert any("splits generated per patient" in n for n in sd.notes)  # one split: generated per patient

    cfg.data.hf.label_columns = ["Effsion"]
    with pytest.raises(SourceError) as info:
        load_source(cfg)
    assert "'Effsion'" in str(info.value) and "Effusion" in str(info.value) and "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg.data.root = str(empty)
    with pytest.raises(SourceError, match="not a Hugging Face dataset"):
        load_source(cfg)


@pytest.mark.parametrize(
    "error, words",
    [
        (ConnectionError("Couldn't reach 'org/set' on the Hub (OfflineModeIsEnabled)"), ["cannot be reached", "data.root"]),
        (RuntimeError("Dataset 'org/set' is a gated dataset on the Hub. You must be authenticated"),
         ["accept its terms", "huggingface-cli login", "HF_TOKEN"]),
    ],
)
def test_hub_failures_are_one_line_with_what_to_do(tmp_path, monkeypatch, error, words):
    import datasets

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(hf_hub, "_probe_hub", lambda name, revision: None)  # the hub answered the probe
    cfg = Config()
    cfg.data.source, cfg.data.cache_dir, cfg.data.hf.name = "hf", str(tmp_path), "org/set"
    cfg.data.hf.image_column, cfg.data.hf.label_columns = "image", ["x"]
    with pytest.raises(SourceError) as info:
        load_source(cfg)
    msg = str(info.value)
    assert "\n" not in msg and "org/set" in msg and all(w in msg for w in words)


def test_offline_hub_is_refused_in_one_line_without_waiting(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = Config()
    cfg.data.source, cfg.data.cache_dir, cfg.data.hf.name = "hf", str(tmp_path), "rajpurkarlab/ReXGradient-160K"
    with pytest.raises(SourceError) as info:
        load_source(cfg)
    assert "cannot be reached" in str(info.value) and "save_to_disk" in str(info.value)


def test_unreachable_hub_fails_at_the_probe_quietly(tmp_path, monkeypatch, caplog):
    """No network (and HF_HUB_OFFLINE unset): the one short dataset_info probe fails, load_dataset
    (which retries for half a minute and logs each retry) is never called, nothing is logged."""
    import logging

    import datasets
    import huggingface_hub

    def no_network(self, *args, **kwargs):
        logging.getLogger("huggingface_hub").warning("[Errno -2] Name or service not known thrown while requesting HEAD")
        raise OSError("ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", no_network)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not run"))
    cfg = Config()
    cfg.data.source, cfg.data.cache_dir, cfg.data.hf.name = "hf", str(tmp_path), "org/set"
    cfg.data.hf.image_column, cfg.data.hf.label_columns = "image", ["x"]
    with caplog.at_level(logging.WARNING), pytest.raises(SourceError, match="cannot be reached for org/set"):
        load_source(cfg)
    assert not [r for r in caplog.records if "thrown while requesting" in r.getMessage()]


def test_relabelling_reuses_staging_and_label_errors_name_the_users_rows(tmp_path, monkeypatch):
    """Renaming a class or changing label_map re-reads no dataset (staging is keyed on what it
    reads) but changes the source key; a bad label cell is named by the user's column and the
    dataset's split and row numbers; a split column naming no split is refused."""
    cfg = _image_cfg(image_label_set(tmp_path, n=20), tmp_path / "cache")
    first = load_source(cfg)
    cfg.data.hf.split_column = "patient"  # values like 'train-p0': none names a split
    with pytest.raises(SourceError, match=r"^data\.hf\.split_column: no value names a split \('test-p8', ") as info:
        load_source(cfg)
    assert "\n" not in str(info.value)
    cfg.data.hf.split_column = None
    monkeypatch.setattr(hf_staging, "open_splits", lambda cfg: pytest.fail("staged rows should be reused"))
    cfg.data.hf.rename = {"Mass": "Nodule"}
    renamed = load_source(cfg)
    assert renamed.classes == ["Effusion", "Nodule"] and renamed.key.split("|")[1] == first.key.split("|")[1]
    assert renamed.key != first.key
    cfg.data.hf.label_map = {"": "masked"}  # "-1" left unmapped
    with pytest.raises(SourceError) as info:
        load_source(cfg)
    msg = str(info.value)
    assert "column 'Mass'" in msg and "label::" not in msg and "line" not in msg, msg
    assert "'-1' x" in msg and "(split train, rows 2, 6, 10 (+2 more))" in msg and "data.hf.label_map" in msg, msg


def test_labeler_rules_change_report_labels_without_restaging(tmp_path, monkeypatch):
    """data.hf.labeler_rules extends the shipped rules for training labels; the source key follows
    the rules file; a missing file is one line naming the key."""
    from hf_fixtures import report_parquet_set

    cfg = Config()
    cfg.data.source, cfg.data.root, cfg.data.cache_dir = "hf", str(report_parquet_set(tmp_path, n=12)), str(tmp_path / "c")
    _report_hf(cfg.data.hf, "image_path", ["findings", "impression"], "patient")
    shipped = load_source(cfg)
    assert shipped.manifest["Hernia"].sum() == 0
    rules = tmp_path / "rules.yaml"
    rules.write_text("findings:\n  Hernia:\n    synonyms: [apical pneumothorax]\n")
    cfg.data.hf.labeler_rules = str(rules)
    monkeypatch.setattr(hf_staging, "open_splits", lambda cfg: pytest.fail("staged rows should be reused"))
    custom = load_source(cfg)
    assert custom.manifest["Hernia"].sum() > 0 and custom.key != shipped.key
    cfg.data.hf.labeler_rules = str(tmp_path / "absent.yaml")
    with pytest.raises(SourceError, match=r"^data\.hf\.labeler_rules: labeler rules: .*absent\.yaml does not exist"):
        load_source(cfg)


def test_01_labels_reports_with_the_runs_rules(tmp_path):
    """01_eda counts and explains report labels with the rules training used: report_rules(run.cfg)
    reads data.hf.labeler_rules, or a pooled run's first report block's."""
    import json

    from cxr_helpers.config import SourceBlockConfig
    from cxr_helpers.paths import project_root

    rules = tmp_path / "rules.yaml"
    rules.write_text("findings:\n  Hernia:\n    synonyms: [bochdalek sign]\n")
    cfg = Config()
    assert hf_source.report_rules(cfg) is None
    block = SourceBlockConfig(name="reports", source="hf")
    block.hf.report_columns, block.hf.labeler_rules = ["findings"], str(rules)
    cfg.data.sources = [SourceBlockConfig(name="nih", source="nih_cxr14"), block]
    got = hf_source.report_rules(cfg)
    assert got is not None and str(rules) in got.source
    cells = json.loads((project_root() / "notebooks" / "01_eda.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "report_rules(run.cfg)" in code and "report_label_counts(report_texts, rules)" in code and "rules=rules" in code
