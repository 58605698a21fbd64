"""A throwaway project whose notebooks stand in for 02/03 in a few hundred milliseconds, for `cxr sweep` tests.

``02_train`` writes what the real one does for a sweep (``history.csv`` one row per epoch, with a
short sleep each; ``train_summary.json``; ``predictions/{val,test}.csv``) from numbers made from
the config: validation AUROC ``0.6 + 100 * train.lr`` (capped at 0.99) and test AUROC 0.5 for
every run, so a search that read test would see a flat objective. ``03_eval`` writes
``metrics.json`` with that test AUROC. ``train.epochs=0`` makes 02 fail (a failed point).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

SETUP = 'from cxr_helpers.run.notebook import setup\nrun = setup(globals(), "{name}")'
PARAMS = 'config = "configs/t.yaml"\nrun_dir = "outputs/t"\noverrides = []'

TRAIN = """
import json, time
import numpy as np, pandas as pd
cfg = run.cfg
if cfg.train.epochs < 1:
    raise ValueError("no epochs on purpose")
val = min(0.99, 0.6 + 100 * cfg.train.lr)
rows = []
for e in range(1, cfg.train.epochs + 1):
    time.sleep(cfg.train.warmup_epochs)
    rows.append({"epoch": e, "val_macro_auroc": val - 0.01 * (cfg.train.epochs - e)})
    pd.DataFrame(rows).to_csv(run.path("history.csv"), index=False)
run.path("train_summary.json").write_text(json.dumps({"best_val_macro_auroc": val, "best_epoch": cfg.train.epochs}))
rng = np.random.default_rng(cfg.seed)
for split, n in (("val", 20), ("test", 30)):
    y = np.arange(n) % 2
    p = rng.uniform(size=n)
    pd.DataFrame({"image_id": [f"{split}{i}" for i in range(n)], "patient_id": [f"p{split}{i}" for i in range(n)],
                  "y_normal": 1 - y, "y_pneumonia": y, "p_normal": 1 - p, "p_pneumonia": p}).to_csv(
        run.path("predictions", f"{split}.csv"), index=False)
"""

EVAL = """
import json
m = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
run.path("metrics.json").write_text(json.dumps({"split": "test", "task": "multiclass",
    "classes": ["normal", "pneumonia"], "macro_auroc": m, "per_class": {}}))
"""

CONFIG = """name: t
seed: 0
notebooks: [02_train, 03_eval]
data:
  source: synthetic
  image_size: 16
  split: random
  cache_dir: {cache}
  synthetic:
    n_images: 60
train:
  epochs: 2
  lr: 0.001
  warmup_epochs: 0.3
"""


def _notebook(path: Path, name: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(SETUP.format(name=name)), nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "cxr", "display_name": "Python (cxr)", "language": "python"}
    nbformat.write(nb, str(path))


def make_project(root: Path) -> Path:
    """Write the stand-in project under ``root`` (pyproject, notebooks/, configs/t.yaml); returns root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname='t'\n")
    (root / "notebooks").mkdir(parents=True)
    (root / "configs").mkdir()
    _notebook(root / "notebooks" / "02_train.ipynb", "02_train", TRAIN)
    _notebook(root / "notebooks" / "03_eval.ipynb", "03_eval", EVAL)
    (root / "configs" / "t.yaml").write_text(CONFIG.format(cache=root / "cache"))
    return root


def sweep_process(root: Path, *args: str) -> subprocess.Popen:
    """``cxr sweep configs/t.yaml ARGS`` in the stand-in project, as its own process."""
    env = {k: v for k, v in os.environ.items() if k != "CXR_OUTPUTS"} | {"CXR_ROOT": str(root)}
    return subprocess.Popen([sys.executable, "-m", "cxr_helpers.run.cli", "sweep", "configs/t.yaml", "--no-progress",
                             *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def runs_started(run_dir: Path) -> int:
    """How many times ``cxr sweep`` started this point (one ``$ cxr run`` line each in its log)."""
    log = run_dir / "sweep_point.log"
    return log.read_text().count("\n$ ") if log.is_file() else 0
