"""Bootstrap: exact replicate metrics, CIs that cover and shrink, patient vs image resampling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_helpers.evaluate.bootstrap import bootstrap_samples, ci, resample_counts
from cxr_helpers.metrics import auroc


def _data(n: int, seed: int = 0, c: int = 3):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.3).astype(float)
    P = rng.random((n, c)) + 0.5 * Y
    return Y, P


@pytest.mark.parametrize("ties", [False, True])
def test_replicates_equal_sklearn_weighted(ties: bool) -> None:
    """Each replicate's AUROC/AP equals sklearn's on the same draw counts used as sample weights."""
    Y, P = _data(200, 1)
    if ties:
        P = np.round(P, 1)
    groups = np.repeat(np.arange(100), 2)
    s = bootstrap_samples(Y, P, groups, n_boot=5, seed=3, thresholds=np.full(3, 0.6))
    W = next(resample_counts(200, groups, 5, 3, 5))
    for b in range(5):
        for k in range(3):
            assert s["auroc"][b, k] == pytest.approx(
                roc_auc_score(Y[:, k], P[:, k], sample_weight=W[b]), abs=1e-9
            )
            assert s["ap"][b, k] == pytest.approx(
                average_precision_score(Y[:, k], P[:, k], sample_weight=W[b]), abs=1e-9
            )
        flat_w = np.repeat(W[b], 3)
        assert s["micro_auroc"][b] == pytest.approx(
            roc_auc_score(Y.ravel(), P.ravel(), sample_weight=flat_w), abs=1e-9
        )
        pred = P[:, 0] >= 0.6
        tp = (W[b] * (pred & (Y[:, 0] > 0))).sum()
        assert s["sensitivity"][b, 0] == pytest.approx(tp / (W[b] * Y[:, 0]).sum())


def test_cluster_resampling_keeps_patients_whole() -> None:
    groups = np.repeat(np.arange(50), 4)
    W = next(resample_counts(200, groups, 20, 0, 20))
    assert (W.reshape(20, 50, 4) == W.reshape(20, 50, 4)[:, :, :1]).all()
    assert np.allclose(W.sum(1), 200)


def test_ci_covers_point_and_shrinks_with_more_data() -> None:
    widths = []
    for n in (200, 3200):
        Y, P = _data(n, 5, 1)
        s = bootstrap_samples(Y, P, None, n_boot=300, seed=0)
        c = ci(auroc(Y[:, 0], P[:, 0]), s["auroc"][:, 0])
        assert c["ci_low"] <= c["value"] <= c["ci_high"]
        widths.append(c["ci_high"] - c["ci_low"])
    assert widths[1] < widths[0] / 2


def test_patient_bootstrap_differs_from_image_bootstrap() -> None:
    """With 8 near-identical images per patient, image resampling pretends there is 8x the data."""
    rng = np.random.default_rng(7)
    n_pat, rep = 60, 8
    y_pat = (rng.random(n_pat) < 0.4).astype(float)
    s_pat = rng.random(n_pat) + 0.4 * y_pat
    Y = np.repeat(y_pat, rep)[:, None]
    P = (np.repeat(s_pat, rep) + rng.normal(0, 0.01, n_pat * rep))[:, None]
    pid = np.repeat(np.arange(n_pat), rep)
    point = auroc(Y[:, 0], P[:, 0])
    w_img = ci(point, bootstrap_samples(Y, P, None, 400, 0)["auroc"][:, 0])
    w_pat = ci(point, bootstrap_samples(Y, P, pid, 400, 0)["auroc"][:, 0])
    width = lambda c: c["ci_high"] - c["ci_low"]  # noqa: E731
    assert width(w_pat) > 1.8 * width(w_img)


def test_seeded_and_undefined_replicates() -> None:
    Y, P = _data(100, 2)
    a = bootstrap_samples(Y, P, None, 50, seed=11)["auroc"]
    b = bootstrap_samples(Y, P, None, 50, seed=11)["auroc"]
    assert np.array_equal(a, b)
    Y[:, 1] = 0
    Y[0, 1] = 1  # a single positive: many replicates have none -> NaN there, dropped by ci()
    s = bootstrap_samples(Y, P, None, 200, seed=0)
    assert np.isnan(s["auroc"][:, 1]).any() and np.isfinite(s["macro_auroc"]).all()
    c = ci(auroc(Y[:, 1], P[:, 1]), s["auroc"][:, 1])
    assert c["n_valid"] < 200 and c["ci_low"] is not None
    assert ci(None, s["auroc"][:, 1], reason="no positives")["value"] is None


def test_multiclass_replicates() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, 150)
    P = rng.dirichlet(np.ones(3), 150)
    s = bootstrap_samples(np.eye(3)[t], P, None, 20, 0, multiclass=True)
    assert s["accuracy"].shape == (20,) and np.all((s["cohen_kappa"] <= 1) & (s["cohen_kappa"] >= -1))
