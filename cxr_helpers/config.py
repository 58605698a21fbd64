"""Run configuration: typed sections loaded from YAML, validated strictly.

One place knows every key a run may set. Unknown or mistyped keys fail with one line naming
the file, the key and what is allowed, because a silently ignored typo (``epoch: 30``) is a
wasted training run. ``--set a.b=value`` overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from cxr_helpers.paths import write_text

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# Keys whose value is one of a fixed set, checked when the config loads (before any notebook runs).
# tests/test_config.py keeps these equal to the constants of the modules that consume them.
CHOICES: dict[str, tuple[Optional[str], ...]] = {
    "data.source": ("synthetic", "nih_cxr14", "medmnist", "folder", "csv", "hf", "pooled"),
    "data.uncertain": ("positive", "negative", "masked"),
    "data.sources[].source": ("nih_cxr14", "folder", "csv", "hf"),
    "data.sources[].split": (None, "official", "chexnet", "random"),
    "data.task": (None, "multilabel", "multiclass"),
    "data.aspect": ("pad", "crop", "stretch"),
    "data.split": ("official", "chexnet", "random"),
    "train.scheduler": ("cosine", "plateau", "onecycle", "none"),
    "train.loss": ("auto", "bce", "focal", "asl", "ce"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.channels_last": ("auto", "on", "off"),
    "eval.threshold_policy": ("youden", "max_f1", "sensitivity"),
}
# List-valued keys whose items come from a fixed set (same test keeps them equal to their consumers').
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "data.image_checks": ("modality", "body_part", "lateral"),
}
# What a label_map (data.csv / data.hf) may map a cell to: 0 or 1; "masked" (unknown: the loss and
# metrics leave that image out for that finding); "uncertain" (resolved by data.uncertain).
LABEL_TARGETS: dict[str, Union[int, str]] = {
    "0": 0, "1": 1, "negative": 0, "positive": 1, "false": 0, "true": 1,
    "masked": "masked", "mask": "masked", "ignore": "masked", "nan": "masked", "uncertain": "uncertain",
}  # fmt: skip
MASKED = "masked"
UNCERTAIN = "uncertain"


class ConfigError(ValueError):
    """A config file or override is invalid; the message is one line a user can act on."""


# Sources whose task is fixed whatever the files hold (data.task unset): what the config check knows
# before any data is read.
KNOWN_SOURCE_TASKS = {"synthetic": "multilabel", "nih_cxr14": "multilabel", "hf": "multilabel", "pooled": "multilabel"}


def normal_class_index(normal: Optional[str], classes: list[str], task: str) -> Optional[int]:
    """Index of ``eval.normal_class`` in ``classes``: the exact name, else the one case-insensitive
    match (``normal`` finds a ``NORMAL`` folder); None when unset.

    ConfigError (one line naming ``eval.normal_class``) when the task is not multiclass, no class or
    several classes match, or a two-class task names its positive (last) class. The config check,
    02's start (``train.context``) and 03's rule (``evaluate.thresholds.normal_index``) all use it.
    """
    if not normal:
        return None
    if task != "multiclass":
        raise ConfigError(
            f"eval.normal_class: '{normal}' applies to multiclass tasks only (this run is {task}); remove the key"
        )
    hits = [k for k, c in enumerate(classes) if c == normal]
    if not hits:
        hits = [k for k, c in enumerate(classes) if c.lower() == str(normal).lower()]
        if len(hits) > 1:
            raise ConfigError(
                f"eval.normal_class: '{normal}' matches several classes ({', '.join(classes[k] for k in hits)}) "
                "in all but case; set it to exactly one of them"
            )
    if not hits:
        raise ConfigError(
            f"eval.normal_class: '{normal}' is not one of the classes ({', '.join(classes)}); "
            "set it to the class of images without disease, or remove it"
        )
    k = hits[0]
    if len(classes) == 2 and k == len(classes) - 1:
        raise ConfigError(
            f"eval.normal_class: '{classes[k]}' is the positive (last) class of this two-class task; "
            f"the normal class must be '{classes[0]}' (reorder with data.classes)"
        )
    return k


DEFAULT_PREVALENCE = {
    "Cardiomegaly": 0.22,
    "Effusion": 0.18,
    "Nodule": 0.14,
    "Mass": 0.10,
    "Pneumothorax": 0.10,
    "Consolidation": 0.16,
}


@dataclass
class SyntheticConfig:
    """Embedded synthetic CXR-like data (no download; exact lesion masks)."""

    n_images: int = 2000  # total images, all splits
    max_followups: int = 3  # images per patient are drawn from 1..max_followups
    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    difficulty: float = 1.0  # >1 makes lesions fainter and smaller
    confounder: bool = False  # bright device-like object correlated with confounder_class
    confounder_class: str = "Cardiomegaly"
    confounder_rate_pos: float = 0.8  # P(device | finding)
    confounder_rate_neg: float = 0.1  # P(device | no finding)
    side_marker: bool = True
    noise: float = 1.0  # scale of quantum/electronic noise
    seed: Optional[int] = None  # generator seed; None = the run's seed


@dataclass
class CsvSourceConfig:
    """Column mapping for the generic ``csv`` source."""

    file: Optional[str] = None  # CSV path; relative paths resolve against data.root
    path_column: str = "path"
    image_root: Optional[str] = None  # image paths are relative to this (default: CSV folder)
    label_columns: list[str] = field(default_factory=list)  # multi-hot 0/1 columns
    # label_columns values other than 0/1/true/false fail unless mapped here: CSV text -> 0, 1,
    # masked (unknown: left out of the loss and metrics for that finding) or uncertain (follows
    # data.uncertain), e.g. CheXpert {"-1": uncertain, "": 0}. Numeric keys also match their float
    # spelling ("-1" matches "-1.0").
    label_map: dict[str, Union[int, str]] = field(default_factory=dict)
    label_column: Optional[str] = None  # one column of '|'-separated names (or one class name)
    label_separator: str = "|"
    patient_column: Optional[str] = None
    split_column: Optional[str] = None
    age_column: Optional[str] = None
    sex_column: Optional[str] = None
    view_column: Optional[str] = None


@dataclass
class HfSourceConfig:
    """Column mapping for ``data.source: hf``: a Hugging Face dataset on the hub or on disk.

    Where it is read from: ``name`` (a hub id, e.g. rajpurkarlab/ReXGradient-160K; gated sets need
    the terms accepted and a token) or ``data.root`` (a ``save_to_disk`` folder, parquet files, an
    ``imagefolder`` with metadata.csv, or a folder of per-split metadata files named by ``metadata``).
    """

    name: Optional[str] = None  # hub dataset id; None = read data.root
    subset: Optional[str] = None  # hub configuration name
    revision: Optional[str] = None
    # per-split metadata files (CSV, JSON or JSON lines) relative to data.root, e.g.
    # {train: train_metadata.json, val: valid_metadata.json}; a ReXGradient-shaped layout
    metadata: dict[str, str] = field(default_factory=dict)
    image_column: Optional[str] = None  # an Image column (bytes or path), or
    path_column: Optional[str] = None  # image path(s) (a list of paths makes one row per image)
    image_root: Optional[str] = None  # path_column is relative to this (relative to data.root)
    label_columns: list[str] = field(default_factory=list)  # 0/1 columns (label_map as data.csv)
    label_map: dict[str, Union[int, str]] = field(default_factory=dict)
    report_columns: list[str] = field(default_factory=list)  # report text, labelled by the report labeler
    # a rules YAML extending the labeler's shipped rules (cxr_helpers/data/labeler_rules.yaml), as for
    # `cxr labels --rules`; relative to the project root
    labeler_rules: Optional[str] = None
    rename: dict[str, str] = field(default_factory=dict)  # label column -> class name (e.g. NIH spelling)
    patient_column: Optional[str] = None
    study_column: Optional[str] = None  # patient id when patient_column is absent
    split_column: Optional[str] = None  # default: the dataset's own splits (train/valid/test)
    age_column: Optional[str] = None
    sex_column: Optional[str] = None
    view_column: Optional[str] = None  # a list of views goes with a list of image paths


@dataclass
class SourceBlockConfig:
    """One entry of ``data.sources``: a source read on its own, then pooled with the others."""

    name: Optional[str] = None  # the manifest's ``source`` value; default: the adapter name
    source: str = "folder"  # nih_cxr14 | folder | csv | hf (file sources)
    root: Optional[str] = None
    # official | chexnet | random, within this source; None = data.split (chexnet only for nih_cxr14
    # blocks, official for the others)
    split: Optional[str] = None
    patient_id_pattern: Optional[str] = None
    max_images: Optional[int] = None  # cap per split for this source (default: data.max_images)
    rename: dict[str, str] = field(default_factory=dict)  # this source's class -> pooled class name
    csv: CsvSourceConfig = field(default_factory=CsvSourceConfig)
    hf: HfSourceConfig = field(default_factory=HfSourceConfig)


@dataclass
class DataConfig:
    """Where images come from and how they are prepared."""

    source: str = "synthetic"  # synthetic | medmnist | nih_cxr14 | folder | csv | hf | pooled (= data.sources)
    root: Optional[str] = None  # data location (file or directory, by source)
    task: Optional[str] = None  # multilabel | multiclass; None = the source's own
    classes: Optional[list[str]] = None  # subset / order of classes; None = all
    image_size: int = 64  # prepared (cached) square size in pixels
    aspect: str = "pad"  # pad | crop | stretch: how non-square images become square
    clahe: bool = False  # contrast-limited histogram equalisation when preparing
    split: str = "official"  # official | chexnet | random (patient-level, seeded)
    val_fraction: float = 0.1  # for generated splits (and val carved from official train)
    test_fraction: float = 0.2  # for generated splits
    max_images: Optional[int] = None  # cap per split for smoke runs
    # Seed of generated splits, validation carved from an official train split and the max_images
    # draw; None = the run's seed. Fix it (e.g. 0) so a seed sweep's runs share one validation set:
    # seed ensembles and paired tests need that.
    split_seed: Optional[int] = None
    cache_dir: str = "outputs/.cache"  # prepared uint8 caches, keyed by source + preprocessing
    patient_id_pattern: Optional[str] = None  # regex with one group: patient id from file name
    medmnist_flag: Optional[str] = None  # e.g. pneumoniamnist; None = from the file name
    num_workers: Optional[int] = None  # cache-building processes; None = cores available
    # DICOM header checks that keep an image out of training (each listed as skipped, with the
    # reason): modality (CT, MR, US, ... anything but CR/DX/RG; OT/SC/absent pass), body_part
    # (BodyPartExamined naming no chest word), lateral (ViewPosition LL/RL/LATERAL, and a CSV
    # view column saying lateral). Remove one to train on such images; [] turns all off.
    # 05_predict warns about all three whatever this says.
    image_checks: list[str] = field(default_factory=lambda: ["modality", "body_part", "lateral"])
    csv: CsvSourceConfig = field(default_factory=CsvSourceConfig)
    hf: HfSourceConfig = field(default_factory=HfSourceConfig)
    # Several sources pooled into one run (data.source then reads "pooled"): one label set (the union,
    # or data.classes), a finding a source cannot have is masked; splits stay within each source.
    sources: list[SourceBlockConfig] = field(default_factory=list)
    # How an uncertain label ("-1" mapped to uncertain in a label_map, or a report's "possible ...")
    # becomes a training target: positive (1), negative (0) or masked (left out of loss and metrics).
    uncertain: str = "masked"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.split_seed is not None and self.split_seed < 0:
            raise ConfigError(f"data.split_seed is {self.split_seed}; it must be an integer >= 0 (or null: the run's seed)")


@dataclass
class ModelConfig:
    """Backbone and weights."""

    arch: str = "resnet18"  # any timm classification model name
    pretrained: bool = False  # timm hub weights (needs network)
    weights: Optional[str] = None  # local state dict to start from (timm/torchvision layout)
    checkpoint: Optional[str] = None  # external trained checkpoint to evaluate without training
    in_chans: int = 1  # 1 = adapt the stem to grey input; 3 = repeat grey to RGB
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0


@dataclass
class AugmentConfig:
    """Train-time augmentation (horizontal flip off: laterality matters on a CXR)."""

    rotate: float = 7.0  # degrees, uniform +-
    scale: float = 0.08  # relative, uniform +-
    translate: float = 0.05  # fraction of size, uniform +-
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.1
    noise: float = 0.0  # Gaussian noise std in [0, 1] intensity units
    hflip: bool = False
    random_resized_crop: bool = False
    rrc_scale_min: float = 0.7


@dataclass
class MixupConfig:
    """Batch mixing in training (train/mixing.py); off by default (both alphas 0).

    mixup: each image becomes ``lam x + (1 - lam) x'`` with a partner from the same batch, lam ~
    Beta(alpha, alpha); cutmix: a box of area ``1 - lam`` (lam ~ Beta(cutmix_alpha, cutmix_alpha))
    is pasted from the partner. Targets are mixed with the same lam (the pasted area for cutmix).
    """

    alpha: float = 0.0  # mixup Beta(alpha, alpha); 0 = no mixup (0.2 to 0.4 is usual)
    cutmix_alpha: float = 0.0  # cutmix Beta(a, a); 0 = no cutmix (1.0 is usual)
    prob: float = 1.0  # share of batches mixed at all
    switch_prob: float = 0.5  # with both on: chance a mixed batch takes cutmix rather than mixup
    off_epochs: int = 0  # no mixing in the last N epochs (timm's mixup_off_epoch)

    @property
    def enabled(self) -> bool:
        """True when some batch can be mixed (an alpha above 0 and prob above 0)."""
        return (self.alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def __post_init__(self) -> None:
        usual = {"alpha": "0 = off, 0.2 to 0.4 is usual", "cutmix_alpha": "0 = off, 1.0 is usual"}
        for key, hint in usual.items():
            v = getattr(self, key)
            if not 0 <= v < float("inf"):
                raise ConfigError(f"train.mixup.{key} is {v!r}; it must be a number >= 0 ({hint})")
        shares = {"prob": "the share of batches mixed", "switch_prob": "the chance of cutmix over mixup"}
        for key, what in shares.items():
            v = getattr(self, key)
            if not 0 <= v <= 1:
                raise ConfigError(f"train.mixup.{key} is {v!r}; it must be in [0, 1] ({what})")
        if self.off_epochs < 0:
            raise ConfigError(
                f"train.mixup.off_epochs is {self.off_epochs}; it must be >= 0 (epochs at the end without mixing)"
            )


@dataclass
class TrainConfig:
    """Optimisation loop."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | plateau | onecycle | none
    warmup_epochs: float = 1.0
    accum_steps: int = 1
    grad_clip: Optional[float] = None
    loss: str = "auto"  # auto | bce | focal | asl | ce
    pos_weight: bool = False  # BCE per-class positive weights from inverse frequency
    class_weights: bool = False  # CE class weights from inverse frequency
    focal_gamma: float = 2.0
    focal_alpha: Optional[float] = None
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    label_smoothing: float = 0.0
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: str = "auto"  # auto | on | off
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    freeze_epochs: int = 0  # train only the head for this many epochs first
    finetune_lr_factor: float = 0.1  # lr multiplier once the backbone is unfrozen
    early_stopping_patience: Optional[int] = None
    monitor: str = "macro_auroc"
    resume: bool = False
    num_workers: Optional[int] = None  # DataLoader workers; None = sized from cores
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch CPU threads; None = all cores when idle, 1 when the load is high
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)

    def __post_init__(self) -> None:
        m = self.mixup
        if m.enabled and m.off_epochs >= self.epochs:
            raise ConfigError(
                f"train.mixup.off_epochs ({m.off_epochs}) leaves none of train.epochs ({self.epochs}) mixed; "
                "lower it, or set train.mixup.alpha and cutmix_alpha to 0 to train without mixing"
            )


@dataclass
class EvalConfig:
    """Error analysis on the test split, choices fitted on validation."""

    n_bootstrap: int = 1000
    ci: float = 0.95
    threshold_policy: str = "youden"  # youden | max_f1 | sensitivity
    target_sensitivity: float = 0.95
    # multiclass, 3+ classes: triage decision (a disease when its p reaches its threshold, else this
    # class); must name one of the classes (normal_class_index: at load against data.classes, and
    # when 02 starts against the prepared classes)
    normal_class: Optional[str] = None
    calibrate: bool = True  # temperature scaling fitted on validation
    n_bins: int = 10  # calibration bins
    targets: dict[str, float] = field(default_factory=dict)  # e.g. {macro_auroc: 0.86}
    robustness: bool = True
    severities: int = 3  # graded severities per corruption
    tta: list[str] = field(default_factory=lambda: ["shift", "scale"])  # shift | scale | hflip views
    age_bands: list[int] = field(default_factory=lambda: [18, 40, 60, 80])
    gallery_size: int = 6
    batch_size: int = 128
    max_images: Optional[int] = 500  # test images used by robustness and TTA (the rest uses all)


@dataclass
class CamConfig:
    """Explanations (pytorch-grad-cam) and their localisation metrics."""

    methods: list[str] = field(
        default_factory=lambda: ["gradcam", "gradcam++", "hirescam", "eigencam", "layercam"]
    )
    target_layer: Optional[str] = None  # dotted module path; None = chosen per model family
    aug_smooth: bool = False
    eigen_smooth: bool = False
    max_images: int = 32  # positives scored per class (every method scores the same images)
    batch_size: int = 16
    iobb_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    faithfulness: bool = True
    gallery_size: int = 4
    split: str = "test"  # split whose images are explained and scored
    box_level: float = 0.5  # IoU/IoBB: map thresholded at this fraction of its max, peak region boxed
    pointing_tolerance: float = 0.067  # pointing game slack, fraction of image side (Zhang et al.: 15 px at 224)
    min_map_cells: int = 4  # automatic layer: deepest stage whose map has at least this many cells a side
    random_seeds: int = 5  # random-map baseline averaged over this many seeds
    faithfulness_images: int = 16  # (image, class) pairs scored by deletion/insertion per method
    faithfulness_steps: int = 6  # deletion/insertion curve points (excluding 0)
    road: bool = False  # also ROAD (pytorch-grad-cam; slower: a sparse solve per image and percentile)
    compare_run: Optional[str] = None  # shortcut check: run dir / checkpoint of a model trained without the confounder
    shortcut_epochs: int = 3  # shortcut check without compare_run: quick with/without models, epochs each
    shortcut_max_train: int = 800  # ... and at most this many training images each


@dataclass
class PredictConfig:
    """Inference report for new images."""

    inputs: list[str] = field(default_factory=list)  # files or folders (PNG/JPG/DICOM)
    cam: bool = True  # Grad-CAM overlay per predicted finding
    cam_method: str = "gradcam"  # one of cam.methods' names
    max_images: int = 50  # images predicted per call (the rest are listed as skipped)
    max_panels: int = 8  # per-image figures shown in the report
    demo_images: int = 5  # test-split images written to PNG when no inputs are given (+ a DICOM copy of the first)
    batch_size: int = 64


@dataclass
class ReportConfig:
    """How reports are rendered."""

    hide_code: bool = False  # True: no code in the HTML; False: code collapsed behind a toggle


@dataclass
class TrackingConfig:
    """Optional experiment tracking."""

    tensorboard: bool = True  # write event files when tensorboard is installed
    mlflow: Optional[str] = None  # tracking URI; needs the mlflow extra


@dataclass
class Config:
    """A whole run."""

    name: str = "run"
    seed: int = 0
    notebooks: list[str] = field(
        default_factory=lambda: ["01_eda", "02_train", "03_error_analysis", "04_gradcam", "05_predict"]
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        d = self.data
        task = d.task or KNOWN_SOURCE_TASKS.get(d.source)
        if self.eval.normal_class and (d.classes or task == "multilabel"):
            normal_class_index(self.eval.normal_class, list(d.classes or []), task or "multiclass")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " | ".join(_type_name(a) for a in args)
        return f"{inner} or null" if len(args) < len(typing.get_args(tp)) else inner
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping {_type_name(k)} -> {_type_name(v)}"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked against type ``tp`` (int -> float allowed), or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
        k_tp, v_tp = typing.get_args(tp)
        return {_coerce(k, k_tp, where): _coerce(v, v_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if tp is str and isinstance(value, bool):
        return "on" if value else "off"  # YAML 1.1 reads on/off (and yes/no) as booleans
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} expects bool (true/false), got {type(value).__name__} {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where} expects int, got bool {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where} expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _label_map(value: Any, where: str) -> dict[str, Union[int, str]]:
    """A label_map as {cell text: 0, 1, "masked" or "uncertain"}; one-line ConfigError for what YAML misreads."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f'{where} expects a mapping of cell value -> 0, 1, masked or uncertain (e.g. {{"-1": uncertain, "": 0}}), '
            f"got {value!r}"
        )
    out = {}
    for k, v in value.items():
        if isinstance(k, bool):
            raise ConfigError(
                f'{where}: YAML reads the key {k!r} as a boolean (yes/no/on/off/true/false); quote it, e.g. "yes": 1'
            )
        numeric = isinstance(v, (bool, int, float)) and v in (0, 1)
        target = int(v) if numeric else LABEL_TARGETS.get(str(v).strip().lower())
        if target is None:
            raise ConfigError(
                f"{where}: value {v!r} for {k!r} must be 0 or 1 (or negative/positive), masked (unknown: left "
                "out of loss and metrics) or uncertain (follows data.uncertain)"
            )
        out["" if k is None else str(k).strip()] = target
    return out


_NORMALIZERS = {
    "data.csv.label_map": _label_map,
    "data.hf.label_map": _label_map,
    "data.sources[].csv.label_map": _label_map,
    "data.sources[].hf.label_map": _label_map,
}


def _check_list_choice(value: list, dotted: str, where: str) -> None:
    allowed = LIST_CHOICES[dotted]
    bad = [v for v in value if v not in allowed]
    if bad:
        raise ConfigError(
            f"{where} has {', '.join(map(repr, bad))}; allowed items: {', '.join(allowed)} (an empty list [] turns them all off)"
        )


def _build(cls: type, raw: Any, prefix: str, origin: str) -> Any:
    """Instantiate dataclass ``cls`` from a raw mapping, strictly."""
    where = f"{origin}: key '{prefix.rstrip('.')}'" if prefix else origin
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(fields)
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}' (allowed here: {allowed})")
        tp = hints[key]
        item_tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.", origin)
        elif item_tp is not None and dataclasses.is_dataclass(item_tp):
            if not isinstance(value, list):
                raise ConfigError(f"{origin}: key '{prefix}{key}' expects a list of sections, got {value!r}")
            kwargs[key] = [_build(item_tp, v, f"{prefix}{key}[{i}].", origin) for i, v in enumerate(value)]
        else:
            dotted = re.sub(r"\[\d+\]", "[]", f"{prefix}{key}")
            if dotted in _NORMALIZERS:
                value = _NORMALIZERS[dotted](value, f"{origin}: key '{prefix}{key}'")
            value = _coerce(value, tp, f"{origin}: key '{prefix}{key}'")
            if dotted in LIST_CHOICES:
                _check_list_choice(value, dotted, f"{origin}: key '{prefix}{key}'")
            if typing.get_origin(tp) is dict and fields[key].default_factory is not dataclasses.MISSING:
                value = {**fields[key].default_factory(), **value}  # a mapping overrides key by key
            allowed = CHOICES.get(dotted)
            if allowed is not None and value not in allowed:
                names = ", ".join("null" if a is None else a for a in allowed)
                raise ConfigError(f"{origin}: key '{prefix}{key}' is {value!r}; allowed: {names}")
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _set_path(raw: dict, dotted: str, value: Any, origin: str) -> None:
    """Set ``a.b.c=value`` in the raw mapping, checking each step against the schema."""
    parts = dotted.split(".")
    cls: Any = Config
    node = raw
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else None
        if hints is None:
            # inside a dict-typed field: remaining parts form the key path
            node[".".join(parts[i:])] = value
            return
        if part not in hints:
            allowed = ", ".join(hints)
            raise ConfigError(f"{origin}: unknown key '{'.'.join(parts[: i + 1])}' (allowed here: {allowed})")
        tp = hints[part]
        last = i == len(parts) - 1
        if last:
            node[part] = value
            return
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif typing.get_origin(tp) is dict:
            cls = None
        else:
            raise ConfigError(f"{origin}: key '{'.'.join(parts[: i + 1])}' is a value, not a section")
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        node = child


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value``; the value is parsed as YAML (``3`` int, ``true`` bool, ``[a, b]`` list)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value (e.g. train.epochs=3)")
    key, _, value = text.partition("=")
    key = key.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a YAML config, then apply ``key=value`` overrides (type-checked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for the shipped ones)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        hint = (
            "; in double quotes YAML reads a backslash as an escape: put regexes in single quotes,"
            " e.g. patient_id_pattern: '(\\d+)_'"
            if "escape" in problem
            else ""
        )
        raise ConfigError(f"{path}:{line} is not valid YAML: {problem}{hint}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    raw.setdefault("name", path.stem)
    for text in overrides:
        key, value = parse_override(text)
        _set_path(raw, key, value, f"{path} (override --set {text})")
    return _pooled_source(_build(Config, raw, "", str(path)), raw, str(path))


# data keys a pooled run takes from each data.sources block, never from data itself
_BLOCK_ONLY = ("root", "patient_id_pattern", "csv", "hf")


def _pooled_source(cfg: Config, raw: dict[str, Any], origin: str) -> Config:
    """``data.source`` reads ``pooled`` exactly when ``data.sources`` lists blocks (so nothing that
    looks at data.source mistakes a pooled run for the default synthetic one). Refused in one
    line: an empty ``data.sources`` list with no data.source (it would silently run synthetic
    data), and with blocks, a top-level data.source other than pooled or a data key that only a
    block can hold (``_BLOCK_ONLY``: it would be silently ignored)."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    if "sources" in data and not cfg.data.sources and "source" not in data:
        raise ConfigError(f"{origin}: data.sources is an empty list; list source blocks (README: several sources "
                          "in one run) or remove it and set data.source")
    if not cfg.data.sources:
        if cfg.data.source == "pooled":
            raise ConfigError(f"{origin}: data.source is pooled but data.sources lists no source blocks")
        return cfg
    if data.get("source", "pooled") != "pooled":
        raise ConfigError(f"{origin}: data.source is {data['source']!r} but data.sources lists blocks; remove "
                          "data.source (each block names its own source)")
    default = DataConfig()
    for key in _BLOCK_ONLY:
        if getattr(cfg.data, key) != getattr(default, key):
            raise ConfigError(f"{origin}: data.{key} is set but data.sources lists blocks, which ignore it; move it "
                              f"into each block (data.sources[i].{key})")
    cfg.data.source = "pooled"
    return cfg


def config_from_dict(raw: dict[str, Any], origin: str = "<dict>") -> Config:
    """Validate a plain mapping (e.g. a checkpoint's stored config) into a Config."""
    return _pooled_source(_build(Config, dict(raw), "", origin), dict(raw), origin)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config, exactly what ran, as YAML."""
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
