"""The model card's sections, each written from named run files (:class:`RunFiles`).

Intended use, data and splits, model and training, test performance, subgroups, calibration,
operating point, robustness, Grad-CAM findings and known limitations. A section whose file is
missing is kept, with one line saying it is not answered by this run and why
(:func:`card_files.missing_reason`); a file an earlier run left behind is marked stale. Tables reuse
the owners' formatters (``evaluate.report.per_class_frame``, ``evaluate.subgroups.gap_summary``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from cxr_helpers.data.splits import leakage_summary
from cxr_helpers.evaluate.report import headline_entries, per_class_frame, worst_classes_summary
from cxr_helpers.evaluate.subgroups import gap_summary
from cxr_helpers.metrics import fmt, fmt_ci
from cxr_helpers.run.card_files import NOT_ANSWERED, WRITERS, RunFiles, missing_reason, stale_files

RESEARCH_ONLY = (
    "**Research use only.** This model was made with cxr for research and teaching. It is not a "
    "medical device, has not been validated for clinical use, and must not be used to diagnose, "
    "triage or treat anyone."
)


POLICY_TEXT = {
    "youden": "the threshold maximising sensitivity + specificity - 1 (Youden's J) on the validation split",
    "max_f1": "the threshold maximising F1 on the validation split",
    "sensitivity": "the highest threshold whose validation sensitivity is at least {target}",
}


# ---------------------------------------------------------------- sections


@dataclass
class Section:
    """One card section: ``lines`` of markdown written from ``sources`` (run files); ``missing``
    says why the section is not answered ("" when it is)."""

    key: str
    title: str
    sources: tuple[str, ...]
    lines: list[str] = field(default_factory=list)
    missing: str = ""

    @property
    def answered(self) -> bool:
        """True when the run's files answer this section."""
        return not self.missing


def _unanswered(key: str, title: str, sources: tuple[str, ...], why: str) -> Section:
    return Section(key, title, sources, [f"*{NOT_ANSWERED}: {why}.*"], why)


def _stale_note(files: RunFiles, file_name: str) -> list[str]:
    number = WRITERS.get(file_name, ("",))[0]
    if number and number in files.stale:
        return [f"> Stale: {file_name} is from an earlier run; its notebook did not run ok since a notebook before it re-ran."]
    return []


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> list[str]:
    """A pipe table (one line per row), cells escaped for markdown."""
    cols = [_cell(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join("" if v is None else _cell(v) for v in row) + " |")
    return out


def names_text(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def section_intended_use(files: RunFiles) -> Section:
    """What the model is for and not for; its input and output (config.yaml, thresholds.json)."""
    sec = Section("intended-use", "Intended use", ("config.yaml",), [RESEARCH_ONLY, ""])
    task, classes = files.task, files.classes
    kind = {
        "multilabel": "each finding is scored on its own (none, one or several per image)",
        "multiclass": "exactly one class per image",
    }.get(task or "", "task not recorded")
    sec.lines.append(f"- Task: {task or 'unknown'} classification of chest radiographs into {names_text(classes)}: {kind}.")
    cfg = files.config
    if cfg is not None:
        sec.lines.append(
            f"- Input: one grey-level frontal image, resized to {cfg.data.image_size} x {cfg.data.image_size} px "
            f"(aspect: {cfg.data.aspect}{', CLAHE' if cfg.data.clahe else ''}); no clinical variables."
        )
        checks = ", ".join(cfg.data.image_checks) or "none"
        sec.lines.append(
            f"- Inputs kept out: unreadable files are skipped and listed; DICOM header checks ({checks}, "
            "`data.image_checks`) keep other modalities, body parts and lateral views out of training; "
            "at prediction such images get a warning."
        )
    else:
        sec.lines.append(f"- Input and preprocessing: {NOT_ANSWERED}: {files.config_problem or 'no config.yaml'}.")
    if files.thresholds:
        sec.sources += ("thresholds.json",)
        sec.lines.append(f"- Output: a probability per class. {files.thresholds.get('rule', '')}")
    sec.lines.append(
        "- Study goal: model development with internal testing on a held-out split of the same data "
        "(a retrospective analysis of a stored dataset); no external or prospective test."
    )
    if files.synthetic:
        sec.lines.append(
            "- **Synthetic data**: trained and tested on generated CXR-like images; its numbers say nothing about patients."
        )
    return sec


def section_data(files: RunFiles) -> Section:
    """Sources, counts, patients, splits and the leakage check (eda_summary.json, config.yaml)."""
    title, sources = "Data and splits", ("eda_summary.json", "config.yaml")
    eda = files.eda
    if not eda:
        return _unanswered("data", title, sources, missing_reason(files, "eda_summary.json"))
    sec = Section("data", title, sources, _stale_note(files, "eda_summary.json"))
    cfg = files.config
    if cfg is not None:
        d = cfg.data
        where = f" at `{d.root}`" if d.root else ""
        sec.lines.append(f"- Source: `{d.source}`{where}" + (" (generated, not real radiographs)" if files.synthetic else "") + ".")
        split_rule = (
            f"`data.split: {d.split}` (patient-level, seeded; val {d.val_fraction:g}, test {d.test_fraction:g})"
            if d.split == "random"
            else f"`data.split: {d.split}` (the dataset's own split)"
        )
        sec.lines.append(f"- Split: {split_rule}.")
        if d.max_images:
            sec.lines.append(f"- Subset: at most {d.max_images} images per split (`data.max_images`).")
        sec.lines.append(
            f"- Preprocessing: decoded once to {d.image_size} px uint8 (aspect {d.aspect}"
            f"{', CLAHE' if d.clahe else ''}); augmentation at training only (see Model and training)."
        )
    n_img, n_pat = eda.get("n_images"), eda.get("n_patients")
    sec.lines.append(
        f"- Images: {n_img} of {n_pat} patients (mean {eda.get('images_per_patient_mean')}, "
        f"max {eda.get('images_per_patient_max')} images per patient)."
    )
    sec.lines.append(
        f"- Excluded: {eda.get('n_skipped', 0)} unreadable or refused files skipped and listed in "
        f"reports/01_eda.html; {eda.get('n_missing', 0)} listed images missing on disk."
    )
    counts = eda.get("counts") or {}
    if counts:
        splits = [s for s in ("train", "val", "test", "total") if s in counts]
        rows = list(dict.fromkeys(k for s in splits for k in counts[s]))
        table = pd.DataFrame({"": rows, **{s: [counts[s].get(r, 0) for r in rows] for s in splits}})
        sec.lines += ["", "Images per class and split (a multi-label image counts once per finding):", ""]
        sec.lines += md_table(table)
        sec.lines.append("")
    if eda.get("absent_classes"):
        sec.lines.append(f"- Classes with no images: {names_text(eda['absent_classes'])}.")
    sec.lines.append(f"- Leakage check: **{eda.get('leakage', 'not recorded')}**: {leakage_text(eda)}.")
    for line in eda.get("leakage_warnings") or []:
        sec.lines.append(f"  - {line}")
    for note in eda.get("notes") or []:
        sec.lines.append(f"- Note: {note}")
    return sec


def leakage_text(eda: dict[str, Any]) -> str:
    """The leakage check's one-line result as 01 wrote it (eda_summary.json ``leakage_detail``)."""
    detail = eda.get("leakage_detail")
    if isinstance(detail, dict) and detail:
        return leakage_summary(detail).replace("leakage check: ", "")
    return "no detail recorded"


def disjoint_level(eda: Optional[dict[str, Any]]) -> str:
    """The level at which the run's partitions are disjoint, as the leakage check found it."""
    detail = (eda or {}).get("leakage_detail") or {}
    if not detail:
        return "not recorded"
    level = "patient level" if detail.get("patient_level", False) else "image level (no patient ids)"
    return f"{level}; leakage check {eda.get('leakage')}"


def section_model(files: RunFiles) -> Section:
    """Architecture, weights, loss, training settings and software (train_summary.json, config.yaml, provenance.json)."""
    title, sources = "Model and training", ("train_summary.json", "config.yaml", "provenance.json")
    tr = files.train
    if not tr:
        return _unanswered("model", title, sources, missing_reason(files, "train_summary.json"))
    sec = Section("model", title, sources, _stale_note(files, "train_summary.json"))
    params = tr.get("params")
    sec.lines.append(
        f"- Model: `{tr.get('arch')}` (deep convolutional network, timm), {tr.get('in_chans')} input channel(s), "
        f"{tr.get('image_size')} px" + (f", {params:,} parameters" if isinstance(params, int) else "") + "."
    )
    cfg = files.config
    if cfg is not None:
        m, t = cfg.model, cfg.train
        init = (
            f"evaluated from an external checkpoint `{m.checkpoint}`" if m.checkpoint
            else f"started from the local weights `{m.weights}`" if m.weights
            else "ImageNet-pretrained timm weights" if m.pretrained
            else "random initialisation (trained from scratch)"
        )
        sec.lines.append(f"- Initialisation: {init}.")
        a = t.augment
        aug = (
            f"rotate ±{a.rotate:g}°, scale ±{a.scale:g}, translate ±{a.translate:g}, brightness ±{a.brightness:g}, "
            f"contrast ±{a.contrast:g}, gamma ±{a.gamma:g}, noise {a.noise:g}, hflip {'on' if a.hflip else 'off'}"
            + (f", random resized crop (scale ≥ {a.rrc_scale_min:g})" if a.random_resized_crop else "")
        )
        sec.lines.append(
            f"- Training settings: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}, weight decay {t.weight_decay:g}, "
            f"scheduler {t.scheduler} (warm-up {t.warmup_epochs:g}), label smoothing {t.label_smoothing:g}, "
            f"EMA {'on' if t.ema else 'off'}"
            + (f", mixup α {t.mixup.alpha:g} / cutmix α {t.mixup.cutmix_alpha:g} (p {t.mixup.prob:g}"
               + (f", off for the last {t.mixup.off_epochs} epochs" if t.mixup.off_epochs else "") + ")"
               if t.mixup.enabled else "")
            + ", early stopping "
            f"{t.early_stopping_patience if t.early_stopping_patience else 'off'}; seed {cfg.seed}."
        )
        sec.lines.append(f"- Augmentation: {aug}.")
    sec.lines.append(f"- Loss: {tr.get('loss')} ({tr.get('loss_reason', '')}).")
    if tr.get("loss_weights"):
        sec.lines.append(f"- Class-imbalance weights: {tr['loss_weights']}.")
    else:
        sec.lines.append("- Class imbalance: no loss weights (positives and negatives per class in train_summary.json `class_balance`).")
    sec.lines.append(
        f"- Model selection: the checkpoint of the epoch with the best validation {tr.get('monitor')} "
        f"(epoch {tr.get('best_epoch')} of {tr.get('epochs_run')}, value {fmt(tr.get('best_metric'))}); "
        f"stopped: {tr.get('stop_reason')}. One model, no ensemble; weights in `model/best.pt`."
    )
    secs, threads = tr.get("seconds"), tr.get("threads")
    thread_text = "? threads" if not threads else f"{threads} thread{'' if threads == 1 else 's'}"
    sec.lines.append(
        f"- Compute: {fmt(secs, 0) if secs is not None else '?'} s on {tr.get('device') or '?'} "
        f"(world size {tr.get('world_size') or 1}, {thread_text}, AMP {tr.get('amp') or '?'}); "
        f"{tr.get('n_train')} / {tr.get('n_val')} / {tr.get('n_test')} train / val / test images."
    )
    prov = files.provenance
    if prov:
        git = prov.get("git") or {}
        pk = prov.get("packages") or {}
        versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
        sec.lines.append(
            f"- Software: Python {prov.get('python')}; {versions}; cxr commit {git.get('commit')}"
            f"{' with uncommitted changes' if git.get('dirty') else ''}."
        )
    else:
        sec.lines.append(f"- Software: {NOT_ANSWERED}: no provenance.json.")
    return sec


def headline_label(metrics: dict[str, Any], label: str) -> str:
    """``headline_entries``' label, except that a two-class run's headline AUROC is named for what
    it is (``AUROC of pneumonia vs normal``), not a macro mean."""
    headline = str(metrics.get("headline") or "")
    if label == "Test macro AUROC" and headline and not headline.startswith("macro"):
        return f"Test {headline}"
    return label


def section_performance(files: RunFiles) -> Section:
    """Headline and per-class test metrics with bootstrap CIs, targets, worst classes (metrics.json)."""
    title, sources = "Performance on the test split", ("metrics.json",)
    m = files.metrics
    if not m:
        return _unanswered("performance", title, sources, missing_reason(files, "metrics.json"))
    sec = Section("performance", title, sources, _stale_note(files, "metrics.json"))
    boot = m.get("bootstrap") or {}
    level = boot.get("level", 0.95)
    sec.lines.append(
        f"Test split: {m.get('n_images')} images of {m.get('n_patients')} patients. Intervals: {level:.0%} "
        f"percentile bootstrap, {boot.get('n')} resamples of {boot.get('unit', 'image')}s (seed {boot.get('seed')}). "
        f"Headline: {m.get('headline')}."
    )
    sec.lines.append("")
    for label, entry in headline_entries(m):
        sec.lines.append(f"- {headline_label(m, label)}: **{fmt_ci(entry)}**")
    sec.lines += ["", f"Per class (values with {level:.0%} CI; operating point as in *Operating point*):", ""]
    sec.lines += md_table(per_class_frame(m))
    targets = m.get("targets") or []
    if targets:
        sec.lines += ["", "Targets set before the run (`eval.targets`):", ""]
        sec.lines += md_table(pd.DataFrame(targets))
    worst = worst_classes_summary(m)
    if worst:
        sec.lines += ["", "Where it fails most (lowest AUROC; error galleries in reports/03_error_analysis.html):", ""]
        sec.lines += [f"- {w}" for w in worst]
    for w in m.get("leakage_warnings") or []:
        sec.lines.append(f"- **{w}**")
    return sec


def section_subgroups(files: RunFiles) -> Section:
    """Headline AUROC by sex, age band and view with CIs, and the gaps (metrics.json ``subgroups``)."""
    title, sources = "Subgroups", ("metrics.json",)
    m = files.metrics
    if not m:
        return _unanswered("subgroups", title, sources, missing_reason(files, "metrics.json"))
    if not m.get("subgroups"):
        why = "metrics.json has no subgroup results (the data have no sex, age or view, or 03 ran before subgroup analysis)"
        return _unanswered("subgroups", title, sources, why)
    sec = Section("subgroups", title, sources, _stale_note(files, "metrics.json"))
    df = pd.DataFrame(m["subgroups"])
    table = pd.DataFrame(
        {
            "attribute": df["attribute"],
            "level": df["level"],
            "images": df["n_images"],
            "patients": df.get("n_patients"),
            "AUROC (95% CI)": [
                fmt_ci({"value": r.get("auroc"), "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high")})
                for r in m["subgroups"]
            ],
            "gap to best": [fmt(g) for g in df.get("gap_to_best", [None] * len(df))],
        }
    )
    sec.lines += md_table(table)
    sec.lines.append("")
    sec.lines += [f"- {line}" for line in gap_summary(df)] or ["- No attribute has two scored subgroups."]
    return sec


def section_calibration(files: RunFiles) -> Section:
    """Temperature scaling fitted on validation; test ECE/Brier before and after (calibration.json)."""
    title, sources = "Calibration", ("calibration.json", "metrics.json")
    cal = files.calibration
    if not cal:
        return _unanswered("calibration", title, sources, missing_reason(files, "calibration.json"))
    sec = Section("calibration", title, sources, _stale_note(files, "calibration.json"))
    temp = cal.get("temperature")
    if isinstance(temp, dict):
        temps = ", ".join(f"{k} {fmt(v, 2)}" for k, v in temp.items())
    else:
        temps = fmt(temp, 2) if isinstance(temp, (int, float)) else str(temp)
    applied = bool(cal.get("applied", True))
    sec.lines.append(
        f"- Method: {cal.get('method', 'temperature')} scaling fitted on the {cal.get('fitted_on', 'val')} split "
        f"({'one temperature per class' if cal.get('per_class') else 'one temperature'}: {temps}); "
        + ("decisions and reported probabilities use the calibrated values." if applied
           else "**not applied** (`eval.calibrate: false`): decisions use raw probabilities.")
    )
    before = (cal.get("test_before") or {}).get("mean") or _last(cal.get("test_before"))
    after = (cal.get("test_after") or {}).get("mean") or _last(cal.get("test_after"))
    if before and after:
        sec.lines.append(
            f"- Test split, {cal.get('n_bins', 10)}-bin ECE {fmt(before.get('ece'))} before -> {fmt(after.get('ece'))} after; "
            f"Brier {fmt(before.get('brier'))} -> {fmt(after.get('brier'))} (mean over classes, or top-label for one softmax)."
        )
    return sec


def _last(d: Any) -> Optional[dict]:
    return list(d.values())[-1] if isinstance(d, dict) and d else None


def policy_text(thresholds: dict[str, Any]) -> str:
    """How the operating point was chosen, in words, from thresholds.json's ``policy``."""
    policy = str(thresholds.get("policy"))
    text = POLICY_TEXT.get(policy, "a policy this version does not know")
    return text.format(target=thresholds.get("target_sensitivity"))


def section_operating_point(files: RunFiles) -> Section:
    """The threshold policy, where it was fitted, the rule and the thresholds (thresholds.json, metrics.json).

    One row per threshold the rule uses: the positive class's alone for two classes; under triage
    each disease's, then any disease vs normal (metrics.json ``triage``) instead of the normal
    class's, whose threshold decides nothing."""
    title, sources = "Operating point", ("thresholds.json", "metrics.json")
    thr = files.thresholds
    if not thr:
        return _unanswered("operating-point", title, sources, missing_reason(files, "thresholds.json"))
    sec = Section("operating-point", title, sources, _stale_note(files, "thresholds.json"))
    sec.lines.append(
        f"- Chosen by policy **{thr.get('policy')}** (`eval.threshold_policy`): {policy_text(thr)}; "
        f"fitted on the {thr.get('fitted_on', 'val')} split and applied unchanged to test, on "
        f"{thr.get('applies_to', 'probabilities')}."
    )
    sec.lines.append(f"- {thr.get('rule', '')}")
    per_class = (files.metrics or {}).get("per_class") or {}
    triage = (files.metrics or {}).get("triage") if thr.get("decision") == "triage" else None
    rows = []
    for cls, t in (thr.get("thresholds") or {}).items():
        e = per_class.get(cls) or {}
        rows.append(
            {
                "class": cls,
                "threshold": fmt(t),
                "test sensitivity (95% CI)": fmt_ci(e.get("sensitivity")) if e else "—",
                "test specificity (95% CI)": fmt_ci(e.get("specificity")) if e else "—",
                "missed / false alarms": f"{e['confusion']['fn']} / {e['confusion']['fp']}" if e.get("confusion") else "—",
            }
        )
    if thr.get("decision") == "positive_class" and thr.get("positive_class"):
        rows = [r for r in rows if r["class"] == thr["positive_class"]]
    if thr.get("decision") == "triage":
        rows = [r for r in rows if r["class"] != thr.get("normal_class")]
    if triage:
        a = triage["any_disease"]
        rows.append(
            {
                "class": f"any disease vs {triage['normal_class']}",
                "threshold": "each disease's",
                "test sensitivity (95% CI)": fmt_ci(a["sensitivity"]),
                "test specificity (95% CI)": fmt_ci(a["specificity"]),
                "missed / false alarms": f"{a['missed']} / {a['false_alarms']}",
            }
        )
    if rows:
        sec.lines += [""] + md_table(pd.DataFrame(rows))
    for cls, note in (thr.get("notes") or {}).items():
        sec.lines.append(f"- {cls}: {note}")
    return sec


def section_robustness(files: RunFiles) -> Section:
    """AUROC under synthetic corruptions and with test-time augmentation (metrics.json)."""
    title, sources = "Robustness", ("metrics.json",)
    m = files.metrics
    if not m:
        return _unanswered("robustness", title, sources, missing_reason(files, "metrics.json"))
    if not m.get("robustness") and not m.get("tta"):
        why = "metrics.json has no robustness or TTA results (eval.robustness off and eval.tta empty, or 03 ran before them)"
        return _unanswered("robustness", title, sources, why)
    sec = Section("robustness", title, sources, _stale_note(files, "metrics.json"))
    if m.get("robustness"):
        df = pd.DataFrame(m["robustness"])
        wide = df.pivot_table(index="corruption", columns="severity", values="auroc", aggfunc="first", sort=False)
        wide = wide.map(fmt) if hasattr(wide, "map") else wide.applymap(fmt)
        sec.lines += ["Headline AUROC on a test subset, by corruption and severity (0 = clean):", ""]
        sec.lines += md_table(wide.reset_index().rename(columns=lambda c: f"severity {c}" if c != "corruption" else c))
        worst = df.loc[df["drop"].astype(float).idxmax()]
        sec.lines += [
            "",
            f"- Largest drop: {worst['corruption']} at severity {worst['severity']}: AUROC {fmt(worst['auroc'])} "
            f"(-{fmt(worst['drop'])} from clean).",
        ]
    else:
        sec.lines.append(f"- Corruptions: {NOT_ANSWERED}: eval.robustness was off.")
    if m.get("tta"):
        head = next((r for r in m["tta"] if r.get("class") == "headline"), None)
        if head:
            sec.lines.append(
                f"- Test-time augmentation: headline AUROC {fmt(head.get('auroc_plain'))} without, "
                f"{fmt(head.get('auroc_tta'))} with (gain {fmt(head.get('gain'))}; reported, not used by the operating point)."
            )
    return sec


def section_gradcam(files: RunFiles) -> Section:
    """Grad-CAM localisation, faithfulness and shortcut findings (cam_metrics.json)."""
    title, sources = "Grad-CAM findings", ("cam_metrics.json",)
    cam = files.cam
    if not cam:
        return _unanswered("gradcam", title, sources, missing_reason(files, "cam_metrics.json"))
    sec = Section("gradcam", title, sources, _stale_note(files, "cam_metrics.json"))
    layer = cam.get("target_layer") or {}
    sec.lines.append(
        f"- Methods: {names_text(list(cam.get('methods') or []))} on layer `{layer.get('target_layer')}` "
        f"({layer.get('chosen', '')}), {cam.get('split')} split; reference: {cam.get('ground_truth')}."
    )
    sec.lines.append(f"- Result: {cam.get('summary')}.")
    pointing = cam.get("localization_all") or {}
    if pointing:
        sec.lines.append(
            "- Pointing game over all positives: "
            + ", ".join(f"{k} {fmt(v.get('pointing'), 2)}" for k, v in pointing.items())
            + " (uniform/random/centre are baselines a useful map must beat)."
        )
    shortcut = cam.get("shortcut")
    if isinstance(shortcut, dict) and shortcut.get("note"):
        sec.lines.append(f"- Shortcut check: {shortcut['note']}")
    sec.lines.append("- A map shows where the model looked, not why; galleries in reports/04_gradcam.html.")
    return sec


def section_limitations(files: RunFiles, sections: dict[str, Section]) -> Section:
    """Known limitations, each from a run file (synthetic data, leakage, no external test, weak
    classes, subgroup gaps, robustness, sections the run does not answer)."""
    sec = Section("limitations", "Known limitations", ("all of the above",))
    out = sec.lines
    if files.synthetic:
        out.append("- Synthetic data: every number describes generated images, not patients.")
    eda = files.eda or {}
    if eda and eda.get("leakage") not in (None, "ok"):
        out.append(f"- Leakage check {eda.get('leakage')}: {leakage_text(eda)} (eda_summary.json); test scores may be optimistic.")
    source = files.config.data.source if files.config else "the run's data"
    out.append(
        f"- Internal test only: the test split comes from the same source (`{source}`) as training; performance "
        "on another hospital, scanner or population is unknown."
    )
    m = files.metrics or {}
    if m.get("per_class"):
        worst = worst_classes_summary(m, k=1)
        if worst:
            out.append(f"- Weakest class: {worst[0]} (metrics.json)")
        unknown = {c: e.get("n_unknown") for c, e in m["per_class"].items() if e.get("n_unknown")}
        if unknown:
            out.append(f"- Labels unknown (masked) on test: {unknown} (metrics.json).")
    if m.get("subgroups"):
        lines = [s for s in gap_summary(pd.DataFrame(m["subgroups"])) if "do not overlap" in s]
        out += [f"- Subgroup gap: {s} (metrics.json)" for s in lines]
    if m.get("robustness"):
        df = pd.DataFrame(m["robustness"])
        worst = df.loc[df["drop"].astype(float).idxmax()]
        out.append(
            f"- Sensitive to image quality: {worst['corruption']} (severity {worst['severity']}) lowers AUROC by "
            f"{fmt(worst['drop'])} (metrics.json)."
        )
    if files.config is not None:
        out.append(f"- Images are seen at {files.config.data.image_size} px: findings smaller than a few pixels at that size cannot be learned.")
    tr = files.train or {}
    if tr and tr.get("stop_reason") not in (None, "completed", "early stopping"):
        out.append(f"- Training stopped: {tr.get('stop_reason')} (train_summary.json).")
    stale = stale_files(files)
    if stale:
        out.append(f"- Stale results: {', '.join(stale)} come from an earlier run (their notebook did not run ok since).")
    for s in sections.values():
        if not s.answered:
            out.append(f"- {s.title}: {NOT_ANSWERED}: {s.missing}.")
    return sec


SECTION_BUILDERS: tuple[tuple[str, str, tuple[str, ...], Callable[[RunFiles], Section]], ...] = (
    ("intended-use", "Intended use", ("config.yaml",), section_intended_use),
    ("data", "Data and splits", ("eda_summary.json", "config.yaml"), section_data),
    ("model", "Model and training", ("train_summary.json", "config.yaml", "provenance.json"), section_model),
    ("performance", "Performance on the test split", ("metrics.json",), section_performance),
    ("subgroups", "Subgroups", ("metrics.json",), section_subgroups),
    ("calibration", "Calibration", ("calibration.json", "metrics.json"), section_calibration),
    ("operating-point", "Operating point", ("thresholds.json", "metrics.json"), section_operating_point),
    ("robustness", "Robustness", ("metrics.json",), section_robustness),
    ("gradcam", "Grad-CAM findings", ("cam_metrics.json",), section_gradcam),
)
FORMAT_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def guarded(key: str, title: str, sources: tuple[str, ...], build: Callable[[], Section]) -> Section:
    """``build()``, or, when a file has another shape than this version reads (a file from an older
    or newer cxr, edited by hand), the section unanswered with the file and the field named."""
    try:
        return build()
    except FORMAT_ERRORS as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        why = f"{' / '.join(sources)} not in the form this version reads ({type(exc).__name__}: {detail}); re-run its notebook"
        return _unanswered(key, title, sources, why)


def build_sections(files: RunFiles) -> dict[str, Section]:
    """Every card section by key, in card order, the limitations last; never raises for a file's content."""
    sections = {
        key: guarded(key, title, sources, lambda build=build: build(files))
        for key, title, sources, build in SECTION_BUILDERS
    }
    sections["limitations"] = guarded(
        "limitations", "Known limitations", ("all of the above",), lambda: section_limitations(files, sections)
    )
    return sections


def counts_text(files: RunFiles) -> str:
    """Images, patients and split sizes, as eda_summary.json records them."""
    eda = files.eda or {}
    sizes = eda.get("split_sizes") or {}
    return f"{eda.get('n_images')} images of {eda.get('n_patients')} patients; " + ", ".join(f"{k} {v}" for k, v in sizes.items())


def split_text(files: RunFiles) -> str:
    """The split rule (config.yaml) and the level at which the splits are disjoint (eda_summary.json)."""
    cfg = files.config
    rule = f"data.split {cfg.data.split}" if cfg else "split rule not recorded"
    return f"{rule}; disjoint at {disjoint_level(files.eda)}"


def model_text(files: RunFiles) -> str:
    """Architecture, input size and loss, as train_summary.json records them."""
    tr = files.train or {}
    return f"{tr.get('arch')}, {tr.get('image_size')} px, loss {tr.get('loss')}"


def selection_text(files: RunFiles) -> str:
    """How the final checkpoint was chosen (train_summary.json)."""
    tr = files.train or {}
    return f"best validation {tr.get('monitor')} at epoch {tr.get('best_epoch')} of {tr.get('epochs_run')}"
