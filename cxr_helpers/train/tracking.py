"""Experiment trackers for ``train``: TensorBoard and MLflow, each only when enabled and installed.

Only rank 0 logs. A missing package or an unreachable MLflow server is one warning, never a
stopped run.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_helpers.config import Config


class Loggers:
    """TensorBoard (``run_dir/tensorboard``) and MLflow (``tracking.mlflow`` URI) for one run."""

    def __init__(self, cfg: Config, run_dir: Path, active: bool):
        self.tb = None
        self.mlflow = None
        if not active:
            return
        if cfg.tracking.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except Exception:
                self.tb = None
        if cfg.tracking.mlflow:
            self._start_mlflow(cfg)

    def _start_mlflow(self, cfg: Config) -> None:
        try:
            import mlflow

            mlflow.set_tracking_uri(cfg.tracking.mlflow)
            mlflow.set_experiment("cxr")
            mlflow.start_run(run_name=cfg.name)
            flat = pd.json_normalize(cfg.to_dict(), sep=".").iloc[0].to_dict()
            mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})
            self.mlflow = mlflow
        except ImportError:
            warnings.warn("tracking.mlflow is set but mlflow is not installed: pip install 'cxr[tracking]' "
                          "(training continues without MLflow)", stacklevel=3)
        except Exception as exc:  # noqa: BLE001 - a tracking server problem must not stop training
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"tracking.mlflow: cannot log to {cfg.tracking.mlflow}: {first[:200]} "
                          "(training continues without MLflow)", stacklevel=3)

    def log(self, row: dict[str, Any], epoch: int) -> None:
        """The numeric entries of one history row, at step ``epoch``."""
        nums = {
            k: float(v)
            for k, v in row.items()
            if isinstance(v, (int, float)) and v is not None and k != "epoch"
        }
        if self.tb is not None:
            for k, v in nums.items():
                self.tb.add_scalar(k, v, epoch)
            self.tb.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: v for k, v in nums.items() if math.isfinite(v)}, step=epoch)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
