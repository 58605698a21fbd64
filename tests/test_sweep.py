"""`cxr sweep`: point names, claims and resume, the 2x2 sweep killed and resumed, two workers on one
Optuna storage, a search whose objective is validation AUROC, and the message without Optuna.

The sweeps run the real `cxr sweep` and `cxr run` (subprocesses, papermill) on a stand-in project
whose 02 notebook writes a run's training files in well under a second (tests/sweep_fixtures.py),
with `--only 02` so each point starts one kernel.
"""

from __future__ import annotations

import builtins
import json
import signal
import time
from pathlib import Path

import pytest
from sweep_fixtures import make_project, runs_started, sweep_process

from cxr_helpers.config import ConfigError
from cxr_helpers.paths import project_root
from cxr_helpers.run import sweep_optuna
from cxr_helpers.run.cli import main
from cxr_helpers.run.index_pages import save_status
from cxr_helpers.run.sweep_point import run_state
from cxr_helpers.run.sweep_spec import grid_points, parse_grid, parse_space
from cxr_helpers.run.sweep_state import claim_point, read_sweep, update_sweep, worker_id

NB = ["02_train"]
ROOT = project_root()


def test_point_names_are_readable_stable_and_safe():
    pts = grid_points(parse_grid(["model.arch=resnet18,resnet34", "train.lr=1e-3,0.0012345678"]), [0, 1])
    assert len(pts) == 8
    assert pts[0].name == "arch-resnet18_lr-0.001_seed-0"
    assert pts[0].overrides == ["model.arch=resnet18", "train.lr=1e-3", "seed=0"]
    assert pts[3].name == "arch-resnet18_lr-0.001235_seed-1" and pts[3].overrides[1] == "train.lr=0.0012345678"
    assert grid_points([], None)[0].name == "base"
    assert grid_points(parse_grid(["data.root=/a b/c"]), None)[0].name == "root-a-b-c"
    with pytest.raises(ConfigError, match="same run folder name"):
        grid_points(parse_grid(["data.root=a/b,a b"]), None)
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_grid(["model.arch"])
    with pytest.raises(ConfigError, match="LOW < HIGH"):
        parse_space(["train.lr=loguniform(1e-2,1e-3)"])
    dims = parse_space(["train.lr=loguniform(1e-4,3e-3)", "train.batch_size=choice(32,64)"])
    assert dims[1].choices == (32, 64) and dims[0].low == 1e-4


def _status(run_dir: Path, state: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_status(run_dir, {"status": state, "notebooks": [{"name": "02_train", "status": state}]})


def test_claims_skip_finished_leave_failed_without_retry_and_take_over_dead_workers(tmp_path):
    sweep = tmp_path / "sw"

    def claim(name, retry=False):
        rd = sweep / "runs" / name
        return claim_point(sweep, name, [], lambda: run_state(rd, NB), retry)

    _status(sweep / "runs" / "a", "ok")
    _status(sweep / "runs" / "b", "failed")
    assert claim("a") == "done"
    assert claim("b") == "failed"
    assert claim("b", retry=True) == "claimed"
    assert read_sweep(sweep)["points"]["b"]["worker"] == worker_id()
    assert claim("b", retry=True) == "busy"  # this worker's other thread has it
    assert claim("c") == "claimed"

    update_sweep(sweep, lambda s: s["points"]["c"].update(worker=f"{worker_id().rpartition(':')[0]}:999999999"))
    assert claim("c") == "claimed"  # its worker is gone: taken over
    update_sweep(sweep, lambda s: s["points"]["c"].update(worker="another-host:1"))
    assert claim("c") == "busy"  # a worker on another machine is trusted to be alive


def test_search_and_storage_without_optuna_say_what_to_install(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("No module named 'optuna'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    code = main(["sweep", "configs/demo.yaml", "--search", "--space", "train.lr=loguniform(1e-4,1e-3)",
                 "--out", str(tmp_path / "sw"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("cxr sweep: --search needs Optuna") and "pip install 'cxr[sweep]'" in err[0]
    with pytest.raises(sweep_optuna.OptunaMissing, match="--storage needs Optuna"):
        sweep_optuna.open_storage("sqlite:///x.db", tmp_path)


def test_bad_sweep_arguments_are_one_line(capsys):
    assert main(["sweep", "configs/demo.yaml", "--search", "--grid", "model.arch=resnet18,resnet34"]) == 2
    assert main(["sweep", "configs/demo.yaml", "--grid", "model.nope=1,2", "--out", "/tmp/never-made"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--space" in err[0] and "model.nope" in err[1]


def test_a_dead_workers_trial_is_failed_and_queued_again_for_the_next_worker():
    optuna = pytest.importorskip("optuna")
    from cxr_helpers.run.sweep_spec import Point

    study = optuna.create_study(direction="maximize")
    sweep_optuna.enqueue_points(study, [Point("a", (("seed", "0"),)), Point("b", (("seed", "1"),))], [])
    sweep_optuna.enqueue_points(study, [Point("a", (("seed", "0"),))], [])  # a second worker: not queued twice
    assert len(study.trials) == 2
    trial = study.ask()
    trial.suggest_categorical("point", ["a", "b"])
    host = worker_id().rpartition(":")[0]
    trial.set_user_attr("worker", f"{host}:999999999")  # its process is gone
    trial.set_user_attr("heartbeat", time.time())
    assert sweep_optuna.fail_stale_trials(study) == 1
    states = [(t.state.name, t.params.get("point") or t.system_attrs["fixed_params"]["point"]) for t in study.trials]
    assert states == [("FAIL", "a"), ("WAITING", "b"), ("WAITING", "a")]
    again = study.ask()  # the next worker gets a queued point; "a" is not lost
    assert again.number in (1, 2)
    silent = study.ask()
    silent.set_user_attr("worker", "other-host:1")
    silent.set_user_attr("heartbeat", time.time() - sweep_optuna.GRACE_S - 1)  # no heartbeat for too long
    assert sweep_optuna.fail_stale_trials(study) == 1


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "proj")


def _wait_for(predicate, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_2x2_sweep_resumes_without_rerunning_finished_runs(project):
    args = ("--grid", "train.lr=0.001,0.002", "--seeds", "0,1", "--only", "02", "--out", "sw", "--jobs", "2")
    sweep_dir = project / "sw"
    runs = sweep_dir / "runs"
    first = sweep_process(project, *args)
    _wait_for(lambda: sum(run_state(d, NB) == "done" for d in runs.glob("*")) >= 1 or first.poll() is not None,
              120, "the first point to finish")
    first.send_signal(signal.SIGTERM)
    out = first.communicate(timeout=60)[0]
    assert first.returncode == 130, out
    assert out.count("data: built") == 2  # one prepared cache per seed (synthetic data follow the seed), built once
    assert "interrupted" in out and "run the same command again" in out
    finished = {d.name: (d / "run_status.json").stat().st_mtime_ns for d in runs.glob("*") if run_state(d, NB) == "done"}
    assert 1 <= len(finished) < 4
    assert all(run_state(d, NB) != "busy" for d in runs.glob("*"))  # no point left running
    assert all(json.loads((runs / n / "run_status.json").read_text())["status"] == "ok" for n in finished)
    # a run killed between its final status and its page write: the resumed sweep writes the page
    (runs / next(iter(finished)) / "index.html").unlink(missing_ok=True)

    second = sweep_process(project, *args)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    assert out.count("data: reusing") == 2 and "data: built" not in out
    names = sorted(d.name for d in runs.glob("*"))
    assert names == ["lr-0.001_seed-0", "lr-0.001_seed-1", "lr-0.002_seed-0", "lr-0.002_seed-1"]
    assert all(run_state(runs / n, NB) == "done" for n in names)
    for name, mtime in finished.items():  # finished runs were not run again
        assert (runs / name / "run_status.json").stat().st_mtime_ns == mtime
        assert runs_started(runs / name) == 1
    state = read_sweep(sweep_dir)
    assert {n: p["status"] for n, p in state["points"].items()} == {n: "ok" for n in names}
    page = (sweep_dir / "index.html").read_text()
    assert all(f"runs/{n}/index.html" in page for n in names) and "train.lr=0.002" in page
    outputs_page = (project / "outputs" / "index.html").read_text()
    assert "<h2>Sweeps</h2>" in outputs_page and "../sw/index.html" in outputs_page and "4 ok" in outputs_page

    from cxr_helpers.compare.runs import config_differences, open_comparison

    table = config_differences(open_comparison(str(sweep_dir)).runs)
    assert sorted(table.index) == names
    assert sorted(table.columns) == ["seed", "train.lr"]
    assert table.loc["lr-0.002_seed-1", "train.lr"] == 0.002 and table.loc["lr-0.002_seed-1", "seed"] == 1

    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_table", ROOT / "benchmarks" / "sweep_table.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [r for r in bench.table(sweep_dir) if r.startswith("| `lr-")]
    assert len(rows) == 4 and rows[2].startswith("| `lr-0.002_seed-0` (ok) | 0.8000 | — | — | — |")  # no 03: no test


@pytest.mark.slow
def test_two_workers_on_one_storage_run_each_point_exactly_once(project):
    journal = project / "shared.journal"
    args = ("--grid", "train.lr=0.001,0.002,0.003,0.004", "--only", "02", "--out", "sw", "--storage", str(journal),
            "--no-compare")
    workers = [sweep_process(project, *args), sweep_process(project, *args)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    runs = sorted((project / "sw" / "runs").glob("*"))
    assert len(runs) == 4
    assert [runs_started(d) for d in runs] == [1, 1, 1, 1]
    assert all(run_state(d, NB) == "done" for d in runs)
    optuna = pytest.importorskip("optuna")
    study = optuna.load_study(study_name="sw", storage=sweep_optuna.open_storage(str(journal), project))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["point"] for t in done) == [d.name for d in runs]
    assert sorted(t.value for t in done) == pytest.approx([0.7, 0.8, 0.9, 0.99])


@pytest.mark.slow
def test_search_objective_is_validation_auroc_and_the_study_resumes(project):
    pytest.importorskip("optuna")
    args = ("--search", "--trials", "2", "--space", "train.lr=loguniform(1e-3,3e-3)", "--out", "search", "--jobs", "2")
    proc = sweep_process(project, *args)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    sweep_dir = project / "search"
    import optuna

    study = optuna.load_study(study_name="search", storage=sweep_optuna.open_storage(None, sweep_dir))
    assert len(study.trials) == 2
    for t in study.trials:
        run_dir = sweep_dir / "runs" / t.user_attrs["point"]
        summary = json.loads((run_dir / "train_summary.json").read_text())
        assert t.value == pytest.approx(summary["best_val_macro_auroc"])  # validation ...
        assert t.value == pytest.approx(min(0.99, 0.6 + 100 * t.params["train.lr"]))
        assert t.value != pytest.approx(0.5)  # ... the stand-in's test AUROC would be 0.5 for every trial
        assert not (run_dir / "metrics.json").exists()  # 03 (test) never ran for a trial
    best = read_sweep(sweep_dir)["best"]
    assert best["val_auroc"] == pytest.approx(max(t.value for t in study.trials))
    assert f"best on validation: {best['point']}" in out
    again = sweep_process(project, *args)  # resumes: 2 trials exist, nothing more runs
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0, out
    assert len(optuna.load_study(study_name="search", storage=sweep_optuna.open_storage(None, sweep_dir)).trials) == 2


def test_torchrun_points_train_under_torchrun_then_run_the_other_notebooks(tmp_path):
    from cxr_helpers.run.sweep_point import point_commands

    train, rest = point_commands("c.yaml", ["seed=1"], tmp_path, ["02_train", "03_error_analysis", "04_gradcam"], 4)
    assert train[1:8] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                          "cxr_helpers.run.cli", "train"]
    assert train[-4:] == ["--set", "seed=1", "--out", str(tmp_path)]
    assert rest[-2:] == ["--only", "03,04"] and rest[3] == "run"
    (plain,) = point_commands("c.yaml", [], tmp_path, ["02_train"])
    assert plain[3] == "run" and plain[-2:] == ["--only", "02"]


@pytest.mark.slow
def test_a_pruned_point_is_stopped_mid_training_and_marked(project, monkeypatch):
    from cxr_helpers import paths
    from cxr_helpers.run.index_pages import read_status
    from cxr_helpers.run.sweep_point import run_point

    monkeypatch.setenv("CXR_ROOT", str(project))
    monkeypatch.delenv("CXR_OUTPUTS", raising=False)  # its outputs/ is the project's
    paths.project_root.cache_clear()
    seen = []

    def prune_at_first_epoch(epoch, value):
        seen.append((epoch, value))
        return True

    try:
        out = run_point("configs/t.yaml", ["train.epochs=30", "train.warmup_epochs=1"], project / "r", ["02_train"],
                        on_epoch=prune_at_first_epoch, poll=0.5)
    finally:
        paths.project_root.cache_clear()
    assert out.status == "pruned" and seen[0] == (1, pytest.approx(0.7 - 0.01 * 29))  # epoch 1's val AUROC
    assert len((project / "r" / "history.csv").read_text().splitlines()) < 1 + 30  # stopped long before 30 epochs
    status = read_status(project / "r")
    assert status["status"] == "pruned" and status["notebooks"][0]["status"] == "not run"
    assert run_state(project / "r", NB) == "failed"  # not run again without --retry-failed
