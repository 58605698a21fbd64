"""The training function: the same ``train()`` serves the notebook, ``cxr train`` and torchrun.

One call trains a timm backbone on a PreparedData cache and writes into ``run_dir``:
``model/best.pt``, ``model/last.pt``, ``history.csv`` (one row per epoch),
``predictions/{val,test}.csv`` from the best checkpoint, ``train_summary.json``, and
TensorBoard / MLflow logs when enabled and installed. Under ``torchrun`` (env ``WORLD_SIZE``)
it runs DistributedDataParallel: each rank sees its share of the rows, validation predictions
are gathered from all ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from .augment import BatchAugment
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, load_config, save_config
from .data_types import PreparedData
from .dataset import default_num_workers, make_loader, set_loader_epoch, to_model_input
from .losses import build_loss, class_balance
from .models import (
    count_parameters,
    create_model,
    forward_flops,
    load_weights,
    model_norm,
    set_backbone_trainable,
)


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, bad settings); one line saying what to do."""


@dataclass
class TrainResult:
    """What ``train`` returns; everything in it is also on disk in ``run_dir``."""

    run_dir: Path
    best_epoch: int
    best_metric: Optional[float]
    monitor: str
    history: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    stopped_early: bool = False


# ---------------------------------------------------------------- device, precision, seeding


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            f"train.device: '{name}' requested but no CUDA GPU is visible; use train.device=cpu"
        )
    return dev


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype or None. ``auto``: bf16 on GPUs that have it (else fp16) and on CPUs with
    bf16 instructions (measured here: resnet18@64 ~350 -> ~500 img/s); fp32 elsewhere."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise TrainingError("train.amp: fp16 autocast needs a GPU; use train.amp=bf16 or off on CPU")
        return torch.float16
    if amp != "auto":
        raise TrainingError(f"train.amp: unknown value '{amp}' (allowed: auto, bf16, fp16, off)")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def has_depthwise_conv(model: nn.Module) -> bool:
    """True for models with depthwise convolutions (EfficientNet, MobileNet, ConvNeXt)."""
    return any(
        isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules()
    )


def resolve_model_amp(amp: str, device: torch.device, model: nn.Module) -> Optional[torch.dtype]:
    """``resolve_amp``, except that ``auto`` stays fp32 on CPU for depthwise-conv models: measured
    here, bf16 made efficientnet_b0 0.6-1.0x as fast (docs/benchmarks.md)."""
    dtype = resolve_amp(amp, device)
    if amp == "auto" and device.type == "cpu" and dtype is not None and has_depthwise_conv(model):
        return None
    return dtype


def resolve_channels_last(value: str, device: torch.device) -> bool:
    """``auto``: on for GPUs (+20-47 % for ResNet/DenseNet); off on CPU, where it measured no gain."""
    if value not in ("auto", "on", "off"):
        raise TrainingError(f"train.channels_last: unknown value '{value}' (allowed: auto, on, off)")
    return value == "on" or (value == "auto" and device.type == "cuda")


def default_threads(device: torch.device) -> int:
    """CPU threads for torch: the cores this process may use (env CXR_THREADS overrides).

    Deliberately not adapted to the machine's load: the thread count changes float reduction
    order, and the same seed must give the same history on the same machine. On a box shared
    with other jobs, set ``train.threads: 1`` (measured here under load ~7: resnet18@64 took
    0.33 s per batch of 64 with 1 thread but 1.5-9 s with 2).
    """
    from .dataset import cores_available

    env = os.environ.get("CXR_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, cores_available())


# Files fitted on (or describing) a trained model; a new training run makes them stale.
DOWNSTREAM_FILES = ("thresholds.json", "calibration.json", "metrics.json", "report.md", "cam_metrics.json",
                    "predictions_new.csv", "predictions_new.json")


def clear_downstream(run_dir: Path) -> list[str]:
    """Remove results of the previous model (thresholds, calibration, metrics, CAM scores) from a run dir.

    Without this, ``cxr predict`` and 05 would apply thresholds and temperatures fitted on the old
    model to the new one, and the index page would show the old model's metrics.
    """
    removed = []
    for name in DOWNSTREAM_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- learning-rate schedule


class LRSchedule:
    """Per-step learning rate: warm-up, then cosine / one-cycle / plateau / constant.

    Stateful only through ``plateau_scale``/``best``/``bad`` (for ``plateau``), saved in
    checkpoints. Two-phase training multiplies by ``finetune_lr_factor`` after the freeze.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int):
        if kind not in ("cosine", "plateau", "onecycle", "none"):
            raise TrainingError(
                f"train.scheduler: unknown '{kind}' (allowed: cosine, plateau, onecycle, none)"
            )
        self.opt, self.kind = optimizer, kind
        self.total, self.warmup = max(1, total_steps), max(0, warmup_steps)
        self.plateau_scale, self.best, self.bad, self.patience = 1.0, None, 0, 2
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])

    def factor(self, step: int) -> float:
        if self.kind == "onecycle":
            w = self.warmup or max(1, int(0.3 * self.total))
            if step < w:
                return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / w))
            t = min(1.0, (step - w) / max(1, self.total - w))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.kind == "cosine":
            t = min(1.0, max(0, step - self.warmup) / max(1, self.total - self.warmup))
            return warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
        if self.kind == "plateau":
            return warm * self.plateau_scale
        return warm

    def apply(self, step: int, phase_factor: float = 1.0) -> float:
        f = self.factor(step) * phase_factor
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f
        return self.opt.param_groups[0]["lr"]

    def epoch_end(self, value: Optional[float], higher_better: bool) -> None:
        if self.kind != "plateau" or value is None:
            return
        better = self.best is None or (value > self.best if higher_better else value < self.best)
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.plateau_scale *= 0.5
                self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale, self.best, self.bad = state["plateau_scale"], state["best"], state["bad"]


# ---------------------------------------------------------------- metrics


def auroc_per_class(y: np.ndarray, p: np.ndarray) -> list[Optional[float]]:
    """One-vs-rest AUROC per column of (N, C) truth/scores; None where a class lacks both labels."""
    from sklearn.metrics import roc_auc_score

    out: list[Optional[float]] = []
    for k in range(y.shape[1]):
        yk = y[:, k]
        if yk.min() == yk.max() or not np.isfinite(p[:, k]).all():
            out.append(None)
        else:
            out.append(float(roc_auc_score(yk, p[:, k])))
    return out


def macro(values: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def probs_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """(N, C) logits -> (N, C) probabilities: softmax for multiclass, sigmoid per class otherwise."""
    logits = logits.float()
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


# ---------------------------------------------------------------- distributed helpers


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """True under torchrun, even with one process: then the DDP path (process group, sampler) runs too."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def _gather(rows: np.ndarray, logits: np.ndarray, world: int) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' (rows, logits), deduplicated (DistributedSampler pads with repeats), by row."""
    if world > 1:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (rows, logits))
        rows = np.concatenate([r for r, _ in parts])
        logits = np.concatenate([lg for _, lg in parts])
    rows, first = np.unique(rows, return_index=True)
    return rows, logits[first]


# ---------------------------------------------------------------- the loop


class _EMA:
    """Exponential moving average of floating-point weights (buffers copied as they are)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.state[k].copy_(v)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def _predict_logits(
    model: nn.Module, loader, device, mean, std, in_chans, amp_dtype, channels_last
) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    rows, outs = [], []
    for x_u8, _, r in loader:
        x = to_model_input(x_u8, device, mean, std, in_chans, None, channels_last)
        with _autocast(device, amp_dtype):
            out = model(x)
        outs.append(out.float().cpu())
        rows.append(r)
    if not outs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return torch.cat(rows).numpy(), torch.cat(outs).numpy()


def _monitor_value(row: dict[str, Any], monitor: str) -> tuple[Optional[float], bool]:
    key = {"macro_auroc": "val_macro_auroc", "auroc": "val_macro_auroc", "loss": "val_loss"}.get(
        monitor, monitor
    )
    if key not in row:
        raise TrainingError(
            f"train.monitor: unknown metric '{monitor}' (use macro_auroc, val_loss or a history column)"
        )
    return row[key], "loss" not in key


def write_predictions(
    path: Path, prepared: PreparedData, rows: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> Path:
    """``image_id, patient_id, y_<class>..., p_<class>...`` one row per image (DESIGN.md format)."""
    m = prepared.manifest.iloc[rows]
    y = prepared.labels()[rows]
    df = pd.DataFrame(
        {
            "image_id": m["image_id"].astype(str).to_numpy(),
            "patient_id": m["patient_id"].astype(str).to_numpy(),
        }
    )
    for k, c in enumerate(classes):
        df[f"y_{c}"] = y[:, k].astype(int)
    for k, c in enumerate(classes):
        df[f"p_{c}"] = probs[:, k].astype(float)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


class _Loggers:
    """TensorBoard and MLflow, each only when enabled and importable (rank 0 only)."""

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
                              "(training continues without MLflow)", stacklevel=2)
            except Exception as exc:  # noqa: BLE001 - a tracking server problem must not stop training
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                warnings.warn(f"tracking.mlflow: cannot log to {cfg.tracking.mlflow}: {first[:200]} "
                              "(training continues without MLflow)", stacklevel=2)

    def log(self, row: dict[str, Any], epoch: int) -> None:
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


def _history_csv(run_dir: Path, history: list[dict[str, Any]]) -> None:
    df = pd.DataFrame(history)
    tmp = run_dir / ".history.csv.tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, run_dir / "history.csv")


def _clean(obj: Any) -> Any:
    """Plain Python types only (checkpoints are read with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    return obj


def _load_eval_checkpoint(model: nn.Module, path: str) -> dict:
    """Weights for ``model.checkpoint``: a cxr checkpoint, or an external timm/torchvision state dict."""
    try:
        ck = load_checkpoint(path)
        model.load_state_dict(ck["model"])
        return {"loaded": len(ck["model"]), "source": "cxr checkpoint"}
    except Exception:
        info = load_weights(model, path, key="model.checkpoint", strict_head=True)
        info["source"] = "external state dict"
        return info


def train(
    cfg: Config, run_dir: str | Path, prepared: Optional[PreparedData] = None, progress: bool = True
) -> TrainResult:
    """Train ``cfg.model`` on ``prepared`` (built from ``cfg.data`` when None) and write ``run_dir``.

    With ``cfg.model.checkpoint`` set, no training happens: the checkpoint is evaluated on
    val/test and saved as ``model/best.pt`` so later notebooks can use it.
    Raises TrainingError / ModelError / CheckpointError with one-line messages.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    tc = cfg.train
    rank, world, local_rank = _dist_env()
    distributed = world > 1 or launched_by_torchrun()
    device = resolve_device(tc.device, local_rank)
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    is_main = rank == 0
    if tc.threads:
        torch.set_num_threads(tc.threads)
    elif device.type == "cpu":
        torch.set_num_threads(max(1, default_threads(device) // world))
    if is_main:
        (run_dir / "model").mkdir(parents=True, exist_ok=True)
        clear_downstream(run_dir)

    if prepared is None:
        from .cache import prepare

        prepared = prepare(cfg)
    classes, task = list(prepared.classes), prepared.task
    targets = prepared.labels()
    idx = {s: prepared.split_index(s) for s in ("train", "val", "test")}
    eval_only = bool(cfg.model.checkpoint)
    if not eval_only and len(idx["train"]) == 0:
        raise TrainingError("data: the train split is empty; check data.split / data.max_images")

    channels_last = resolve_channels_last(tc.channels_last, device)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, num_classes=len(classes))
    amp_dtype = resolve_model_amp(tc.amp, device, model)
    if eval_only:
        load_info = _load_eval_checkpoint(model, cfg.model.checkpoint)
    mean, std = model_norm(model, cfg.model.in_chans)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    flops = forward_flops(model, cfg.model.in_chans, prepared.image_size) if is_main else None

    balance = class_balance(targets[idx["train"]]) if len(idx["train"]) else None
    loss_choice = build_loss(tc, task, targets[idx["train"]] if len(idx["train"]) else targets[:1] * 0)
    loss_fn = loss_choice.module.to(device)
    nw = default_num_workers(device) if tc.num_workers is None else tc.num_workers
    eval_bs = max(tc.batch_size, 128)
    val_loader = make_loader(
        prepared.images, targets, idx["val"], eval_bs, False, device, nw, cfg.seed, distributed=distributed
    )
    history: list[dict[str, Any]] = []
    best_metric: Optional[float] = None
    best_epoch = 0
    start_epoch = 0
    stopped_early = False
    stop_reason = "completed"
    bad_epochs = 0
    loggers = _Loggers(cfg, run_dir, is_main and not eval_only)
    ema: Optional[_EMA] = None
    ips_list: list[float] = []

    def payload(epoch: int, include_train_state: bool) -> dict[str, Any]:
        weights = ema.state if ema is not None else model.state_dict()
        p: dict[str, Any] = {
            "model": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
            "epoch": epoch,
            "history": _clean(history),
            "config": _clean(cfg.to_dict()),
            "classes": classes,
            "task": task,
            "arch": cfg.model.arch,
            "in_chans": cfg.model.in_chans,
            "image_size": prepared.image_size,
            "mean": mean,
            "std": std,
            "best_metric": _clean(best_metric),
            "best_epoch": best_epoch,
            "monitor": tc.monitor,
            "loss": loss_choice.name,
        }
        if include_train_state:
            if ema is not None:
                p["raw_model"] = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            p["optimizer"] = optimizer.state_dict()
            p["scheduler"] = sched.state_dict()
            p["scaler"] = scaler.state_dict() if scaler is not None else {}
            p["bad_epochs"] = bad_epochs
        return p

    if eval_only:
        rows, logits = _predict_logits(
            model, val_loader, device, mean, std, cfg.model.in_chans, amp_dtype, channels_last
        )
        rows, logits = _gather(rows, logits, world)
        row = _eval_row(0, None, rows, logits, targets, classes, task, loss_fn, 0.0, 0.0, 0.0)
        history.append(row)
        best_metric, _ = _monitor_value(row, tc.monitor)
        stop_reason = f"evaluated model.checkpoint ({load_info['source']}) without training"
        optimizer = sched = scaler = None
        if is_main:
            save_checkpoint(run_dir / "model" / "best.pt", payload(0, False))
    else:
        train_loader = make_loader(
            prepared.images,
            targets,
            idx["train"],
            tc.batch_size,
            True,
            device,
            nw,
            cfg.seed,
            drop_last=len(idx["train"]) > tc.batch_size,
            distributed=distributed,
        )
        accum = max(1, tc.accum_steps)
        steps_per_epoch = max(1, math.ceil(len(train_loader) / accum))
        decay, no_decay = [], []
        for p in model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": tc.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        try:
            optimizer = torch.optim.AdamW(groups, lr=tc.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            optimizer = torch.optim.AdamW(groups, lr=tc.lr)
        sched = LRSchedule(
            optimizer,
            tc.scheduler,
            tc.epochs * steps_per_epoch,
            int(round(tc.warmup_epochs * steps_per_epoch)),
        )
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        if tc.ema:
            ema = _EMA(model, tc.ema_decay)
        last_path = run_dir / "model" / "last.pt"
        if tc.resume and last_path.is_file():
            ck = load_checkpoint(last_path, map_location="cpu")
            model.load_state_dict(ck.get("raw_model", ck["model"]))
            if ema is not None:
                ema.state = {k: v.to(device) for k, v in ck["model"].items()}
            optimizer.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            history = list(ck["history"])
            start_epoch = int(ck["epoch"])
            best_metric, best_epoch = ck.get("best_metric"), int(ck.get("best_epoch", 0))
            bad_epochs = int(ck.get("bad_epochs", 0))
        fwd: nn.Module = model
        if distributed:
            fwd = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if tc.compile:
            fwd = torch.compile(fwd)
        augment = BatchAugment(tc.augment, cfg.seed, device)
        higher_better = True
        bar = None
        if progress and is_main:
            import warnings

            with warnings.catch_warnings():  # "IProgress not found" when ipywidgets is absent
                warnings.simplefilter("ignore")
                from tqdm.auto import tqdm

            bar = tqdm(total=tc.epochs, initial=start_epoch, desc="epochs", unit="epoch", mininterval=1.0)
        check_every = 1 if device.type == "cpu" else 20
        for epoch in range(start_epoch, tc.epochs):
            torch.manual_seed(cfg.seed * 7919 + epoch)
            set_loader_epoch(train_loader, cfg.seed, epoch)
            augment.set_epoch(epoch)
            frozen = epoch < tc.freeze_epochs
            set_backbone_trainable(model, not frozen)
            phase = tc.finetune_lr_factor if (tc.freeze_epochs and not frozen) else 1.0
            fwd.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            n_seen = 0
            step = epoch * steps_per_epoch
            lr = sched.apply(step, phase)
            optimizer.zero_grad(set_to_none=True)
            n_batches = len(train_loader)
            for b, (x_u8, y, _) in enumerate(train_loader):
                x = to_model_input(x_u8, device, mean, std, cfg.model.in_chans, augment, channels_last)
                y = y.to(device, non_blocking=True)
                last_micro = (b + 1) % accum == 0 or b + 1 == n_batches
                sync = fwd.no_sync() if (distributed and not last_micro) else nullcontext()
                with sync:
                    with _autocast(device, amp_dtype):
                        logits = fwd(x)
                    loss = loss_fn(logits, y)
                    if b % check_every == 0 or b + 1 == n_batches:
                        if not bool(torch.isfinite(loss)):
                            raise TrainingError(
                                f"train: loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; stopped, "
                                f"last good checkpoint kept at {last_path if start_epoch or epoch else 'none (first epoch)'}; "
                                "lower train.lr, set train.grad_clip, or try train.amp=off"
                            )
                    scaled = loss / accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_sum += loss.detach() * len(y)
                n_seen += len(y)
                if last_micro:
                    if tc.grad_clip:
                        if scaler is not None:
                            scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model)
                    step += 1
                    lr = sched.apply(min(step, sched.total - 1), phase)
            train_seconds = time.perf_counter() - t0
            train_loss = float(loss_sum.item()) / max(n_seen, 1)
            if distributed:
                t = torch.tensor([train_loss * n_seen, n_seen], dtype=torch.float64, device=device)
                dist.all_reduce(t)
                train_loss, n_all = float(t[0] / t[1]), int(t[1])
            else:
                n_all = n_seen
            ips = n_all / max(train_seconds, 1e-9)
            ips_list.append(ips)
            eval_model = model
            if ema is not None:
                eval_model = copy.deepcopy(model)
                eval_model.load_state_dict(ema.state)
            rows, logits = _predict_logits(
                eval_model, val_loader, device, mean, std, cfg.model.in_chans, amp_dtype, channels_last
            )
            rows, logits = _gather(rows, logits, world)
            row = _eval_row(
                epoch + 1,
                train_loss,
                rows,
                logits,
                targets,
                classes,
                task,
                loss_fn,
                lr,
                time.perf_counter() - t0,
                ips,
            )
            history.append(row)
            value, higher_better = _monitor_value(row, tc.monitor)
            sched.epoch_end(value, higher_better)
            improved = (
                best_metric is None
                and value is not None
                or (
                    value is not None
                    and best_metric is not None
                    and (value > best_metric if higher_better else value < best_metric)
                )
            )
            if improved or best_epoch == 0:
                best_metric, best_epoch, bad_epochs = value, epoch + 1, 0
            else:
                bad_epochs += 1
            if is_main:
                _history_csv(run_dir, history)
                loggers.log(row, epoch + 1)
                if best_epoch == epoch + 1:
                    save_checkpoint(run_dir / "model" / "best.pt", payload(epoch + 1, False))
                save_checkpoint(last_path, payload(epoch + 1, True))
            if bar is not None:
                auc = row.get("val_macro_auroc")
                bar.set_postfix(
                    loss=f"{train_loss:.3f}", auroc="-" if auc is None else f"{auc:.3f}", refresh=False
                )
                bar.update(1)
            if tc.early_stopping_patience is not None and bad_epochs >= tc.early_stopping_patience:
                stopped_early = True
                stop_reason = f"early stopping: no {tc.monitor} gain for {bad_epochs} epochs"
                break
        if bar is not None:
            bar.close()
        if distributed:
            dist.barrier()

    summary: dict[str, Any] = {}
    if is_main:
        best_ck = load_checkpoint(run_dir / "model" / "best.pt", map_location="cpu")
        model.load_state_dict(best_ck["model"])
        for split in ("val", "test"):
            if len(idx[split]) == 0:
                continue
            loader = make_loader(prepared.images, targets, idx[split], eval_bs, False, device, 0, cfg.seed)
            rows, logits = _predict_logits(
                model, loader, device, mean, std, cfg.model.in_chans, amp_dtype, channels_last
            )
            probs = probs_from_logits(torch.from_numpy(logits), task).numpy()
            write_predictions(run_dir / "predictions" / f"{split}.csv", prepared, rows, probs, classes)
        _history_csv(run_dir, history)
        best_row = next((r for r in history if r["epoch"] == best_epoch), history[-1] if history else {})
        summary = _clean(
            {
                "best_epoch": best_epoch,
                "best_metric": best_metric,
                "monitor": tc.monitor,
                "epochs_run": len(history) if not eval_only else 0,
                "stop_reason": stop_reason,
                "stopped_early": stopped_early,
                "seconds": time.perf_counter() - t_start,
                "images_per_s": float(np.median(ips_list)) if ips_list else None,
                "epoch_seconds": float(np.median([r["epoch_seconds"] for r in history[start_epoch:]]))
                if ips_list
                else None,
                "best_val_macro_auroc": best_row.get("val_macro_auroc"),
                "best_val_per_class_auroc": {c: best_row.get(f"val_auroc_{c}") for c in classes},
                "loss": loss_choice.name,
                "loss_reason": loss_choice.reason,
                "loss_weights": loss_choice.weights,
                "class_balance": None
                if balance is None
                else {
                    c: {
                        "pos": int(balance["pos"][k]),
                        "neg": int(balance["neg"][k]),
                        "pos_weight": float(balance["pos_weight"][k]),
                    }
                    for k, c in enumerate(classes)
                },
                "device": str(device),
                "world_size": world,
                "distributed": bool(distributed),
                "backend": dist.get_backend() if distributed and dist.is_initialized() else None,
                "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
                "channels_last": channels_last,
                "compile": tc.compile,
                "num_workers": nw,
                "threads": torch.get_num_threads(),
                "arch": cfg.model.arch,
                "in_chans": cfg.model.in_chans,
                "image_size": prepared.image_size,
                "params": n_params,
                "forward_gflops": None if flops is None else flops / 1e9,
                "n_train": int(len(idx["train"])),
                "n_val": int(len(idx["val"])),
                "n_test": int(len(idx["test"])),
                "classes": classes,
                "task": task,
                "synthetic": bool(prepared.synthetic),
                "checkpoint": str(run_dir / "model" / "best.pt"),
                "evaluated_only": eval_only,
            }
        )
        tmp = run_dir / ".train_summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, run_dir / "train_summary.json")
    loggers.close()
    if distributed:
        dist.barrier()
    return TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        best_metric=best_metric,
        monitor=tc.monitor,
        history=pd.DataFrame(history),
        summary=summary,
        checkpoint=run_dir / "model" / "best.pt",
        stopped_early=stopped_early,
    )


def _eval_row(
    epoch: int, train_loss, rows, logits, targets, classes, task, loss_fn, lr, seconds, ips
) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
    if len(rows):
        lg = torch.from_numpy(logits)
        y = torch.from_numpy(targets[rows])
        with torch.no_grad():
            row["val_loss"] = float(loss_fn.to("cpu")(lg, y))
        probs = probs_from_logits(lg, task).numpy()
        per = auroc_per_class(targets[rows], probs)
    else:
        row["val_loss"] = None
        per = [None] * len(classes)
    row["val_macro_auroc"] = macro(per)
    for c, a in zip(classes, per):
        row[f"val_auroc_{c}"] = a
    row.update({"lr": lr, "epoch_seconds": seconds, "images_per_s": ips})
    return row


def train_from_config(
    config_path: str | Path, run_dir: Optional[str | Path] = None, overrides: Sequence[str] = ()
) -> TrainResult:
    """What ``cxr train CONFIG [--out DIR] [--set k=v]`` runs (also under torchrun).

    ``run_dir`` defaults to ``outputs/<config name>``; the resolved config is written there.
    """
    from .paths import resolve_path

    cfg = load_config(resolve_path(config_path), list(overrides))
    out = resolve_path(run_dir) if run_dir else resolve_path(f"outputs/{cfg.name}")
    if int(os.environ.get("RANK", "0")) == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    return train(cfg, out, prepared=None, progress=True)
