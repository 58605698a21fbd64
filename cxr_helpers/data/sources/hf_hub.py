"""Opening a Hugging Face dataset for ``data.source: hf``: the hub (one short reachability probe,
its libraries' retry warnings silenced, every failure one line saying what to do) or a local copy
(``save_to_disk`` folder, parquet files, ``imagefolder``, per-split metadata files).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from cxr_helpers.config import Config, HfSourceConfig
from cxr_helpers.data.sources import SourceError, data_root
from cxr_helpers.paths import resolve_path

STAGING = "hf-staging"  # under data.cache_dir: staged rows and images, and the datasets arrow cache
TABLE_SUFFIXES = (".arrow", ".parquet", ".json", ".jsonl", ".csv")


def hf_datasets():
    """The ``datasets`` package, or SourceError naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise SourceError("data.source=hf needs the `datasets` package: pip install 'cxr[hf]'") from None
    return datasets


def _hub_message(name: str, exc: Exception) -> str:
    """One line for a hub dataset that could not be opened: gated/private, absent, or no network."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    low = text.lower()
    local = (
        "or use a local copy: data.root pointing at a save_to_disk folder, parquet files, an imagefolder "
        "with metadata.csv, or per-split metadata files (data.hf.metadata) with the extracted images"
    )
    if any(w in low for w in ("gated", "401", "403", "unauthorized", "forbidden", "access to dataset")):
        return (
            f"data.hf.name: {name} is gated: accept its terms on https://huggingface.co/datasets/{name} "
            f"while logged in, then log in here (`hf auth login`, older `huggingface-cli login`, or set HF_TOKEN); {local}"
        )
    offline = ("offline", "connection", "connecterror", "name or service", "resolve", "timed out", "timeout", "network",
               "max retries", "couldn't reach")
    if any(w in low for w in offline):
        return f"data.hf.name: the Hugging Face hub cannot be reached for {name} (offline?); {local}"
    if any(w in low for w in ("doesn't exist", "not found", "404", "datasetnotfound", "repositorynotfound")):
        return f"data.hf.name: no dataset {name} on the hub (or it is private: log in first); check the id, {local}"
    return f"data.hf.name: {name} could not be opened ({text[:200]}); {local}"


HUB_PROBE_TIMEOUT = 10.0  # seconds for the one reachability check before streaming a hub dataset


def _probe_hub(name: str, revision: Optional[str]) -> None:
    """One short request for the dataset's info, so an unreachable hub, a gated or a missing set
    fails in seconds (``load_dataset`` retries for half a minute first); errors propagate."""
    from huggingface_hub import HfApi

    HfApi().dataset_info(name, revision=revision, timeout=HUB_PROBE_TIMEOUT)


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub and datasets logging at ERROR for the duration: their retry warnings
    ("... thrown while requesting HEAD") would come before our one-line message."""
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "datasets", "fsspec")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _local_kind(root: Path, h: HfSourceConfig) -> str:
    """How a local ``data.root`` is laid out: disk | metadata | parquet | imagefolder."""
    if h.metadata:
        return "metadata"
    if root.is_dir() and any((root / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return "disk"
    if root.is_file() and root.suffix == ".parquet" or (root.is_dir() and next(root.rglob("*.parquet"), None)):
        return "parquet"
    if root.is_dir() and next(root.rglob("metadata.csv"), None) is not None:
        return "imagefolder"
    raise SourceError(
        f"data.root: {root} is not a Hugging Face dataset this source reads (no dataset_dict.json/state.json, "
        "parquet files or metadata.csv); set data.hf.metadata for per-split CSV/JSON files, or data.hf.name for the hub"
    )


def metadata_files(root: Path, h: HfSourceConfig) -> dict[str, str]:
    """``data.hf.metadata`` as {split name: existing file path}; SourceError naming a missing one."""
    out = {}
    for split, rel in h.metadata.items():
        p = Path(rel).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise SourceError(f"data.hf.metadata: {split} file {p} does not exist; fix the path or --set data.root=PATH")
        out[split] = str(p)
    return out


def table_files(root: Path) -> list[Path]:
    """The table files a local dataset is made of (for its content key; images are not listed)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix in TABLE_SUFFIXES and p.is_file())


def open_splits(cfg: Config) -> dict[str, Any]:
    """{split name as the dataset spells it: Dataset or IterableDataset}; SourceError (one line)
    when the hub cannot be reached, the set is gated, or the local layout is not recognised. A
    dataset with a single split (whatever its name) maps to ``""``: its rows get generated splits."""
    ds = hf_datasets()
    h = cfg.data.hf
    if h.name:
        try:
            with _quiet_hub():
                _probe_hub(h.name, h.revision)
                out = ds.load_dataset(h.name, h.subset, revision=h.revision, streaming=True)
        except SourceError:
            raise
        except Exception as exc:  # hub errors come as many types; each becomes one line
            raise SourceError(_hub_message(h.name, exc)) from None
    else:
        root = data_root(cfg)
        kind = _local_kind(root, h)
        arrow = str(resolve_path(cfg.data.cache_dir) / STAGING / "datasets-cache")  # not ~/.cache
        try:
            if kind == "disk":
                out = ds.load_from_disk(str(root))
            elif kind == "metadata":
                files = metadata_files(root, h)
                fmt = "csv" if all(f.lower().endswith(".csv") for f in files.values()) else "json"
                out = ds.load_dataset(fmt, data_files=files, cache_dir=arrow)
            elif kind == "parquet":
                where = {"data_files": str(root)} if root.is_file() else {"data_dir": str(root)}
                out = ds.load_dataset("parquet", cache_dir=arrow, **where)
            else:
                out = ds.load_dataset("imagefolder", data_dir=str(root), cache_dir=arrow)
        except SourceError:
            raise
        except Exception as exc:  # a malformed local copy: name it in one line
            msg = " ".join(str(exc).split())[:300]
            raise SourceError(f"data.root: {root} could not be read as a {kind} dataset ({type(exc).__name__}: {msg})") from None
    if not isinstance(out, dict):  # a single Dataset (save_to_disk of one split)
        out = {"": out}
    if len(out) == 1:  # one split (OpenI's "train"): patient-level splits are generated
        out = {"": next(iter(out.values()))}
    return dict(out)

