"""The ``cxr`` command: ``cxr run`` (notebook chain), ``cxr train`` (training without a notebook,
for torchrun and clusters), ``cxr predict`` (findings for new image files), ``cxr cache`` (prepared
data caches: list, prune), ``cxr sweep`` (many runs and 06_compare), ``cxr labels`` (labels from
report text) and ``cxr app`` (the upload page).

The last three keep their arguments and work in their own modules (``run.sweep_cmd``,
``run.labels_cmd``, ``run.app_cmd``), which import nothing heavy at module level.

Every failure is one line on stderr and a non-zero exit: usage and input errors (bad config key,
missing file, a model that cannot be used) exit 2; a failed notebook exits 1 after its report and
both index pages are written; a full or read-only disk exits 1 with the file and the free space;
anything else (a diverged training) exits 1 with the error's type and first line. ``--debug``
(before the command) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from cxr_helpers.config import ConfigError
from cxr_helpers.paths import DiskWriteError
from cxr_helpers.run import app_cmd, labels_cmd, sweep_cmd
from cxr_helpers.run.lock import RunDirLocked, run_dir_lock


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML, e.g. configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (type-checked), e.g. --set train.epochs=3; repeatable")
    p.add_argument("--out", default=None, help="run directory (default: outputs/<config name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray classification analysis toolkit.")
    parser.add_argument("--debug", action="store_true", help="on failure, show the full traceback")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="execute the numbered notebooks with papermill into a run dir + HTML reports")
    _add_common(p_run)
    p_run.add_argument("--only", default=None, help="re-run a subset against an existing run dir, e.g. 01,03")
    code = p_run.add_mutually_exclusive_group()
    code.add_argument("--hide-code", dest="hide_code", action="store_true", default=None,
                      help="leave code out of the HTML reports")
    code.add_argument("--show-code", dest="hide_code", action="store_false",
                      help="keep code in the reports, collapsed behind a toggle (default)")
    p_run.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")

    p_train = sub.add_parser("train", help="train a model from a config without notebooks (torchrun-ready)")
    _add_common(p_train)

    p_pred = sub.add_parser("predict", help="findings for new PNG/JPG/DICOM files from a trained run")
    p_pred.add_argument("run_dir", help="a run dir holding model/best.pt (and thresholds.json, calibration.json)")
    p_pred.add_argument("inputs", nargs="+", help="image files or folders")
    where = p_pred.add_mutually_exclusive_group()  # both given, one would be silently ignored
    where.add_argument("--csv", default=None, help="write the findings table to this file (summary: same name, .json)")
    where.add_argument("--out", default=None, metavar="DIR",
                        help="write predictions_new.csv/.json into DIR instead of the run dir")
    p_pred.add_argument("--overwrite", action="store_true",
                        help="replace existing predictions files (e.g. the run dir's, written by 05_predict)")

    p_cache = sub.add_parser("cache", help="list prepared data caches (size, last use, runs using them); "
                             "--prune removes unused ones")
    p_cache.add_argument("--dir", default=None, help="the cache folder (default: outputs/.cache, data.cache_dir's default)")
    p_cache.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR",
                         help="more run dirs whose caches count as used (those under outputs/ always do)")
    p_cache.add_argument("--prune", action="store_true",
                         help="remove caches no known run refers to and not used for --days days")
    p_cache.add_argument("--days", type=float, default=30.0, help="unused for this many days (default 30)")
    p_cache.add_argument("--yes", action="store_true", help="do not ask before removing")

    sweep_cmd.add_arguments(sub.add_parser("sweep", help="one run per grid point / search trial, then 06_compare"))
    labels_cmd.add_arguments(sub.add_parser("labels", help="label radiology reports with the 14 NIH findings"))
    app_cmd.add_arguments(sub.add_parser("app", help="serve the upload-and-predict page for a trained run"))
    return parser


def _cmd_cache(args: argparse.Namespace) -> int:
    from cxr_helpers.run.cache_cmd import cache_command

    return cache_command(args.dir, args.runs, prune=args.prune, days=args.days, yes=args.yes)


def _cmd_run(args: argparse.Namespace) -> int:
    # Each command imports its own stack here, not at the top: measured on the 2-core CI box,
    # `import cxr_helpers.run.cli` takes 0.2 s, the runner (nbformat/jsonschema) 3.4 s and
    # train/predict (torch) 8 s, so `cxr --help` and `cxr run` would otherwise pay for all three.
    from cxr_helpers.run.runner import RunError, run

    try:
        result = run(args.config, overrides=args.overrides, out=args.out, only=args.only,
                     hide_code=args.hide_code, progress=not args.no_progress)
    except RunError as exc:
        print(f"cxr run: {exc}", file=sys.stderr)
        return 2
    index = result.run_dir / "index.html"
    if not result.ok:
        unmarked = f"; run_status.json could not be marked failed ({result.status_error})" if result.status_error else ""
        print(f"cxr run FAILED in {result.failed_notebook}: {result.error}{unmarked}", file=sys.stderr)
        print(index)
        return 1
    print(index)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Train under the run dir's lock (rank 0 takes it), like ``cxr run``: a second cxr process on
    the same run dir refuses instead of overwriting this one's config and checkpoints."""
    from cxr_helpers.train.loop import train_from_config

    try:
        train_from_config(args.config, run_dir=args.out, overrides=args.overrides, lock=run_dir_lock)
    except RunDirLocked as exc:
        print(f"cxr train: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cxr_helpers.predict.findings import predict_cli

    table = predict_cli(args.run_dir, args.inputs, out_csv=args.csv, out_dir=args.out, overwrite=args.overwrite)
    if len(table) == 0:
        print("cxr predict: no readable image among the inputs (see the skipped lines above)", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": _cmd_run, "train": _cmd_train, "predict": _cmd_predict, "cache": _cmd_cache,
                "sweep": sweep_cmd.command, "labels": labels_cmd.command, "app": app_cmd.command}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print(f"cxr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, DiskWriteError):
            print(f"cxr {args.command}: {_one_line(exc, with_type=False)}", file=sys.stderr)
            return 1
        usage = isinstance(exc, (ConfigError, FileNotFoundError, ValueError))
        print(f"cxr {args.command}: {_one_line(exc, with_type=not usage)}", file=sys.stderr)
        return 2 if usage else 1


def _one_line(exc: BaseException, with_type: bool) -> str:
    """The error's first line (our errors are written as one line), prefixed with its type when
    it is not one of ours, plus where to get the rest."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if with_type or not line:
        line = f"{type(exc).__name__}: {line}".rstrip(": ")
    return line + (" (cxr --debug ... shows the traceback)" if with_type else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
