"""Several sources in one run (``data.sources``): one label set, masked (not negative) where a source
has no label, ids and patients kept apart per source, and 03 reporting every source next to the pool.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr_helpers.config import Config, ConfigError, SourceBlockConfig, config_from_dict, load_config
from cxr_helpers.data.sources import SourceError, load_source, recipe_inputs
from cxr_helpers.data.sources.pooled import block_split
from cxr_helpers.evaluate.per_source import per_source_frame, per_source_metrics, per_source_notes
from cxr_helpers.evaluate.report import evaluate
from cxr_helpers.paths import project_root

sys.path.insert(0, str(Path(__file__).parent))
from hf_fixtures import image_label_set, report_parquet_set  # noqa: E402

pytest.importorskip("datasets")


def _blocks(tmp_path: Path) -> list[SourceBlockConfig]:
    img = SourceBlockConfig(name="images", source="hf", root=str(image_label_set(tmp_path)))
    img.hf.image_column, img.hf.label_columns, img.hf.patient_column = "image", ["Effusion", "Mass"], "patient"
    img.hf.label_map = {"-1": 1, "": 0}
    img.rename = {"Mass": "Nodule"}  # harmonised to another name: the pooled set has one Nodule column
    rep = SourceBlockConfig(name="reports", source="hf", root=str(report_parquet_set(tmp_path)))
    rep.hf.path_column, rep.hf.report_columns, rep.hf.patient_column = "image_path", ["findings", "impression"], "patient"
    return [img, rep]


def test_pooled_manifest_masks_what_a_source_cannot_have(tmp_path):
    cfg = Config()
    cfg.data.source, cfg.data.sources, cfg.data.cache_dir = "pooled", _blocks(tmp_path), str(tmp_path / "c")
    sd = load_source(cfg)
    m = sd.manifest
    assert sd.classes[:2] == ["Effusion", "Nodule"] and "Cardiomegaly" in sd.classes and len(sd.classes) == 14
    img, rep = m[m["source"] == "images"], m[m["source"] == "reports"]
    assert len(img) == 36 and len(rep) == 39
    assert img["Cardiomegaly"].isna().all() and not img["Effusion"].isna().any()  # masked, not 0
    assert not rep["Cardiomegaly"].isna().any() and (rep["Cardiomegaly"] == 1).any()
    assert img["image_id"].str.startswith("images:").all() and rep["patient_id"].str.startswith("reports:").all()
    for source, g in m.groupby("source"):
        assert g.groupby("patient_id")["split"].nunique().max() == 1, source  # patients within one split
    assert sd.leakage["status"] == "ok"
    assert any("[images] has no labels for" in n and "masked" in n for n in sd.notes)
    assert recipe_inputs(cfg) is None  # never mistaken for the default synthetic recipe


def test_pooled_config_keys_and_refusals(tmp_path):
    cfg = load_config(project_root() / "configs" / "nih_plus_reports.yaml")
    assert cfg.data.source == "pooled" and [b.name for b in cfg.data.sources] == ["nih", "reports"]
    assert cfg.data.sources[1].hf.report_columns == ["findings", "impression"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sources:\n    - source: hf\n      hf:\n        label_map: {'-1': maybe}\n")
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.hf\.label_map"):
        load_config(bad)
    block = {"source": "hf", "root": "x"}
    refused = [({"sources": []}, "data.sources is an empty list"),
               ({"source": "csv", "sources": [block]}, "data.source is 'csv' but data.sources lists blocks"),
               ({"root": "/data", "sources": [block]}, r"data\.root is set but data\.sources .*data\.sources\[i\]\.root"),
               ({"hf": {"report_columns": ["findings"]}, "sources": [block]}, r"data\.hf is set"),
               ({"csv": {"file": "a.csv"}, "sources": [block]}, r"data\.csv is set")]  # fmt: skip
    for data, words in refused:
        with pytest.raises(ConfigError, match=words):
            config_from_dict({"data": data})
    saved = config_from_dict(config_from_dict({"data": {"sources": [block]}}).to_dict())  # a run's stored config
    assert saved.data.source == "pooled"
    assert config_from_dict({"data": {"source": "csv", "sources": []}}).data.source == "csv"
    inherit = config_from_dict({"data": {"split": "random", "sources": [block, {**block, "split": "official"}]}})
    assert [block_split(inherit, b) for b in inherit.data.sources] == ["random", "official"]
    chexnet = config_from_dict({"data": {"split": "chexnet", "sources": [block, {"source": "nih_cxr14", "root": "n"}]}})
    assert [block_split(chexnet, b) for b in chexnet.data.sources] == ["official", "chexnet"]
    bad.write_text("data:\n  sources:\n    - source: nih\n")
    with pytest.raises(ConfigError, match="allowed: nih_cxr14, folder, csv, hf"):
        load_config(bad)
    cfg = Config()
    cfg.data.sources = [SourceBlockConfig(name="a", source="synthetic")]
    with pytest.raises(SourceError, match="cannot be pooled"):
        load_source(cfg)
    img, rep = _blocks(tmp_path)
    img.rename = {"Masses": "Nodule"}
    cfg.data.sources, cfg.data.cache_dir = [img], str(tmp_path / "c")
    with pytest.raises(SourceError, match=r"^data\.sources\[0\] \(images\)\.rename: \['Masses'\]"):
        load_source(cfg)
    img.rename = {"Mass": "Effusion"}  # two columns onto one class: refused, not a pandas error
    with pytest.raises(SourceError, match=r"rename: 'Effusion' and 'Mass' would both be called 'Effusion'"):
        load_source(cfg)
    img.rename, img.hf.label_map = {}, {"": 0}  # an error inside the block names the block
    with pytest.raises(SourceError, match=r"^data\.sources\[0\] \(images\): data\.hf\.label_columns: column 'Mass'"):
        load_source(cfg)


def test_per_source_metrics_equal_the_subset_evaluation_and_skip_masked_classes():
    rng = np.random.default_rng(3)
    n = 80
    Y = (rng.random((n, 2)) < 0.4).astype(float)
    P = np.clip(0.4 * Y + 0.6 * rng.random((n, 2)), 0, 1)
    src = np.array(["a"] * 50 + ["b"] * 30)
    Y[src == "b", 1] = np.nan  # source b cannot have class 1
    thr = {"x": 0.5, "y": 0.5}
    by = per_source_metrics(Y, P, src, ["x", "y"], "multilabel", thr, n_boot=40, seed=0)
    assert list(by) == ["pooled", "a", "b"]
    b = evaluate(Y[50:], P[50:], ["x", "y"], "multilabel", thr, n_boot=40, seed=0)
    assert by["b"]["macro_auroc"] == b["macro_auroc"] and by["b"]["per_class"]["y"]["auroc"] is None
    assert by["b"]["macro_auroc"]["value"] == pytest.approx(by["b"]["per_class"]["x"]["auroc"])
    assert by["pooled"]["per_class"]["y"]["n_known"] == 50
    frame = per_source_frame(by, ["x", "y"])
    assert frame.loc[frame["source"] == "b", "y"].item() == "not computable"
    assert per_source_notes(by) == ["b: not computable for y (no images with a known label); left out of its macro AUROC."]


@pytest.mark.slow
def test_nih_plus_hf_sets_through_eda_training_and_per_source_metrics(shared_data, tmp_path):
    """configs/nih_plus_reports.yaml with NIH images from the shared data, the local HF report set
    (parquet, image paths, report text) and the HF Image-column set (save_to_disk, label columns):
    01_eda, one epoch at 32 px with masked labels, then 03 with per-source metrics next to the pool."""
    from cxr_helpers.run import runner

    raw = yaml.safe_load((project_root() / "configs" / "nih_plus_reports.yaml").read_text())
    nih, rep = raw["data"]["sources"]
    nih["root"], nih["max_images"] = str(shared_data / "nih_cxr14"), 12
    rep["root"] = str(report_parquet_set(tmp_path))
    images = {"name": "images", "source": "hf", "root": str(image_label_set(tmp_path)),
              "hf": {"image_column": "image", "label_columns": ["Effusion", "Mass"], "patient_column": "patient",
                     "label_map": {"-1": "uncertain", "": "masked"}}}  # fmt: skip
    raw["data"]["sources"].append(images)
    raw["data"].update(image_size=32, cache_dir=str(tmp_path / "cache"),
                       classes=["Atelectasis", "Cardiomegaly", "Effusion", "Mass", "Pneumothorax"])
    raw["train"].update(epochs=1, batch_size=16, device="cpu", amp="off", threads=1)
    raw["eval"] = {"n_bootstrap": 50, "robustness": False, "tta": [], "gallery_size": 1}
    raw["tracking"] = {"tensorboard": False}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.run(str(path), only="01,02,03", out=str(tmp_path / "run"), progress=False, log=lambda *_: None)
    assert result.ok, f"{result.failed_notebook}: {result.error}"
    eda = json.loads((result.run_dir / "eda_summary.json").read_text())
    assert eda["n_skipped"] == 1 and eda["n_missing"] >= 1  # the corrupt Image bytes; the absent path
    assert all(v >= 0 for v in eda["class_counts"].values())  # masked labels are not counted (never -2**63)
    val = pd.read_csv(result.run_dir / "predictions" / "val.csv")
    from_images = val["image_id"].str.startswith("images:")
    assert from_images.any() and val.loc[from_images, "y_Cardiomegaly"].isna().all()  # masked: blank, not 0
    assert val.loc[~from_images, "y_Cardiomegaly"].notna().all()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    per = metrics["per_source"]
    assert list(per) == ["pooled", "images", "nih", "reports"]
    assert sum(per[s]["n_images"] for s in ("images", "nih", "reports")) == per["pooled"]["n_images"]
    assert per["images"]["per_class"]["Cardiomegaly"]["auroc"] is None  # not computable there
    html = (result.run_dir / "reports" / "03_error_analysis.html").read_text()
    assert "Does it work on every source?" in html and "not computable" in html
