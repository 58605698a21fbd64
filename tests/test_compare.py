"""06_compare's helpers: DeLong against the plain 1988 formula, the paired bootstrap, Holm, refusals,
the config-difference table, seed ensembles, cost; and 06 itself on four tiny run dirs (papermill)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from compare_fixtures import make_run, make_sweep  # noqa: E402

from cxr_helpers.compare import ensemble as ens_mod  # noqa: E402
from cxr_helpers.compare import paired, runs  # noqa: E402
from cxr_helpers.compare.delong import delong_covariance, delong_test  # noqa: E402
from cxr_helpers.evaluate.thresholds import fit_thresholds  # noqa: E402
from cxr_helpers.metrics import auroc, headline_auroc  # noqa: E402
from cxr_helpers.paths import project_root  # noqa: E402
from cxr_helpers.train.predictions import read_predictions  # noqa: E402


def plain_delong(y, scores):
    """DeLong, DeLong & Clarke-Pearson (1988) written out: O(m*n) kernel, structural components."""
    y = np.asarray(y) > 0.5
    K = len(scores)
    aucs, v10, v01 = [], [], []
    for s in scores:
        X, Yn = s[y], s[~y]
        psi = (X[:, None] > Yn[None, :]) + 0.5 * (X[:, None] == Yn[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))  # per positive
        v01.append(psi.mean(axis=0))  # per negative
    m, n = y.sum(), (~y).sum()
    S10 = np.array([[np.sum((v10[r] - aucs[r]) * (v10[s] - aucs[s])) / (m - 1) for s in range(K)] for r in range(K)])
    S01 = np.array([[np.sum((v01[r] - aucs[r]) * (v01[s] - aucs[s])) / (n - 1) for s in range(K)] for r in range(K)])
    return np.array(aucs), S10 / m + S01 / n


def test_fast_delong_equals_the_plain_1988_formula_with_ties():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(int)
    a = np.round(y * 1.5 + rng.normal(size=300), 1)  # rounded: many ties
    b = np.round(y * 0.4 + rng.normal(size=300), 1)
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    ref_aucs, ref_cov = plain_delong(y, [a, b])
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(aucs, [auroc(y, a), auroc(y, b)], atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-10)
    res = delong_test(y, a, b)
    z = (ref_aucs[0] - ref_aucs[1]) / math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert res.z == pytest.approx(z, abs=1e-9)
    assert res.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=1e-10)
    assert res.p_value < 0.05  # a separates better than b on 300 images
    assert delong_test(y, a, a).p_value == 1.0 and delong_test(y, a, a).diff == 0.0
    assert delong_test(np.zeros(5), a[:5], b[:5]).reason == "no positives"


def _pairs_data(n_pat=120, per=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat((rng.random(n_pat) < 0.4).astype(float), per)[:, None]
    noise = np.repeat(rng.normal(size=n_pat), per)[:, None]  # images of one patient are identical
    pids = np.repeat(np.arange(n_pat), per).astype(str)
    return y, 1 / (1 + np.exp(-(1.0 * (2 * y - 1) + noise))), pids, rng


def test_paired_bootstrap_zero_for_identical_significant_for_better_and_patient_level():
    Y, P, pids, rng = _pairs_data()
    same = paired.paired_bootstrap(Y, P, P.copy(), "multilabel", pids, n_boot=300, seed=1)
    assert same.diff == 0.0 and same.ci_low <= 0.0 <= same.ci_high and same.p_value == 1.0
    assert same.unit == "patient"
    better = np.clip(Y * 0.6 + 0.2 + 0.01 * rng.random(Y.shape), 0, 1)  # near-perfect ranking
    win = paired.paired_bootstrap(Y, better, P, "multilabel", pids, n_boot=300, seed=1)
    assert win.diff > 0 and win.ci_low > 0 and win.p_value < 0.01
    # patients resampled as units: duplicated images give a wider CI than an image bootstrap that
    # (wrongly) treats both copies as independent
    worse = 1 / (1 + np.exp(-(0.5 * (2 * Y - 1) + np.repeat(rng.normal(size=len(Y) // 2), 2)[:, None])))
    by_patient = paired.paired_bootstrap(Y, P, worse, "multilabel", pids, n_boot=400, seed=2)
    by_image = paired.paired_bootstrap(Y, P, worse, "multilabel", None, n_boot=400, seed=2)
    assert by_image.unit == "image"
    assert (by_patient.ci_high - by_patient.ci_low) > 1.2 * (by_image.ci_high - by_image.ci_low)


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> kept monotone at 0.06
    assert paired.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert paired.holm([0.2, None, 0.9]) == pytest.approx([0.4, None, 0.9])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("cmp") / "sweep")


def test_refuses_runs_whose_test_sets_differ(tmp_path, sweep):
    other = runs.load_run(make_run(tmp_path / "other_data", data_seed=1))
    base = runs.load_run(sweep / "runs" / "resnet18_s0")
    with pytest.raises(runs.CompareError) as err:
        paired.compare_pair(base, other)
    msg = str(err.value)
    assert "resnet18_s0" in msg and "other_data" in msg and "test sets differ" in msg and "\n" not in msg
    relabel = tmp_path / "relabelled"
    make_run(relabel)
    csv = relabel / "predictions" / "test.csv"
    df = pd.read_csv(csv, dtype={"image_id": str, "patient_id": str})
    df.loc[0, "y_C0"] = 1 - df.loc[0, "y_C0"]
    df.to_csv(csv, index=False)
    results, refused = paired.compare_pairs([(base, runs.load_run(relabel))])
    assert results == [] and len(refused) == 1 and "other labels" in refused[0]
    seed1 = runs.load_run(make_run(tmp_path / "seed1_other_data", seed=1, data_seed=1))
    made, not_built = ens_mod.build_ensembles([base, seed1], n_boot=50)  # seeds that also drew the data
    assert made == [] and len(not_built) == 1 and "not built" in not_built[0] and "sets differ" in not_built[0]


def test_config_difference_table_seed_groups_and_reported_metrics(sweep):
    cmp = runs.open_comparison(str(sweep))
    assert [r.name for r in cmp.runs] == ["resnet18_s0", "resnet18_s1", "resnet34_s0", "resnet34_s1"]
    diffs = runs.config_differences(cmp.runs)
    assert list(diffs.columns) == ["model.arch", "seed"] and len(diffs) == 4
    assert diffs.loc["resnet34_s1"].tolist() == ["resnet34", 1]
    groups = runs.seed_groups(cmp.runs)
    assert {k: [r.name for r in v] for k, v in groups.items()} == {
        "model.arch=resnet18": ["resnet18_s0", "resnet18_s1"], "model.arch=resnet34": ["resnet34_s0", "resnet34_s1"]}
    table = runs.runs_table(cmp.runs)
    written = json.loads((sweep / "runs" / "resnet34_s0" / "metrics.json").read_text())["macro_auroc"]
    cell = table.set_index("run").loc["resnet34_s0", "Test macro AUROC"]
    assert cell == f"{written['value']:.3f} ({written['ci_low']:.3f}-{written['ci_high']:.3f})"  # read, not recomputed
    seeds = runs.seed_summary(cmp.runs).set_index("config")
    vals = [json.loads((sweep / "runs" / f"resnet18_s{s}" / "metrics.json").read_text())["macro_auroc"]["value"]
            for s in (0, 1)]
    assert seeds.loc["model.arch=resnet18", "Test macro AUROC mean ± sd"] == (
        f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}")


def test_open_comparison_lists_what_it_leaves_out(tmp_path, sweep):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((sweep / "runs" / "resnet18_s0" / "config.yaml").read_text())
    with pytest.raises(runs.CompareError, match="out_dir"):
        runs.open_comparison("", [str(sweep / "runs" / "resnet18_s0")])
    listed = f"[{sweep / 'runs' / 'resnet18_s0'}, {broken}]"  # as papermill passes -p run_dirs '[a, b]'
    cmp = runs.open_comparison("", listed, str(tmp_path / "out"))
    assert [r.name for r in cmp.runs] == ["resnet18_s0"]
    assert cmp.skipped[0][0] == str(broken) and "predictions not found" in cmp.skipped[0][1]


def test_seed_ensemble_files_thresholds_on_val_and_paired_test(sweep, tmp_path):
    cmp = runs.open_comparison(str(sweep), out_dir=str(tmp_path))
    ensembles, refused = ens_mod.build_ensembles(cmp.runs, n_boot=100)
    assert refused == [] and [e.group for e in ensembles] == ["model.arch=resnet18", "model.arch=resnet34"]
    ens_mod.write_ensembles(ensembles, tmp_path)
    e = ensembles[1]
    classes = e.members[0].classes
    members = [read_predictions(m.dir / "predictions" / "test.csv", classes) for m in e.members]
    folder = tmp_path / "ensembles" / "model.arch-resnet34"
    out = read_predictions(folder / "predictions" / "test.csv", classes)
    np.testing.assert_array_equal(out.image_id, members[0].image_id)
    np.testing.assert_allclose(out.P, (members[0].P + members[1].P) / 2, atol=1e-12)
    val = [read_predictions(m.dir / "predictions" / "val.csv", classes) for m in e.members]
    Pv = (val[0].P + val[1].P) / 2
    from cxr_helpers.evaluate.calibration import calibration_record, calibration_summary, decision_probs

    rule = calibration_record(calibration_summary(val[0].Y, Pv, out.Y, out.P, classes, "multilabel"), classes,
                              "multilabel", applied=True)
    thr, _ = fit_thresholds(val[0].Y, decision_probs(Pv, rule, "multilabel"), classes, "youden", 0.95, "multilabel")
    saved = json.loads((folder / "thresholds.json").read_text())
    assert saved["fitted_on"] == "val" and saved["thresholds"] == pytest.approx(thr)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["macro_auroc"]["value"] == pytest.approx(headline_auroc(out.Y, out.P, "multilabel"))
    assert metrics["macro_auroc"]["ci_low"] <= metrics["macro_auroc"]["value"] <= metrics["macro_auroc"]["ci_high"]
    best = max(e.members, key=runs.val_headline)
    assert metrics["ensemble"]["best_member"] == best.name
    vs = metrics["ensemble"]["vs_best_member"]
    assert vs["diff"] == pytest.approx(metrics["macro_auroc"]["value"] - runs.headline(best)["Test macro AUROC"]["value"])
    assert vs["ci_low"] <= vs["diff"] <= vs["ci_high"] and 0 <= vs["p_value"] <= 1
    assert [r["class"] for r in vs["delong"]] == classes
    top = json.loads((tmp_path / "metrics.json").read_text())  # the val-best ensemble at the top level
    assert top["ensemble"]["group"] == max(ensembles, key=lambda x: x.val_auroc).group
    assert (tmp_path / "predictions" / "val.csv").is_file() and (tmp_path / "predictions" / "test.csv").is_file()


def test_binary_softmax_runs_compare_on_the_positive_class(tmp_path):
    root = make_sweep(tmp_path / "bin", archs=("resnet18",), seeds=(0, 1), task="multiclass", n_classes=2)
    cmp = runs.open_comparison(str(root))
    assert all(r.task == "multiclass" for r in cmp.runs)
    a, b = cmp.runs
    res = paired.compare_pair(a, b, n_boot=100)
    assert res.delong["class"].tolist() == ["C1"]
    t = a.predictions("test")
    assert res.bootstrap.auc_a == pytest.approx(auroc(t.Y[:, 1], t.P[:, 1]))
    (e,), _ = ens_mod.build_ensembles(cmp.runs, n_boot=100)
    assert np.allclose(e.test.P.sum(1), 1.0)  # the mean of softmax rows is a softmax row
    assert e.metrics["multiclass"]["accuracy"]["value"] is not None


def test_cost_counts_flops_from_the_checkpoint_when_not_recorded(tmp_path):
    import torch

    from cxr_helpers.compare.cost import cost_table
    from cxr_helpers.model.backbones import count_parameters, create_model
    from cxr_helpers.model.checkpoint import ModelMeta, save_checkpoint

    d = make_run(tmp_path / "nof", arch="resnet10t", gflops=None)
    run = runs.load_run(d)
    model = create_model(run.cfg.model, num_classes=3)
    meta = ModelMeta(classes=("C0", "C1", "C2"), task="multilabel", arch="resnet10t", in_chans=1, image_size=16,
                     mean=(0.5,), std=(0.25,), config=run.cfg)
    save_checkpoint(d / "model" / "best.pt", {**meta.payload(), "model": model.state_dict()})
    row = cost_table([run]).iloc[0]
    assert row["flops from"] == "counted from model/best.pt"
    with torch.no_grad():
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            model.eval()(torch.zeros(1, 1, 16, 16))
    assert row["GFLOPs"] == pytest.approx(fc.get_total_flops() / 1e9)
    assert row["params"] == 1000  # recorded numbers win over counted ones
    assert count_parameters(model) > 1000


@pytest.mark.slow
def test_06_compare_notebook_on_a_tiny_sweep(sweep, tmp_path):
    out = tmp_path / "06.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/06_compare.ipynb", str(out), "-p", "sweep_dir", str(sweep),
         "-p", "out_dir", str(tmp_path / "cmp"), "--no-progress-bar"],
        cwd=project_root(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for name in ("resnet18_s0", "resnet34_s1", "model.arch", "Holm", "image/png"):
        assert name in text
    assert (tmp_path / "cmp" / "metrics.json").is_file()
    assert (tmp_path / "cmp" / "ensembles" / "model.arch-resnet18" / "predictions" / "test.csv").is_file()
