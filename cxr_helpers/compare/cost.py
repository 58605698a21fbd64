"""What each run cost: training wall time, throughput, parameters and forward FLOPs, beside its quality.

Read from ``train_summary.json`` (``seconds``, ``images_per_s``, ``params``, ``forward_gflops``),
which training writes. Where a run did not record its FLOPs (or parameters), they are counted
now from its checkpoint (``model/best.pt``) with ``torch.utils.flop_counter`` on one input of the
trained size (``model.backbones.forward_flops``); the ``flops from`` column says which.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from cxr_helpers.compare.runs import RunRecord, headline
from cxr_helpers.model.backbones import count_parameters, forward_flops
from cxr_helpers.model.checkpoint import CheckpointError
from cxr_helpers.model.inference import load_model


def counted_cost(run: RunRecord) -> tuple[Optional[int], Optional[float]]:
    """(parameters, forward GFLOPs per image) counted from the run's checkpoint; (None, None)
    when it has none or it cannot be loaded."""
    if not (run.dir / "model" / "best.pt").is_file():
        return None, None
    try:
        clf = load_model(run.dir, "cpu")
    except (CheckpointError, OSError, RuntimeError, ValueError):
        return None, None
    flops = forward_flops(clf.model, clf.meta.in_chans, clf.meta.image_size)
    return count_parameters(clf.model), None if flops is None else flops / 1e9


def cost_table(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per run: ``train seconds, images/s, params, GFLOPs, flops from`` and its headline
    test AUROC (value, CI); missing numbers are None (the run did not record them and has no model)."""
    rows = []
    for r in runs:
        s: dict[str, Any] = r.summary or {}
        params, gflops, source = s.get("params"), s.get("forward_gflops"), "train_summary.json"
        if params is None or gflops is None:
            counted = counted_cost(r)
            params = params if params is not None else counted[0]
            if gflops is None and counted[1] is not None:
                gflops, source = counted[1], "counted from model/best.pt"
        if gflops is None:
            source = "not recorded (no checkpoint)"
        head = next(iter(headline(r).values()), {})
        rows.append({"run": r.name, "train seconds": s.get("seconds"), "images/s": s.get("images_per_s"),
                     "params": params, "GFLOPs": gflops, "flops from": source,
                     "test AUROC": head.get("value"), "ci_low": head.get("ci_low"), "ci_high": head.get("ci_high")})
    return pd.DataFrame(rows)
