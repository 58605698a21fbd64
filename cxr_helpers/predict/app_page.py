"""What the ``cxr app`` page runs in its kernel: the model's description, then the upload panel.

``run.app_cmd`` serves a one-cell notebook calling ``show_app(RUN_DIR)`` with Voilà (code hidden).
The page states, before anything else, that this is for research use, which model answers, what
it was trained on and how its scores become findings. A run dir whose model cannot be loaded
shows that one line in the page instead of the panel.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import yaml

from cxr_helpers.config import Config, config_from_dict
from cxr_helpers.predict.predictor import RESEARCH_NOTE, Predictor, load_predictor
from cxr_helpers.predict.report import trained_on_synthetic
from cxr_helpers.predict.result_html import STYLE, model_html
from cxr_helpers.predict.widget import JUPYTER_UPLOAD_MB, upload_panel
from cxr_helpers.train.summary import read_train_summary


def run_config(run_dir: Path) -> Optional[Config]:
    """The run's ``config.yaml`` (what ran), or None when the run dir has none."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))


def training_data_sentence(predictor: Predictor, run_dir: Path) -> str:
    """What the model learned from, in a few words: the data source (and dataset), the config's
    name, how many training images and at what size (``train_summary.json`` where training wrote it)."""
    cfg = predictor.meta.config if predictor.meta is not None and predictor.meta.config is not None else None
    if cfg is None:
        return "unknown (the checkpoint carries no config)"
    d = cfg.data
    sources = [b.source for b in d.sources] if d.sources else [d.source]
    what = ", ".join(sources) + (f" ({d.medmnist_flag})" if d.medmnist_flag else "")
    text = f"{what}, config '{cfg.name}'"
    summary = read_train_summary(run_dir) or {}
    if summary.get("n_train"):
        text += f", {summary['n_train']} training images"
    return text + f", prepared at {predictor.image_size} px"


def page_header(predictor: Predictor, run_dir: Path) -> str:
    """The page head's HTML (``result_html.model_html``) for this run's predictor."""
    return model_html(
        arch=predictor.meta.arch if predictor.meta is not None else "?",
        task=predictor.task,
        classes=predictor.classes,
        trained_on=training_data_sentence(predictor, run_dir),
        rule=predictor.rule_sentence,
        threshold_source=predictor.threshold_source,
        research_note=RESEARCH_NOTE,
        synthetic=trained_on_synthetic(predictor),
        warnings=predictor.warnings,
    )


def show_app(run_dir: str | Path, max_upload_mb: int = JUPYTER_UPLOAD_MB) -> Optional[Any]:
    """Display the page for ``run_dir`` (Voilà renders it): header, then the upload panel, which
    states the server's upload limit ``max_upload_mb``. Returns the panel, or None when the
    predictor cannot be loaded (the reason is shown instead)."""
    import ipywidgets as w
    from IPython.display import display

    run_dir = Path(run_dir)
    display(w.HTML(f"{STYLE}<h2>cxr · upload chest X-rays: <code>{html.escape(run_dir.name)}</code></h2>"))
    try:
        cfg = run_config(run_dir)
        predictor = load_predictor(run_dir, cfg, device=cfg.train.device if cfg is not None else "auto")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        display(w.HTML(f"<p class='cxr-error'>cxr app: the model of {run_dir} cannot be used: {html.escape(first)}</p>"))
        return None
    display(w.HTML(page_header(predictor, run_dir)))
    panel = upload_panel(predictor, max_upload_mb)
    display(panel.widget)
    return panel
