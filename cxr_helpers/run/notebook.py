"""What every notebook's setup cell calls: check parameters, load the config, open the run dir.

Papermill injects any ``-p name value`` it is given without checking the name, so a typo
(``-p epoch 3``) would run with defaults. ``setup`` rejects parameters a notebook does not take.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxr_helpers.config import Config, load_config
from cxr_helpers.paths import outputs_root, resolve_path
from cxr_helpers.progress import text_bars_when_headless

COMMON_PARAMS = ("config", "run_dir", "overrides")
NOTEBOOK_PARAMS: dict[str, tuple[str, ...]] = {
    "01_eda": COMMON_PARAMS,
    "02_train": COMMON_PARAMS,
    "03_error_analysis": COMMON_PARAMS,
    "04_gradcam": COMMON_PARAMS,
    "05_predict": COMMON_PARAMS + ("inputs",),
    "06_compare": ("sweep_dir", "run_dirs", "out_dir"),
}
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class ParameterError(ValueError):
    """A notebook received a parameter it does not take."""


@dataclass
class Run:
    """A run as seen from one notebook: resolved config and the run directory."""

    cfg: Config
    dir: Path
    config_path: Path
    notebook: str
    params: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        """A path inside the run dir, parent folders created."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def notebook_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The user-level names defined in a kernel namespace (i.e. the notebook's parameters)."""
    out = {}
    for name, value in namespace.items():
        if name.startswith("_") or name in _IPYTHON_NAMES:
            continue
        if isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        out[name] = value
    return out


def check_parameters(notebook: str, params: dict[str, Any]) -> None:
    """Raise ParameterError for parameters ``notebook`` does not take."""
    allowed = NOTEBOOK_PARAMS.get(notebook, COMMON_PARAMS)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ParameterError(
            f"{notebook}: unknown parameter(s) {', '.join(unknown)} (allowed: {', '.join(allowed)}); "
            "set config values with overrides, e.g. -p overrides '[\"train.epochs=3\"]'"
        )


def setup(namespace: dict[str, Any], notebook: str) -> Run:
    """Validate the parameters in ``namespace``, load the config and open the run dir."""
    params = notebook_parameters(namespace)
    check_parameters(notebook, params)
    text_bars_when_headless()
    # without ipywidgets tqdm.auto falls back to text bars; its warning would sit in every report
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    overrides = _as_list(params.get("overrides"))
    config_path = resolve_path(params.get("config", "configs/demo.yaml"))
    cfg = load_config(config_path, overrides)
    run_dir = resolve_path(params["run_dir"]) if params.get("run_dir") else outputs_root() / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    _configure_plots()
    return Run(cfg=cfg, dir=run_dir, config_path=config_path, notebook=notebook, params=params)


def _as_list(value: Any) -> list[str]:
    """Overrides as a list: papermill's ``-p overrides '["a=1"]'`` arrives as a string."""
    if not value:
        return []
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
        return [str(v) for v in parsed] if isinstance(parsed, list) else [value]
    return [str(v) for v in value]


def _configure_plots() -> None:
    """Consistent, compact figures in every report."""
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 90, "savefig.dpi": 90, "figure.max_open_warning": 0})
    except ImportError:  # pragma: no cover
        pass
