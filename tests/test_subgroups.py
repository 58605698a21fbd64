"""Subgroup table: bands, per-level CIs, the largest gap flagged, small groups not scored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_helpers.evaluate.subgroups import (
    age_band_labels,
    gap_summary,
    prevalence_summary,
    subgroup_frame,
    subgroup_table,
)


def test_age_bands() -> None:
    bands = age_band_labels(pd.Series([5, 18, 39, 40, 79, 80, None]), [18, 40, 60, 80])
    assert list(bands[:6]) == ["<18", "18-39", "18-39", "40-59", "60-79", "80+"]
    assert pd.isna(bands[6])


def test_subgroup_table_flags_the_weak_group() -> None:
    rng = np.random.default_rng(0)
    n = 600
    view = np.where(rng.random(n) < 0.5, "AP", "PA")
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    y = (rng.random(n) < 0.3).astype(float)
    signal = np.where(view == "PA", 1.5, 0.1)  # the model is nearly blind on AP films
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
    manifest = pd.DataFrame({"sex": sex, "view": view, "age": rng.integers(20, 90, n)})
    attrs = subgroup_frame(manifest, [40, 60])
    assert list(attrs.columns) == ["sex", "age_band", "view"]
    df = subgroup_table(
        np.c_[1 - y, y],
        np.c_[1 - p, p],
        attrs,
        ["normal", "finding"],
        "multiclass",
        np.arange(n).astype(str),
        n_boot=200,
        seed=0,
    )
    flagged = df[df["largest_gap"]]
    assert len(flagged) == 1 and flagged.iloc[0]["attribute"] == "view" and flagged.iloc[0]["level"] == "AP"
    ap = df.set_index(["attribute", "level"]).loc[("view", "AP")]
    assert ap["ci_low"] <= ap["auroc"] <= ap["ci_high"]
    assert any("view (largest gap)" in s and "do not overlap" in s for s in gap_summary(df))
    assert prevalence_summary(df, ["finding"])


def test_tiny_subgroup_is_listed_not_scored() -> None:
    y = np.r_[np.zeros(20), np.ones(20)]
    attrs = pd.DataFrame({"sex": ["F"] * 35 + ["M"] * 5})
    df = subgroup_table(
        y[:, None], np.linspace(0, 1, 40)[:, None], attrs, ["A"], "multilabel", None, n_boot=50
    )
    m = df.set_index("level").loc["M"]
    assert m["auroc"] is None and "fewer than" in m["note"]
    assert df.set_index("level").loc["F", "auroc"] == pytest.approx(1.0)
