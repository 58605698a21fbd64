"""What a sweep runs: grid points (``--grid``, ``--seeds``) and search spaces (``--space``), parsed.

A point is an ordered list of ``(key, value)`` overrides on top of the sweep's ``--set`` ones; its
name is built from them (``model.arch=resnet18, seed=1`` -> ``arch-resnet18_seed-1``), so a
sweep re-invoked with the same arguments finds the same run folders. Nothing here imports
Optuna: a search space is parsed into plain ``Dimension`` records and turned into Optuna
distributions by ``sweep_optuna``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from cxr_helpers.config import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_SPACE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*(loguniform|uniform|int|intlog|choice)\s*\((.*)\)\s*$")
MAX_NAME = 90


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its folder name under ``runs/`` and its own overrides (``KEY=VALUE``)."""

    name: str
    params: tuple[tuple[str, str], ...]  # (config key, value as text), grid order

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.params]


@dataclass(frozen=True)
class Dimension:
    """One ``--space`` entry: ``kind`` is loguniform | uniform | int | intlog | choice."""

    key: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple[Any, ...] = ()


@dataclass
class SweepSpec:
    """Everything that defines a sweep; stored in ``sweep.json`` so a re-invocation can be checked
    against it (a different grid in the same folder would mix two experiments)."""

    config: str
    sets: list[str] = field(default_factory=list)
    grid: list[tuple[str, list[str]]] = field(default_factory=list)
    seeds: Optional[list[int]] = None
    only: Optional[str] = None
    search: bool = False
    trials: int = 0
    space: list[Dimension] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        """The parts two invocations must agree on to share a sweep folder."""
        return {"config": self.config, "sets": list(self.sets), "grid": [[k, list(v)] for k, v in self.grid],
                "seeds": self.seeds, "only": self.only, "search": self.search,
                "space": [_dimension_text(d) for d in self.space]}


def _split_values(text: str) -> list[str]:
    """``a,b,[1, 2],c`` -> ``["a", "b", "[1, 2]", "c"]``: commas inside brackets stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v != ""]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["model.arch=resnet18,resnet34", ...]`` -> ``[("model.arch", ["resnet18", "resnet34"])]``;
    ConfigError (one line) for an entry without ``=`` or values, or a key given twice."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = _split_values(values)
        if not sep or not key or not vals:
            raise ConfigError(f"--grid {item!r} must look like KEY=V1,V2 (e.g. --grid model.arch=resnet18,resnet34)")
        if key in [k for k, _ in grid]:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--grid {item!r} repeats a value")
        grid.append((key, vals))
    return grid


def parse_seeds(text: Optional[str]) -> Optional[list[int]]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; None when not given."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in _split_values(text)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be whole numbers separated by commas, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} must list distinct seeds, e.g. --seeds 0,1,2")
    return seeds


def parse_space(items: list[str]) -> list[Dimension]:
    """``--space 'train.lr=loguniform(1e-4,3e-3)'`` (also ``uniform``, ``int``, ``intlog``,
    ``choice(a,b,...)``) -> Dimensions; ConfigError (one line) naming the entry when malformed."""
    dims: list[Dimension] = []
    for item in items:
        m = _SPACE.match(item)
        if not m:
            raise ConfigError(
                f"--space {item!r} must look like KEY=loguniform(LOW,HIGH), uniform(LOW,HIGH), int(LOW,HIGH), "
                "intlog(LOW,HIGH) or choice(A,B,...)")
        key, kind, args = m.group(1), m.group(2), _split_values(m.group(3))
        if key in [d.key for d in dims]:
            raise ConfigError(f"--space {key} is given twice")
        if kind == "choice":
            if len(args) < 2:
                raise ConfigError(f"--space {item!r}: choice needs at least two values")
            dims.append(Dimension(key, kind, choices=tuple(_scalar(a) for a in args)))
            continue
        try:
            low, high = (float(a) for a in args)
        except ValueError:
            raise ConfigError(f"--space {item!r}: {kind} takes two numbers, LOW and HIGH") from None
        if not low < high or (kind in ("loguniform", "intlog") and low <= 0):
            raise ConfigError(f"--space {item!r}: needs LOW < HIGH" + (" and LOW > 0" if "log" in kind else ""))
        if kind in ("int", "intlog") and (low != int(low) or high != int(high)):
            raise ConfigError(f"--space {item!r}: {kind} bounds must be whole numbers")
        dims.append(Dimension(key, kind, low, high))
    return dims


def _scalar(text: str) -> Any:
    """A choice value as YAML reads it (``16`` int, ``true`` bool, ``resnet18`` str)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def _dimension_text(d: Dimension) -> str:
    if d.kind == "choice":
        return f"{d.key}=choice({','.join(map(str, d.choices))})"
    return f"{d.key}={d.kind}({d.low:g},{d.high:g})"


def value_text(value: Any) -> str:
    """A parameter value as it goes into ``--set KEY=VALUE`` (floats in full, ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def point_name(params: list[tuple[str, str]] | tuple[tuple[str, str], ...], prefix: str = "") -> str:
    """A readable, file-system-safe folder name for a point: the last part of each key, ``-``,
    the value (``model.arch=resnet18, seed=1`` -> ``arch-resnet18_seed-1``); whole keys when two
    end alike; long floats shortened to 4 significant digits; cut with a hash when too long."""
    lasts = [k.split(".")[-1] for k, _ in params]
    parts = []
    for (key, value), last in zip(params, lasts):
        label = last if lasts.count(last) == 1 else key.replace(".", "-")
        parts.append(f"{label}-{_short(value)}")
    name = re.sub(r"-{2,}", "-", _UNSAFE.sub("-", "_".join(([prefix] if prefix else []) + parts))).strip("-") or "base"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}-{digest}"
    return name


def _short(value: str) -> str:
    try:
        f = float(value)
    except ValueError:
        return value
    return value if ("." not in value and "e" not in value.lower()) else f"{f:.4g}"


def grid_points(grid: list[tuple[str, list[str]]], seeds: Optional[list[int]]) -> list[Point]:
    """Every combination of the grid's values (first key slowest), then each seed; one point named
    ``base`` when there is neither grid nor seeds. Names are unique (ValueError otherwise)."""
    axes = list(grid) + ([("seed", [str(s) for s in seeds])] if seeds else [])
    combos = itertools.product(*[[(k, v) for v in vals] for k, vals in axes]) if axes else [()]
    points = [Point(point_name(list(c)), tuple(c)) for c in combos]
    names = [p.name for p in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"--grid values give the same run folder name {dup[0]}; make the values differ in "
                          "letters or digits")
    return points
