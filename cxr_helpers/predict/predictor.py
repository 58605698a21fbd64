"""The model and the decision rules behind 05_predict and ``cxr predict``.

A ``Predictor`` is a trained run's ``Classifier`` (``model.inference.load_model``: the one forward
path) plus the rules 03 fitted on validation, read by their owners: ``calibration.json``
(``evaluate.calibration.read_calibration``) and ``thresholds.json``
(``evaluate.thresholds.read_thresholds``; 0.5 with a warning when absent). Decisions are made on
``evaluate.calibration.decision_probs``: calibrated where 03 calibrated, raw otherwise, and called
by the same rule as 03's metrics (``evaluate.thresholds.decide``: per class for multilabel, one
threshold on the positive class for two classes, arg-max for more). When ``thresholds.json`` was
fitted on other probabilities than that (``applies_to``), the predictor carries a one-line
warning. Research use only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import DataConfig
from cxr_helpers.evaluate.calibration import CalibrationRecord, decision_probs, read_calibration
from cxr_helpers.evaluate.thresholds import (
    ThresholdRecord,
    decide,
    read_thresholds,
    rule_mismatch,
    rule_sentence,
)
from cxr_helpers.model.checkpoint import ModelMeta
from cxr_helpers.model.inference import Classifier, load_model
from cxr_helpers.paths import resolve_path
from cxr_helpers.runtime import ThreadChoice, apply_threads
from cxr_helpers.train.reference import Reference, read_reference

RESEARCH_NOTE = (
    "Research use only: these outputs are model scores for method development, not a diagnosis, "
    "and must not guide patient care."
)


class PredictError(ValueError):
    """Prediction cannot start (no run dir, no checkpoint, no inputs); the message is one line."""


@dataclass
class Predictor:
    """A trained model plus the decision rules fitted on validation.

    classifier: the run's model (None only in tests that inject ``probs_fn``).
    data: the data settings ``data.geometry.preprocess_image`` needs (image_size, aspect, clahe), as trained.
    rules: ``thresholds.json`` (per-class thresholds in class order); calibration: ``calibration.json``.
    warnings: one line each (missing thresholds, thresholds fitted on other probabilities).
    threads: the CPU thread count in force and why (``runtime.apply_threads``; None in tests).
    reference: what the training images and validation scores looked like (``train.reference``;
    None for runs trained before it existed), reference_note: one line saying which.
    cam_method / target_layer: how overlays are made (``predict.cam_method`` and
    ``cam.target_layer`` of the config given to ``load_predictor``, else of the run's own config).
    """

    classifier: Optional[Classifier]
    classes: list[str]
    task: str
    data: DataConfig
    rules: ThresholdRecord
    calibration: CalibrationRecord
    run_dir: Optional[Path] = None
    warnings: list[str] = field(default_factory=list)
    threads: Optional[ThreadChoice] = None
    reference: Optional[Reference] = None
    reference_note: str = "no reference statistics loaded"
    cam_method: str = "gradcam"
    target_layer: Optional[str] = None

    @property
    def meta(self) -> Optional[ModelMeta]:
        return self.classifier.meta if self.classifier is not None else None

    @property
    def image_size(self) -> int:
        return int(self.data.image_size)

    @property
    def thresholds(self) -> np.ndarray:
        """(C,) floats in [0, 1], applied to ``decide``'s probabilities (``p >= t`` is a finding)."""
        return self.rules.thresholds

    @property
    def threshold_source(self) -> str:
        return self.rules.source

    @property
    def calibration_source(self) -> str:
        return self.calibration.source

    @property
    def rule_sentence(self) -> str:
        """The decision rule in one sentence (``evaluate.thresholds.rule_sentence``)."""
        return rule_sentence(self.rules, self.classes)

    @property
    def decisive_thresholds(self) -> np.ndarray:
        """(C,) thresholds, NaN where the rule uses none (every class under arg-max, the normal
        class under triage): what probability bars mark."""
        thr = np.asarray(self.thresholds, dtype=float).copy()
        if self.rules.rule == "argmax":
            thr[:] = np.nan
        elif self.rules.rule == "triage" and self.rules.normal is not None:
            thr[self.rules.normal] = np.nan
        return thr

    def decide(self, raw: np.ndarray) -> np.ndarray:
        """The probabilities findings are called on: ``raw`` (N, C) calibrated where 03 calibrated."""
        return decision_probs(raw, self.calibration, self.task)

    def calls(self, probs: np.ndarray) -> np.ndarray:
        """Bool (N, C) calls on decision probabilities ``probs`` (N, C): 03's rule, ``thresholds.decide``."""
        return decide(probs, self.rules)

    def rules_table(self) -> pd.DataFrame:
        """One row per class: threshold, whether the decision uses it (all for multilabel, the
        positive class's for two classes, none for arg-max, every disease's but not the normal
        class's for triage), its source, temperature."""
        temps = self.calibration.temperatures if self.calibration.in_use else None
        used = {"per_class": [True] * len(self.classes), "argmax": [False] * len(self.classes),
                "triage": [k != self.rules.normal for k in range(len(self.classes))]}.get(
            self.rules.rule, [k == self.rules.positive for k in range(len(self.classes))]
        )
        return pd.DataFrame(
            {
                "class": self.classes,
                "threshold": self.thresholds,
                "decides": used,
                "threshold_source": self.threshold_source,
                "temperature": temps if temps is not None else np.full(len(self.classes), np.nan),
            }
        )


def prep_settings(meta: ModelMeta, cfg: Any = None) -> DataConfig:
    """How training images were prepared: ``image_size`` from the checkpoint, ``aspect`` and
    ``clahe`` from its stored config (``cfg.data`` for an external state dict, which has none).
    The checkpoint wins over the current config: the model only knows its own input."""
    data = meta.config.data if meta.config is not None else (cfg.data if cfg is not None else DataConfig())
    return DataConfig(image_size=int(meta.image_size), aspect=str(data.aspect), clahe=bool(data.clahe))


def decision_rules(
    run_dir: Path, classes: list[str], task: Optional[str] = None, normal: Optional[str] = None
) -> tuple[ThresholdRecord, CalibrationRecord, list[str]]:
    """The run's thresholds (with the rule of the model's ``task``; ``normal``, ``eval.normal_class``,
    gives the triage rule when ``thresholds.json`` is missing) and calibration records, and the
    warnings about them (one line each)."""
    rules = read_thresholds(run_dir, classes, task, normal)
    calibration = read_calibration(run_dir, classes)
    mismatch = rule_mismatch(rules, calibration)
    return rules, calibration, list(rules.warnings) + ([mismatch] if mismatch else [])


def load_predictor(run_dir: str | Path, cfg: Any = None, device: str = "auto") -> Predictor:
    """Load ``run_dir``'s checkpoint (``inference.load_model``) and its decision rules.

    Rule warnings are kept on ``Predictor.warnings``, one line each: 05 shows them in its
    description (``report.describe``), ``cxr predict`` prints them as ``warning:`` lines. CPU
    threads follow ``cfg.train.threads`` or the cores free now (``runtime.apply_threads``).
    """
    run_dir = resolve_path(run_dir)
    if not run_dir.is_dir():
        raise PredictError(f"run dir not found: {run_dir} (train first: cxr run CONFIG, or point at a run dir)")
    clf = load_model(run_dir, device)
    threads = apply_threads(cfg.train.threads if cfg is not None else None, clf.device)
    cam_cfg = cfg if cfg is not None else (clf.meta.config if clf.meta is not None else None)
    normal = getattr(getattr(cam_cfg, "eval", None), "normal_class", None)
    rules, calibration, notes = decision_rules(run_dir, clf.classes, clf.task, normal)
    reference, reference_note = read_reference(run_dir)
    return Predictor(
        classifier=clf,
        classes=clf.classes,
        task=clf.task,
        data=prep_settings(clf.meta, cfg),
        rules=rules,
        calibration=calibration,
        run_dir=run_dir,
        warnings=notes,
        threads=threads,
        reference=reference,
        reference_note=reference_note,
        cam_method=cam_cfg.predict.cam_method if cam_cfg is not None else "gradcam",
        target_layer=cam_cfg.cam.target_layer if cam_cfg is not None else None,
    )
