"""Seed ensembles: the mean probabilities of the runs of one config, evaluated like a run.

For every seed group with at least two runs (``compare.runs.seed_groups``) the members' raw
probabilities are averaged per image (softmax rows stay softmax rows). The ensemble is then
treated exactly as 03 treats a run, with the members' ``eval`` settings: temperature scaling
fitted on validation (applied when ``eval.calibrate``), thresholds fitted on validation by
``eval.threshold_policy`` (``evaluate.thresholds.fit_thresholds``), and the test split scored by
``evaluate.report.evaluate`` (headline AUROC with a patient-level bootstrap CI). Nothing is
fitted on test. Its *best member* is the member with the highest validation headline AUROC
(chosen on validation, not test); the ensemble is compared with it by the paired tests of
``compare.paired``.

Files (written through their owners' writers, so every reader of a run reads them):
``<out_dir>/ensembles/<group>/{predictions/val.csv, predictions/test.csv, metrics.json,
thresholds.json, calibration.json}`` for each group, and the ensemble with the best validation
AUROC also as ``<out_dir>/predictions/{val,test}.csv`` + ``<out_dir>/metrics.json``.
``metrics.json`` is 03's format plus ``"ensemble": {"group", "members", "seeds", "val_auroc",
"best_member", "best_member_val_auroc", "vs_best_member": {"diff", "ci_low", "ci_high", "p_value",
..., "delong": [per-class DeLong rows]}, "folder"}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.compare.paired import PairedBootstrap, aligned_test_sets, delong_table, paired_bootstrap
from cxr_helpers.compare.runs import CompareError, RunRecord, seed_groups, val_headline
from cxr_helpers.data.types import PreparedData
from cxr_helpers.evaluate.calibration import (
    calibration_record,
    calibration_summary,
    decision_probs,
    headline_calibration,
    save_calibration,
    write_decision_predictions,
)
from cxr_helpers.evaluate.report import METRICS_FILE, evaluate, save_metrics
from cxr_helpers.evaluate.thresholds import fit_thresholds, save_thresholds
from cxr_helpers.metrics import headline_auroc
from cxr_helpers.train.predictions import Predictions, write_predictions

MIN_MEMBERS = 2


@dataclass
class Ensemble:
    """One seed group's ensemble, evaluated: mean probabilities per split, fitted rules, metrics.

    val/test: Predictions with ``P: (N, C)`` the members' mean raw probabilities; calibration:
    03's ``calibration_summary`` of the ensemble; thresholds: class -> threshold (fitted on val).
    """

    group: str
    members: list[RunRecord]
    val: Predictions
    test: Predictions
    task: str
    calibration: dict[str, Any]
    calibrate: bool
    thresholds: dict[str, float]
    threshold_notes: dict[str, str]
    metrics: dict[str, Any]
    val_auroc: Optional[float]
    best_member: RunRecord
    best_member_val_auroc: Optional[float]
    vs_best: PairedBootstrap
    vs_best_delong: pd.DataFrame

    @property
    def name(self) -> str:
        return f"ensemble [{self.group}]"


def slug(label: str) -> str:
    """A folder name for a group label: ``model.arch=resnet18, train.lr=0.001`` -> ``model.arch-resnet18_train.lr-0.001``."""
    s = re.sub(r"\s*,\s*", "_", label.strip()).replace("=", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "ensemble"


def mean_predictions(members: list[RunRecord], split: str) -> Predictions:
    """The members' mean probabilities on ``split``, in the first member's image order; CompareError
    when their images or labels differ (one line naming the two runs)."""
    first = members[0].predictions(split)
    total = first.P.copy()
    for m in members[1:]:
        p = m.predictions(split)
        order = aligned_test_sets(first, p, members[0].name, m.name, split)
        total += p.P[order]
    return Predictions(first.image_id, first.patient_id, first.Y, total / len(members), list(first.classes))


def build_ensemble(group: str, members: list[RunRecord], n_boot: Optional[int] = None) -> Ensemble:
    """Average ``members`` (>= 2 runs of one config), fit calibration and thresholds on validation
    with the members' ``eval`` settings, and evaluate on test like 03 (bootstrap CIs)."""
    if len(members) < MIN_MEMBERS:
        raise CompareError(f"ensemble [{group}]: needs at least {MIN_MEMBERS} runs, has {len(members)}")
    ref = members[0]
    ev, classes, task = ref.cfg.eval, ref.classes, ref.task
    boot = n_boot or ev.n_bootstrap
    val, test = mean_predictions(members, "val"), mean_predictions(members, "test")
    calib = calibration_summary(val.Y, val.P, test.Y, test.P, classes, task, ev.n_bins)
    rule = calibration_record(calib, classes, task, applied=ev.calibrate)
    P_val_dec, P_test_dec = decision_probs(val.P, rule, task), decision_probs(test.P, rule, task)
    thr, notes = fit_thresholds(val.Y, P_val_dec, classes, ev.threshold_policy, ev.target_sensitivity, task,
                                ev.normal_class)
    metrics = evaluate(test.Y, test.P, classes, task, thr, test.patient_id, boot, ref.cfg.seed, ev.ci,
                       P_decision=P_test_dec, normal=ev.normal_class)
    metrics["calibration"] = {"applied": ev.calibrate, **headline_calibration(calib, ev.calibrate)}
    scored = [(val_headline(m), m) for m in members]
    best_auc, best = max(scored, key=lambda t: -np.inf if t[0] is None else t[0])
    best_test = best.predictions("test")
    order = aligned_test_sets(test, best_test, f"ensemble [{group}]", best.name)
    vs = paired_bootstrap(test.Y, test.P, best_test.P[order], task, test.patient_id, boot, ref.cfg.seed, ev.ci)
    dl = delong_table(test.Y, test.P, best_test.P[order], classes, task)
    return Ensemble(group, list(members), val, test, task, calib, ev.calibrate, thr, notes, metrics,
                    headline_auroc(val.Y, val.P, task), best, best_auc, vs, dl)


def build_ensembles(runs: list[RunRecord], n_boot: Optional[int] = None) -> tuple[list[Ensemble], list[str]]:
    """One ensemble per seed group with at least two runs, in group order, and one line per group
    that cannot be ensembled (its runs saw different validation or test images: with
    ``data.split: random``, validation carved from an official train split or synthetic data, the
    seed also draws the data unless ``data.split_seed`` / ``data.synthetic.seed`` fix it)."""
    made, refused = [], []
    for label, members in seed_groups(runs).items():
        if len(members) < MIN_MEMBERS:
            continue
        try:
            made.append(build_ensemble(label, members, n_boot))
        except CompareError as exc:
            refused.append(f"ensemble [{label}] not built: {exc}")
    return made, refused


def _ensemble_record(ens: Ensemble, folder: Path) -> dict[str, Any]:
    vs = ens.vs_best
    return {
        "group": ens.group,
        "members": [m.name for m in ens.members],
        "member_dirs": [str(m.dir) for m in ens.members],
        "seeds": [m.cfg.seed for m in ens.members],
        "combination": "mean of the members' raw probabilities",
        "val_auroc": ens.val_auroc,
        "best_member": ens.best_member.name,
        "best_member_chosen_by": "validation headline AUROC",
        "best_member_val_auroc": ens.best_member_val_auroc,
        "vs_best_member": {"diff": vs.diff, "ci_low": vs.ci_low, "ci_high": vs.ci_high, "p_value": vs.p_value,
                           "ensemble_auroc": vs.auc_a, "best_member_auroc": vs.auc_b,
                           "resampled": vs.unit, "n_valid": vs.n_valid,
                           "delong": ens.vs_best_delong.astype(object).where(ens.vs_best_delong.notna(), None)
                           .to_dict("records")},
        "folder": str(folder),
    }


def _write_predictions(path: Path, pred: Predictions, task: str) -> Path:
    manifest = pd.DataFrame({"image_id": pred.image_id, "patient_id": pred.patient_id})
    for k, c in enumerate(pred.classes):
        manifest[c] = pred.Y[:, k]
    holder = PreparedData(np.zeros((len(pred.P), 1, 1), np.uint8), manifest, list(pred.classes), task)
    return write_predictions(path, holder, np.arange(len(pred.P)), pred.P, pred.classes)


def write_ensemble(ens: Ensemble, folder: str | Path) -> list[Path]:
    """Write the ensemble as a run's evaluation files into ``folder`` (see the module docstring);
    ``p_<class>`` are the decision probabilities, ``praw_<class>`` the mean raw ones where calibrated."""
    folder = Path(folder)
    classes, ev = ens.members[0].classes, ens.members[0].cfg.eval
    ens.metrics["ensemble"] = _ensemble_record(ens, folder)
    paths = [_write_predictions(folder / "predictions" / f"{s}.csv", p, ens.task)
             for s, p in (("val", ens.val), ("test", ens.test))]
    rule = calibration_record(ens.calibration, classes, ens.task, applied=ens.calibrate)
    write_decision_predictions(folder, classes, rule)
    paths += [
        save_thresholds(folder / "thresholds.json", ens.thresholds, ev.threshold_policy, ev.target_sensitivity,
                        ens.task, ens.threshold_notes, ens.calibrate, normal=ev.normal_class),
        save_calibration(folder / "calibration.json", ens.calibration, classes, ens.task, ev.n_bins,
                         applied=ens.calibrate),
        save_metrics(folder / METRICS_FILE, ens.metrics),
    ]
    return paths


def write_ensembles(ensembles: list[Ensemble], out_dir: str | Path) -> list[Path]:
    """Each ensemble under ``<out_dir>/ensembles/<group>/``; the one with the best validation AUROC
    also as ``<out_dir>/predictions/{val,test}.csv`` + ``<out_dir>/metrics.json``. Returns the paths."""
    out = Path(out_dir)
    written: list[Path] = []
    for ens in ensembles:
        written += write_ensemble(ens, out / "ensembles" / slug(ens.group))
    if ensembles:
        best = max(ensembles, key=lambda e: -np.inf if e.val_auroc is None else e.val_auroc)
        metrics = dict(best.metrics, ensemble={**best.metrics["ensemble"],
                                               "chosen_by": "highest validation AUROC among the ensembles"})
        written += [_write_predictions(out / "predictions" / f"{s}.csv", p, best.task)
                    for s, p in (("val", best.val), ("test", best.test))]
        classes = best.members[0].classes
        write_decision_predictions(out, classes, calibration_record(best.calibration, classes, best.task,
                                                                    applied=best.calibrate))
        written.append(save_metrics(out / METRICS_FILE, metrics))
    return written


def ensembles_table(ensembles: list[Ensemble]) -> pd.DataFrame:
    """Per ensemble: members, validation AUROC, test headline with CI, and the paired difference
    against its best member (CI, bootstrap p)."""
    rows = []
    for e in ensembles:
        m, vs = e.metrics["macro_auroc"], e.vs_best
        rows.append({
            "ensemble": e.group, "members": ", ".join(x.name for x in e.members),
            "val AUROC": e.val_auroc, "test AUROC": m.get("value"), "ci_low": m.get("ci_low"),
            "ci_high": m.get("ci_high"), "best member (val)": e.best_member.name,
            "best member test AUROC": vs.auc_b, "diff vs best member": vs.diff,
            "diff ci_low": vs.ci_low, "diff ci_high": vs.ci_high, "p (bootstrap)": vs.p_value,
        })
    return pd.DataFrame(rows)
