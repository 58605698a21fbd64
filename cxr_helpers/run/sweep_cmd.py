"""``cxr sweep``: grid sweeps and Optuna searches over a config, then 06_compare.

Only argparse and the argument parsers at module level (``cxr --help`` builds every subcommand's
parser); the sweep's stack (runner, data cache, Optuna) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import signal
import sys

from cxr_helpers.run.sweep_spec import SweepSpec, parse_grid, parse_seeds, parse_space


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare this subcommand's arguments on its parser."""
    p.add_argument("config", help="run config YAML, e.g. configs/pneumoniamnist.yaml")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="one run per value (all --grid keys combined); repeatable, e.g. --grid model.arch=resnet18,resnet34")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key for every run, as in cxr run; repeatable")
    p.add_argument("--seeds", default=None, metavar="0,1,2", help="repeat every grid point with these seeds")
    p.add_argument("--only", default=None, metavar="01,02,03",
                   help="notebooks each run executes (default: the config's; a search's trials: 02)")
    p.add_argument("--out", default=None, help="sweep folder (default outputs/<config name>-sweep)")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time in this worker (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="run failed points again (default: skip them)")
    p.add_argument("--search", action="store_true", help="Optuna search over --space instead of a grid (needs cxr[sweep])")
    p.add_argument("--trials", type=int, default=20, help="search trials in all, over every worker (default 20)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=DIST",
                   help="search dimension: loguniform(a,b), uniform(a,b), int(a,b), intlog(a,b) or choice(x,y,...)")
    p.add_argument("--prune", action="store_true",
                   help="stop search trials whose per-epoch validation AUROC is below the median of earlier trials")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="shared Optuna storage (postgresql://..., mysql://..., sqlite:///file.db, or a journal file "
                        "path): every worker given it shares the points (needs cxr[sweep])")
    p.add_argument("--study", default=None, help="Optuna study name (default: the sweep folder's name)")
    p.add_argument("--test-best", action="store_true",
                   help="after a search, run the configuration chosen on validation once on test, into <sweep>/best")
    p.add_argument("--torchrun", type=int, default=None, metavar="N",
                   help="train each run with torchrun on N local GPUs (DistributedDataParallel) instead of in 02")
    p.add_argument("--no-compare", action="store_true", help="do not run 06_compare at the end of a grid sweep")
    p.add_argument("--no-progress", action="store_true", help="one line per finished run instead of a progress bar")


def _usage(args: argparse.Namespace) -> str | None:
    """The first argument combination that cannot work, as one line; None when they are fine."""
    if args.jobs < 1:
        return f"--jobs {args.jobs}: give 1 or more concurrent runs"
    if args.search and (args.grid or args.seeds):
        return "--search does not combine with --grid/--seeds; give choices as --space 'KEY=choice(A,B)'"
    if args.search and not args.space:
        return "--search needs at least one --space KEY=DIST, e.g. --space 'train.lr=loguniform(1e-4,3e-3)'"
    if args.space and not args.search:
        return "--space is for --search; a grid takes --grid KEY=V1,V2"
    if args.search and args.trials < 1:
        return f"--trials {args.trials}: give 1 or more"
    if args.torchrun is not None and args.torchrun < 1:
        return f"--torchrun {args.torchrun}: give the number of GPUs per run (1 or more)"
    if (args.test_best or args.prune) and not args.search:
        return "--test-best and --prune are for --search"
    return None


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def command(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit code (0 every point ok, 1 some failed, 2 bad arguments)."""
    problem = _usage(args)
    if problem:
        print(f"cxr sweep: {problem}", file=sys.stderr)
        return 2
    from cxr_helpers.run.runner import RunError
    from cxr_helpers.run.sweep import SweepOptions, sweep
    from cxr_helpers.run.sweep_optuna import OptunaMissing

    spec = SweepSpec(config=args.config, sets=list(args.overrides), grid=parse_grid(args.grid),
                     seeds=parse_seeds(args.seeds), only=args.only, search=args.search,
                     trials=args.trials if args.search else 0, space=parse_space(args.space))
    opts = SweepOptions(spec=spec, out=args.out, jobs=args.jobs, retry_failed=args.retry_failed,
                        storage=args.storage, study=args.study, prune=args.prune, compare=not args.no_compare,
                        test_best=args.test_best, progress=not args.no_progress, torchrun=args.torchrun)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a killed sweep stops its running points too
    try:
        result = sweep(opts)
    except (OptunaMissing, RunError) as exc:
        print(f"cxr sweep: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())) or "nothing to run"
    if result.interrupted:
        print(f"cxr sweep: interrupted ({counts}); run the same command again to resume", file=sys.stderr)
        print(result.index)
        return 130
    if result.compare_error:
        print(f"cxr sweep: 06_compare: {result.compare_error}", file=sys.stderr)
    if result.best:
        print(f"best on validation: {result.best['point']} (val macro AUROC {result.best['val_auroc']:.4f})")
    print(result.index)
    failed = sum(n for s, n in result.counts.items() if s in ("failed", "skipped failed"))
    if failed:
        print(f"cxr sweep: {failed} run(s) failed ({counts}); see their sweep_point.log, "
              "--retry-failed runs them again", file=sys.stderr)
        return 1
    return 0
