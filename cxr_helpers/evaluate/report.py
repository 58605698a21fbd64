"""Assemble the test-split evaluation: metrics.json, the target check, report.md and a summary.

``evaluate`` turns test truth, probabilities and validation-fitted thresholds into one nested
dict (the ``metrics.json`` format of DESIGN.md): every headline metric as
``{"value", "ci_low", "ci_high"}``, an undefined one as ``{"value": None, "reason": ...}``.

This module is the one writer (:func:`save_metrics`) and reader (:func:`read_metrics`) of
``metrics.json``::

    {"split": "test", "task", "classes", "n_images", "n_patients",
     "bootstrap": {"n", "unit": "patient"|"image", "seed", "level"}, "headline": text,
     "macro_auroc": CI, "macro_ap": CI, "micro_auroc": CI (multilabel),
     "per_class": {class: {"n_pos", "prevalence", "auroc": CI, "ap": CI, "threshold",
                           "confusion": {"tp", "fp", "tn", "fn"}, "sensitivity": CI, ... "f1": CI}},
     "decision_rule": sentence, "probabilities": {"ranking", "decisions"},
     "multilabel": {...} | "multiclass": {"accuracy": CI, "balanced_accuracy": CI, "cohen_kappa": CI,
                                          "confusion", "decision"},
     "triage"? (``eval.normal_class``, more than two classes): {"normal_class", "disease_classes",
                "any_disease": {"n_sick", "n_normal", "missed", "false_alarms", "sensitivity": CI,
                                "specificity": CI}},
     "calibration": {"applied", "ece", "brier"}, "targets": [...], "summary": [...],
     "leakage_warnings": [line, ...] (the data check's warnings; [] when none),
     "subgroups"?, "robustness"?, "tta"?}

where CI is ``{"value", "ci_low", "ci_high"}`` (``"reason"`` instead when undefined).

Decisions (confusion counts, sensitivity..., accuracy) follow ``evaluate.thresholds.decide`` on the
decision probabilities, i.e. the ``p_<class>`` columns of ``predictions/test.csv`` once 03 has
rewritten them; ranking metrics (AUROC, AP) use the raw probabilities (``praw_<class>``). These
agree for multilabel and two-class runs (temperature scaling is monotone per class there); for a
softmax over more classes one temperature can reorder one class's scores across images slightly.
:func:`headline_entries` gives the front pages' (label, CI) pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.evaluate.bootstrap import bootstrap_samples, ci, class_ci, headline_samples
from cxr_helpers.evaluate.thresholds import (
    ThresholdRecord,
    decide,
    rule_sentence,
    table_calls,
    threshold_record,
)
from cxr_helpers.metrics import (
    at_threshold,
    auroc,
    average_precision,
    binary_counts,
    fmt,
    fmt_ci,
    headline_auroc,
    known,
    macro_mean,
    multiclass_summary,
    multilabel_summary,
    rates_from_counts,
    undefined_reason,
)
from cxr_helpers.paths import read_json, write_json, write_text
from cxr_helpers.train.predictions import PredictionsError

METRICS_FILE = "metrics.json"
RATE_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")
LOWER_IS_BETTER = ("ece", "brier")


def evaluate(
    Y: np.ndarray,
    P: np.ndarray,
    classes: list[str],
    task: str,
    thresholds: dict[str, float],
    patient_ids: Optional[np.ndarray] = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    P_decision: Optional[np.ndarray] = None,
    normal: Optional[str] = None,
) -> dict[str, Any]:
    """The metrics.json dict for the test split.

    Y: (N, C) 0/1, NaN where unknown (masked: left out of that class's metrics); P: (N, C) probabilities for ranking metrics (AUROC, AP); P_decision: the
    probabilities decisions are made on (calibrated ones; default P), by the task's rule
    (``evaluate.thresholds.decide``). Bootstraps patients when a patient has several images, else images.
    normal: ``eval.normal_class``; with more than two classes the rule is triage and ``triage``
    (any disease vs normal) is added.
    """
    Pd = P if P_decision is None else P_decision
    n, c = Y.shape
    repeat = patient_ids is not None and len(np.unique(patient_ids)) < n
    groups = patient_ids if repeat else None
    thr = np.array([thresholds.get(cls, 0.5) for cls in classes])
    record = threshold_record(thr, classes, task, normal=normal)
    calls = table_calls(Pd, record)
    pred_index = decide(Pd, record).argmax(1) if task == "multiclass" else None
    S = bootstrap_samples(
        Y, P, groups, n_boot, seed, thresholds=thr, multiclass=task == "multiclass", P_decision=Pd,
        pred_index=pred_index, calls=calls,
    )
    per_class: dict[str, Any] = {}
    for k, cls in enumerate(classes):
        y = Y[:, k]
        n_known = int(known(y).sum())
        counts = binary_counts(y, calls[:, k])
        op = {**counts, **rates_from_counts(counts)}
        entry: dict[str, Any] = {
            "n_pos": int((y > 0.5).sum()),
            "prevalence": float(np.nanmean(y)) if n_known else None,
            "auroc": class_ci(auroc(y, P[:, k]), S["auroc"][:, k], y, level),
            "ap": class_ci(average_precision(y, P[:, k]), S["ap"][:, k], y, level),
            "threshold": float(thr[k]),
            "confusion": {key: op[key] for key in ("tp", "fp", "tn", "fn")},
        }
        for m in RATE_METRICS:
            entry[m] = ci(op[m], S[m][:, k], level, reason=_rate_reason(m, op))
        if n_known < n:
            entry["n_unknown"] = n - n_known
        if undefined_reason(y):
            entry["note"] = f"{undefined_reason(y)}: not computable, left out of the macro mean"
        per_class[cls] = entry
    head = headline_auroc(Y, P, task)
    binary = task == "multiclass" and c == 2
    out: dict[str, Any] = {
        "split": "test",
        "task": task,
        "classes": list(classes),
        "n_images": int(n),
        "n_patients": int(len(np.unique(patient_ids))) if patient_ids is not None else int(n),
        "bootstrap": {
            "n": int(n_boot),
            "unit": "patient" if repeat else "image",
            "seed": int(seed),
            "level": level,
        },
        "headline": f"AUROC of {classes[-1]} vs {classes[0]}"
        if binary
        else "macro AUROC (mean of per-class AUROCs)",
        "macro_auroc": ci(head, headline_samples(S, task), level, reason="no class has both outcomes"),
        "macro_ap": ci(
            macro_mean([per_class[x]["ap"]["value"] for x in classes]),
            S["macro_ap"],
            level,
            reason="no positives",
        ),
    }
    if "micro_auroc" in S:
        flat_y = Y.reshape(-1)
        out["micro_auroc"] = ci(
            auroc(flat_y, P.reshape(-1)), S["micro_auroc"], level, reason=undefined_reason(flat_y)
        )
    out["decision_rule"] = rule_sentence(record, list(classes))
    out["probabilities"] = {
        "ranking": "AUROC and AP on raw probabilities (praw_<class> in predictions/test.csv, p_<class> without it)",
        "decisions": "decisions on the probabilities in p_<class> (calibrated where 03 calibrates)",
    }
    out["per_class"] = per_class
    if task == "multilabel":
        out["multilabel"] = multilabel_summary(Y, calls.astype(int))
    else:
        mc = multiclass_summary(Y, P, pred_index)
        out["multiclass"] = {
            "accuracy": ci(mc["accuracy"], S["accuracy"], level),
            "balanced_accuracy": ci(mc["balanced_accuracy"], S["balanced_accuracy"], level),
            "cohen_kappa": ci(mc["cohen_kappa"], S["cohen_kappa"], level),
            "confusion": mc["confusion"].tolist(),
            "decision": out["decision_rule"],
        }
    if record.rule == "triage":
        out["triage"] = triage_metrics(Y, P, pred_index, record, classes, groups, n_boot, seed, level)
    return out


def triage_metrics(
    Y: np.ndarray,
    P: np.ndarray,
    pred_index: np.ndarray,
    record: ThresholdRecord,
    classes: list[str],
    groups: Optional[np.ndarray] = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The triage question on one split: how many sick images are called normal, and how many
    normal ones are flagged. Y: (N, C) one-hot (NaN rows left out); P: (N, C) probabilities
    (``1 - p_normal`` ranks "any disease"); pred_index: (N,) the triage decision's class per image.
    Sensitivity/specificity of "any disease vs normal" with bootstrap CIs (same resampling as
    :func:`evaluate`)."""
    k = int(record.normal or 0)
    ok = known(Y).all(axis=1)
    sick = np.where(ok, 1.0 - np.nan_to_num(Y[:, k]), np.nan)
    flagged = np.asarray(pred_index) != k
    counts = binary_counts(sick, flagged)
    rates = rates_from_counts(counts)
    S = bootstrap_samples(
        sick[:, None], 1.0 - np.asarray(P, float)[:, k : k + 1], groups, n_boot, seed, micro=False,
        calls=flagged[:, None],
    )
    return {
        "normal_class": classes[k],
        "disease_classes": [c for j, c in enumerate(classes) if j != k],
        "any_disease": {
            "n_sick": counts["tp"] + counts["fn"],
            "n_normal": counts["tn"] + counts["fp"],
            "missed": counts["fn"],
            "false_alarms": counts["fp"],
            "sensitivity": ci(rates["sensitivity"], S["sensitivity"][:, 0], level, reason="no sick images"),
            "specificity": ci(rates["specificity"], S["specificity"][:, 0], level, reason="no normal images"),
        },
    }


def triage_statements(
    metrics: dict[str, Any],
    Y_val: Optional[np.ndarray] = None,
    P_val: Optional[np.ndarray] = None,
    policy: Optional[str] = None,
    target_sensitivity: Optional[float] = None,
) -> list[str]:
    """Plain sentences for a triage run (``metrics["triage"]``): per disease class, the sensitivity
    its threshold reaches on validation (where it was fitted) and on test, against the target; then
    any disease vs normal on test (:func:`any_disease_sentence`). Y_val, P_val: (N, C) validation
    truth and decision probabilities; without them (``report.md``, which has only metrics.json)
    the test side only."""
    tri = metrics.get("triage")
    if not tri:
        return []
    classes = list(metrics["classes"])
    aim = policy == "sensitivity" and target_sensitivity is not None
    lines = []
    for cls in tri["disease_classes"]:
        k = classes.index(cls)
        e = metrics["per_class"][cls]
        test_sens = e["sensitivity"]
        if Y_val is None or P_val is None:
            lines.append(f"**{cls}** (flagged when p_{cls} >= {e['threshold']:.4g}): sensitivity "
                         f"{fmt_ci(test_sens)} on test.")
            continue
        val_sens = at_threshold(Y_val[:, k], P_val[:, k], e["threshold"])["sensitivity"]
        verdict = ""
        if aim:
            verdict = "; target " + fmt(target_sensitivity, 2) + ": " + ", ".join(
                f"{where} {'met' if v is not None and v >= target_sensitivity - 1e-12 else 'NOT met'}"
                for where, v in (("validation", val_sens), ("test", test_sens.get("value")))
            )
        lines.append(
            f"**{cls}** (flagged when p_{cls} >= {e['threshold']:.4g}): sensitivity {fmt(val_sens)} on "
            f"validation, where the threshold was fitted, and {fmt_ci(test_sens)} on test{verdict}."
        )
    lines.append(f"**Any disease vs {tri['normal_class']}** on test (the triage question): "
                 + any_disease_sentence(metrics))
    return lines


def any_disease_sentence(metrics: dict[str, Any]) -> str:
    """Any disease vs the normal class on test (``metrics["triage"]["any_disease"]``) in one
    sentence: sensitivity and missed sick images, specificity and flagged normal ones."""
    tri = metrics["triage"]
    a, normal = tri["any_disease"], tri["normal_class"]
    return (
        f"sensitivity {fmt_ci(a['sensitivity'])}, {a['missed']} of {a['n_sick']} sick images called "
        f"{normal} (missed); specificity {fmt_ci(a['specificity'])}, {a['false_alarms']} of "
        f"{a['n_normal']} {normal} images flagged."
    )


def _rate_reason(metric: str, op: dict[str, Any]) -> str:
    return (
        {
            "sensitivity": "no positives",
            "specificity": "no negatives",
            "ppv": "nothing called positive",
            "npv": "nothing called negative",
            "f1": "no positives and nothing called positive",
        }[metric]
        if op[metric] is None
        else ""
    )


def per_class_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """Display table: one row per class, values with CIs as text, 'undefined (reason)' where undefined."""
    rows = []
    for cls, e in metrics["per_class"].items():
        rows.append(
            {
                "class": cls,
                "n_pos": e["n_pos"],
                "prevalence": fmt(e["prevalence"]),
                "AUROC (95% CI)": fmt_ci(e["auroc"]),
                "AP (95% CI)": fmt_ci(e["ap"]),
                "threshold": fmt(e["threshold"]),
                **{m if m != "f1" else "F1": fmt_ci(e[m]) for m in RATE_METRICS},
            }
        )
    df = pd.DataFrame(rows)
    unknown = [e.get("n_unknown", 0) for e in metrics["per_class"].values()]
    if any(unknown):
        df.insert(2, "unknown labels", unknown)
    return df.rename(columns={"sensitivity": "sens", "specificity": "spec", "ppv": "PPV", "npv": "NPV"})


def lookup_metric(
    metrics: dict[str, Any], key: str, calibration: Optional[dict[str, Any]] = None
) -> Optional[dict]:
    """Find ``key`` among the metrics: top level (``macro_auroc``), ``<class>.<metric>``,
    ``multiclass.accuracy`` / ``accuracy``, or ``ece`` / ``brier`` (after calibration, mean)."""
    if key in metrics and isinstance(metrics[key], dict) and "value" in metrics[key]:
        return metrics[key]
    for section in ("multiclass", "multilabel"):
        v = metrics.get(section, {}).get(key.removeprefix(section + "."))
        if isinstance(v, dict) and "value" in v:
            return v
        if isinstance(v, (int, float)) or (
            v is None and key.removeprefix(section + ".") in metrics.get(section, {})
        ):
            return {"value": v, "ci_low": None, "ci_high": None}
    if "." in key:
        cls, m = key.split(".", 1)
        e = metrics["per_class"].get(cls, {}).get(m)
        if isinstance(e, dict) and "value" in e:
            return e
    if key in LOWER_IS_BETTER and calibration:
        return {"value": calibration.get(key), "ci_low": None, "ci_high": None}
    return None


def target_check(
    metrics: dict[str, Any], targets: dict[str, float], calibration: Optional[dict[str, Any]] = None
) -> pd.DataFrame:
    """One row per configured target: ``metric, target, value (95% CI), status, confidence``.

    status: ``met`` when the point estimate reaches the target (``>=``; ``<=`` for ece/brier),
    ``not met`` otherwise, ``undefined`` without a value. confidence says whether the whole CI
    is on the same side of the target (a point estimate above it with a CI straddling it is weak).
    """
    rows = []
    for key, target in targets.items():
        d = lookup_metric(metrics, key, calibration)
        if d is None:
            raise ValueError(
                f"eval.targets: unknown metric '{key}' (use macro_auroc, macro_ap, micro_auroc, "
                "<class>.auroc, accuracy, balanced_accuracy, cohen_kappa, ece or brier)"
            )
        v, lo, hi = d.get("value"), d.get("ci_low"), d.get("ci_high")
        lower = key in LOWER_IS_BETTER
        if v is None:
            status, conf = "undefined", d.get("reason", "")
        else:
            ok = v <= target if lower else v >= target
            status = "met" if ok else "not met"
            if lo is None:
                conf = "no CI"
            elif (hi <= target) if lower else (lo >= target):
                conf = "whole CI meets the target"
            elif (lo > target) if lower else (hi < target):
                conf = "whole CI misses the target"
            else:
                conf = "CI includes the target: not conclusive"
        rows.append(
            {
                "metric": key,
                "target": f"{'<=' if lower else '>='} {target:g}",
                "value (95% CI)": fmt_ci(d),
                "status": status,
                "confidence": conf,
            }
        )
    return pd.DataFrame(rows, columns=["metric", "target", "value (95% CI)", "status", "confidence"])


def worst_classes_summary(metrics: dict[str, Any], k: int = 3) -> list[str]:
    """Sentences on the ``k`` lowest-AUROC classes and undefined ones, for a reader in a hurry.

    Each names the class's threshold and what it misses there, so classes whose threshold decides
    nothing are left out: the negative class of a two-class run, the normal class under triage
    (whose misses are the any-disease line added last instead)."""
    pc = metrics["per_class"]
    tri = metrics.get("triage")
    if metrics["task"] == "multiclass" and len(pc) == 2:  # binary: the positive class says it all
        pc = {metrics["classes"][-1]: pc[metrics["classes"][-1]]}
    elif tri:
        pc = {c: e for c, e in pc.items() if c != tri["normal_class"]}
    scored = sorted((e["auroc"]["value"], cls) for cls, e in pc.items() if e["auroc"]["value"] is not None)
    lines = []
    for _val, cls in scored[: min(k, max(len(scored) - 1, 1))]:
        e = pc[cls]
        sens, spec = e["sensitivity"]["value"], e["specificity"]["value"]
        lines.append(
            f"{cls}: AUROC {fmt_ci(e['auroc'])} with {e['n_pos']} positives (prevalence {fmt(e['prevalence'])}); "
            f"at threshold {e['threshold']:.3f} sensitivity {fmt(sens)}, specificity {fmt(spec)}, "
            f"{e['confusion']['fn']} missed, {e['confusion']['fp']} false alarms."
        )
    for cls, e in pc.items():
        if e["auroc"]["value"] is None:
            lines.append(
                f"{cls}: AUROC undefined on test ({e['auroc'].get('reason', 'undefined')}); nothing to judge it on."
            )
    if tri:
        lines.append(f"any disease vs {tri['normal_class']} (the triage decision): {any_disease_sentence(metrics)}")
    return lines


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        out.append("| " + " | ".join("" if v is None else str(v) for v in r) + " |")
    return "\n".join(out)


def write_report_md(
    path: str | Path,
    metrics: dict[str, Any],
    targets: pd.DataFrame,
    summary: list[str],
    extra: Optional[dict[str, str]] = None,
    synthetic: bool = False,
) -> Path:
    """``report.md`` in the run dir: headline, per-class table, target check, a triage section
    (triage runs: :func:`triage_statements` on test), worst classes."""
    b = metrics["bootstrap"]
    lines = ["# Error analysis (test split)", ""]
    if synthetic:
        lines += ["> **Synthetic data**: these numbers describe generated images, not patients.", ""]
    lines += [
        f"- Task: {metrics['task']}; {metrics['n_images']} images of {metrics['n_patients']} patients.",
        f"- Headline ({metrics['headline']}): **{fmt_ci(metrics['macro_auroc'])}**",
        f"- 95% CIs: {b['n']} bootstrap resamples of {b['unit']}s (seed {b['seed']}).",
        *([f"- {metrics['decision_rule']}"] if metrics.get("decision_rule") else []),
        "",
        "## Per-class metrics",
        "",
        _md_table(per_class_frame(metrics)),
        "",
        "## Target check",
        "",
        _md_table(targets) if len(targets) else "No targets set (eval.targets in the config).",
        "",
        *(["## Triage (any disease vs normal)", "", *[f"- {s}" for s in triage_statements(metrics)], ""]
          if metrics.get("triage") else []),
        "## Worst classes",
        "",
        *[f"- {s}" for s in summary],
        "",
    ]
    for title, text in (extra or {}).items():
        lines += [f"## {title}", "", text, ""]
    return write_text(path, "\n".join(lines))


def align_rows(
    manifest: pd.DataFrame, image_ids: np.ndarray, what: str = "predictions/test.csv"
) -> np.ndarray:
    """Manifest row (= prepared image index) of each predicted image, in prediction order."""
    pos = pd.Series(np.arange(len(manifest)), index=manifest["image_id"].astype(str).to_numpy())
    ids = pd.Index(np.asarray(image_ids).astype(str))
    missing = ids[~ids.isin(pos.index)]
    if len(missing):
        raise PredictionsError(
            f"{what}: {len(missing)} image id(s) (e.g. {missing[0]}) are not in the prepared data; "
            "the data config changed since training: re-run 02_train"
        )
    return pos.loc[ids].to_numpy()


SUMMARY_DEFINITIONS = {
    "macro_auroc": "AUROC per class, averaged over classes (each class counts equally); headline",
    "micro_auroc": "AUROC of all (image, class) scores pooled (frequent classes weigh more)",
    "macro_ap": "average precision per class, averaged over classes (sensitive to prevalence)",
    "subset_accuracy": "share of images whose whole set of findings is called exactly right",
    "hamming_accuracy": "share of all (image, class) yes/no decisions that are right",
    "example_f1": "F1 of called vs true findings per image, averaged over images (no finding and none called = 1)",
    "macro_f1": "F1 per class at its operating point, averaged over classes",
    "micro_f1": "F1 of the pooled true/false positive and false negative counts of all classes",
    "accuracy": "share of images whose predicted class (by the decision rule above) is the true class",
    "balanced_accuracy": "recall per class averaged over classes (not inflated by a majority class)",
    "cohen_kappa": "agreement with the truth beyond chance (0 = chance, 1 = perfect)",
}


def summary_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """Macro/micro and set-level summaries, each with its value (95% CI where computed) and definition."""
    rows = []
    for key in ("macro_auroc", "micro_auroc", "macro_ap"):
        if key in metrics:
            label = key if key != "macro_auroc" else f"macro_auroc ({metrics['headline']})"
            rows.append(
                {
                    "metric": label,
                    "value (95% CI)": fmt_ci(metrics[key]),
                    "definition": SUMMARY_DEFINITIONS[key],
                }
            )
    for section in ("multilabel", "multiclass"):
        for key, v in metrics.get(section, {}).items():
            if key in SUMMARY_DEFINITIONS:
                text = fmt_ci(v) if isinstance(v, dict) else fmt(v)
                rows.append({"metric": key, "value (95% CI)": text, "definition": SUMMARY_DEFINITIONS[key]})
    return pd.DataFrame(rows)


def overview_markdown(
    metrics_like: dict[str, Any], n_val: int, n_test: int, thr_policy: str, calibrate: bool
) -> str:
    """The first paragraph of the report: what was evaluated and how choices were fitted."""
    return (
        f"**Task**: {metrics_like['task']} with classes {', '.join(metrics_like['classes'])}. "
        f"Validation: {n_val} images (thresholds{' and temperature' if calibrate else ''} fitted here); "
        f"test: {n_test} images (everything below is measured here, nothing is fitted on it). "
        f"Operating-point policy: **{thr_policy}**."
    )


def _records(df: Optional[pd.DataFrame]) -> Optional[list[dict[str, Any]]]:
    return None if df is None else df.astype(object).where(df.notna(), None).to_dict("records")


def attach_sections(
    metrics: dict[str, Any],
    calibration: dict[str, Any],
    targets: pd.DataFrame,
    summary: list[str],
    robustness: Optional[pd.DataFrame] = None,
    tta: Optional[pd.DataFrame] = None,
    subgroups: Optional[pd.DataFrame] = None,
    subgroup_lines: tuple[str, ...] | list[str] = (),
    leakage: tuple[str, ...] | list[str] = (),
) -> dict[str, str]:
    """Add the report's other results to ``metrics`` (JSON-safe records, None for undefined) and
    return the extra ``report.md`` sections (title -> markdown).

    ``leakage``: the data check's warning lines (``data.report.leakage_warnings_for``), repeated in
    ``metrics.json`` as ``leakage_warnings`` and first in ``report.md``, so a leak 01 found is not
    forgotten by the numbers it inflates.
    """
    metrics["calibration"] = calibration
    metrics["targets"] = _records(targets)
    metrics["summary"] = list(summary)
    metrics["leakage_warnings"] = list(leakage)
    extra: dict[str, str] = {}
    if leakage:
        extra["Leakage (from the data check, as in 01_eda)"] = "\n".join(f"- {w}" for w in leakage)
    if subgroups is not None:
        metrics["subgroups"] = _records(subgroups)
        extra["Subgroups"] = "\n".join(f"- {s}" for s in subgroup_lines)
    if robustness is not None:
        metrics["robustness"] = _records(robustness)
        worst = robustness.loc[robustness["drop"].astype(float).idxmax()]
        extra["Robustness"] = (
            f"Largest drop: {worst['corruption']} at severity {worst['severity']} "
            f"(AUROC {worst['auroc']:.3f}, -{worst['drop']:.3f} from clean)."
        )
    if tta is not None:
        metrics["tta"] = _records(tta)
        head = tta.set_index("class").loc["headline"]
        extra["Test-time augmentation"] = (
            f"Headline AUROC {fmt(head['auroc_plain'])} without, {fmt(head['auroc_tta'])} with TTA."
        )
    return extra


def save_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (indented, atomically: temp file then rename)."""
    return write_json(path, metrics)


def read_metrics(run_dir_or_file: str | Path) -> Optional[dict[str, Any]]:
    """``metrics.json`` of a run dir (or the file); None when 03 has not written it or it is unreadable."""
    path = Path(run_dir_or_file)
    obj = read_json(path / METRICS_FILE if path.is_dir() else path)
    return obj if isinstance(obj, dict) else None


HEADLINE_LABELS = (
    ("macro_auroc", "Test macro AUROC"),
    ("micro_auroc", "Test micro AUROC"),
    ("macro_ap", "Test macro AP"),
    ("accuracy", "Test accuracy"),
    ("balanced_accuracy", "Test balanced accuracy"),
    ("ece", "Test ECE"),
)


def headline_entries(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, ``{"value", "ci_low", "ci_high"}``) for the front pages, in ``HEADLINE_LABELS`` order,
    for the metrics this run has (accuracy for multiclass, ECE of the probabilities decisions use)."""
    out = []
    calibration = metrics.get("calibration")
    for key, label in HEADLINE_LABELS:
        entry = lookup_metric(metrics, key, calibration)
        if entry is None or entry.get("value") is None:
            continue
        if key == "ece":
            label += " (calibrated)" if (calibration or {}).get("applied") else " (raw probabilities)"
        out.append((label, entry))
    return out
