"""`cxr run` contract: run dir layout, HTML reports, index pages, the failed-run contract, kernel pinning."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from cxr_helpers import paths
from cxr_helpers.run import runner
from cxr_helpers.run.cli import main

SETUP = 'from cxr_helpers.run.notebook import setup\nrun = setup(globals(), "{name}")'
PARAMS = 'config = "configs/t.yaml"\nrun_dir = "outputs/t"\noverrides = []'


def _notebook(path: Path, name: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), params,
                nbformat.v4.new_code_cell(SETUP.format(name=name)), nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "cxr", "display_name": "Python (cxr)", "language": "python"}
    nbformat.write(nb, str(path))


def _lock_holder(run_dir: Path):
    """Another process holding ``run_dir``'s lock for 60 s; prints "locked" once it holds it."""
    import subprocess

    code = ("import sys, time\nfrom pathlib import Path\nfrom cxr_helpers.run.lock import run_dir_lock\n"
            "with run_dir_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throwaway project root with three tiny notebooks; the second can be made to fail."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname='t'\n")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (tmp_path / "configs").mkdir()
    _notebook(nbs / "01_first.ipynb", "01_first",
              "import os, sys, json\n(run.dir / 'first.json').write_text(json.dumps({'exe': sys.executable, "
              "'tqdm': os.environ.get('TQDM_DISABLE')}))\n"
              "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]); plt.show()\nprint('hello from 01')")
    _notebook(nbs / "02_second.ipynb", "02_second",
              "if run.cfg.seed == 13:\n    raise ValueError('boom on purpose: seed 13')\nprint('second ok')")
    _notebook(nbs / "03_third.ipynb", "03_third", "(run.dir / 'third.txt').write_text('ran')")
    (tmp_path / "configs" / "t.yaml").write_text(
        "name: t\nseed: 0\nnotebooks: [01_first, 02_second, 03_third]\n")
    monkeypatch.setenv("CXR_ROOT", str(tmp_path))
    monkeypatch.delenv("CXR_OUTPUTS", raising=False)  # its outputs/ is the project's
    monkeypatch.chdir(tmp_path)
    paths.project_root.cache_clear()
    yield tmp_path
    paths.project_root.cache_clear()


def test_run_writes_the_run_dir_contract(project):
    result = runner.run("configs/t.yaml", progress=False, log=lambda *_: None)
    rd = project / "outputs" / "t"
    assert result.ok and result.run_dir == rd
    for name in ("01_first", "02_second", "03_third"):
        assert (rd / "notebooks" / f"{name}.ipynb").is_file()
        html = (rd / "reports" / f"{name}.html").read_text()
        assert "<html" in html and "cxr-toggle" in html
    assert "data:image/png;base64" in (rd / "reports" / "01_first.html").read_text()
    assert (rd / "config.yaml").is_file()
    prov = json.loads((rd / "provenance.json").read_text())
    assert set(prov["notebooks"]) == {"01_first", "02_second", "03_third"}
    assert prov["packages"]["torch"] and prov["python"] and "commit" in prov["git"]
    assert all(v["seconds"] > 0 for v in prov["notebooks"].values())
    # the notebooks ran in this interpreter, not whatever owns a kernel named python3
    first = json.loads((rd / "first.json").read_text())
    assert first["exe"] == sys.executable
    assert first["tqdm"] == "1"  # no progress-bar noise inside the HTML reports
    index = (rd / "index.html").read_text()
    assert "reports/03_third.html" in index and "OK" in index
    assert "t/index.html" in (project / "outputs" / "index.html").read_text()


def test_failed_notebook_contract(project, capsys):
    code = main(["run", "configs/t.yaml", "--set", "seed=13", "--no-progress"])
    assert code == 1
    rd = project / "outputs" / "t"
    err = capsys.readouterr().err
    assert "02_second" in err and "boom on purpose" in err
    failed_html = (rd / "reports" / "02_second.html").read_text()
    assert "boom on purpose" in failed_html  # the error is visible in the partial report
    assert (rd / "notebooks" / "02_second.ipynb").is_file()
    assert not (rd / "third.txt").exists()  # later notebooks are not run
    status = json.loads((rd / "run_status.json").read_text())
    assert status["status"] == "failed"
    assert status["failure"] == {"notebook": "02_second", "error": "ValueError: boom on purpose: seed 13"}
    assert [nb["status"] for nb in status["notebooks"]] == ["ok", "failed", "not run"]
    for page in (rd / "index.html", project / "outputs" / "index.html"):
        text = page.read_text()
        assert "FAILED" in text and "boom on purpose" in text and "02_second" in text


def test_only_reruns_a_subset(project):
    runner.run("configs/t.yaml", overrides=["train.epochs=2"], progress=False, log=lambda *_: None)
    (project / "outputs" / "t" / "third.txt").unlink()
    result = runner.run("configs/t.yaml", only="03", progress=False, log=lambda *_: None)
    assert result.ok and (project / "outputs" / "t" / "third.txt").is_file()
    # the run keeps the config it ran with (its overrides), not the plain file named again
    resolved = yaml.safe_load((project / "outputs" / "t" / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 2
    prov = json.loads((project / "outputs" / "t" / "provenance.json").read_text())
    assert prov["overrides"] == ["train.epochs=2"]
    status = json.loads((project / "outputs" / "t" / "run_status.json").read_text())
    assert [nb["status"] for nb in status["notebooks"]] == ["ok", "ok", "ok"]


def test_out_and_hide_code(project):
    result = runner.run("configs/t.yaml", out=str(project / "elsewhere" / "r1"), hide_code=True,
                        progress=False, log=lambda *_: None)
    html = (result.run_dir / "reports" / "01_first.html").read_text()
    assert "cxr-toggle" not in html and "first.json" not in html  # code left out entirely
    assert "elsewhere/r1/index.html" in (project / "outputs" / "index.html").read_text()


def test_unknown_notebook_parameter_fails_clearly(project):
    import papermill as pm

    kernel = runner.kernel_for_this_python()
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(project / "notebooks" / "01_first.ipynb"), str(project / "o.ipynb"),
                            parameters={"config": "configs/t.yaml", "run_dir": "outputs/x", "epochs": 3},
                            kernel_name=kernel, cwd=str(project), progress_bar=False)
    assert "unknown parameter(s) epochs" in info.value.evalue


def test_bad_cli_arguments_give_one_line(project, capsys):
    assert main(["run", "configs/t.yaml", "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.epoch" in err and "epochs" in err
    assert main(["run", "configs/missing.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["run", "configs/t.yaml", "--only", "09"]) == 2
    assert "no notebook matches 09" in capsys.readouterr().err


def test_headline_metrics_read_the_result_files(tmp_path):
    from cxr_helpers.run.index_pages import headline_metrics

    (tmp_path / "metrics.json").write_text(json.dumps(
        {"macro_auroc": {"value": 0.912, "ci_low": 0.9, "ci_high": 0.93}}))
    (tmp_path / "eda_summary.json").write_text(json.dumps(
        {"n_images": 10, "split_sizes": {"train": 6, "val": 2, "test": 2}, "n_skipped": 1, "n_missing": 3,
         "leakage": "warning"}))
    (tmp_path / "cam_metrics.json").write_text(json.dumps({"summary": "pointing game 0.4 vs 0.1"}))
    heads = dict(headline_metrics(tmp_path))
    assert heads["Test macro AUROC"] == "0.912 (95% CI 0.900–0.930)"
    assert heads["Images (train/val/test)"] == "10 (6 / 2 / 2)"
    assert heads["Skipped / missing files"] == "1 / 3"
    assert heads["Leakage check"] == "warning"
    assert heads["Grad-CAM"] == "pointing game 0.4 vs 0.1"


def test_every_cli_failure_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import cxr_helpers.train.loop as loop
    from cxr_helpers.train.loop import TrainingError

    def fails_with(exc):
        def fake(*args, **kwargs):
            raise exc

        return fake

    for exc, code, text in [
        (TrainingError("train: loss became nan at epoch 2, batch 3; stopped."), 1, "TrainingError: train: loss became nan"),
        (OSError(28, "No space left on device"), 1, "OSError: [Errno 28] No space left on device"),
        (RuntimeError("[enforce fail at inline_container.cc:603]\nline two"), 1, "RuntimeError: [enforce fail"),
    ]:
        monkeypatch.setattr(loop, "train_from_config", fails_with(exc))
        assert main(["train", "configs/demo.yaml"]) == code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and text in err and "--debug" in err, err
    with pytest.raises(RuntimeError, match="enforce fail"):  # the last fake, re-raised whole
        main(["--debug", "train", "configs/demo.yaml"])


def test_kernelspec_is_private_to_the_interpreter_and_project(tmp_path, monkeypatch):
    import json as _json

    from cxr_helpers.paths import project_root
    from cxr_helpers.run.runner import kernel_for_this_python

    monkeypatch.setenv("JUPYTER_PATH", "")
    dirs = []
    for name in ("a", "b", "a"):
        (tmp_path / name).mkdir(exist_ok=True)
        monkeypatch.setenv("CXR_ROOT", str(tmp_path / name))
        monkeypatch.delenv("CXR_OUTPUTS", raising=False)  # its outputs/ is the project's
        project_root.cache_clear()
        kernel_for_this_python()
        first = os.environ["JUPYTER_PATH"].split(os.pathsep)[0]
        spec = _json.loads((Path(first) / "kernels" / "cxr-run" / "kernel.json").read_text())
        assert spec["env"]["CXR_ROOT"] == str(tmp_path / name) and spec["argv"][0] == sys.executable
        dirs.append(first)
    project_root.cache_clear()
    assert dirs[0] != dirs[1] and dirs[0] == dirs[2]
    assert len(os.environ["JUPYTER_PATH"].split(os.pathsep)) == 2


def test_a_second_run_on_a_busy_run_dir_refuses_and_a_dead_runs_lock_is_taken_over(project, capsys):
    """Two `cxr run --out D` at once: the second refuses in one line naming the first (its config.yaml
    untouched); after the first is killed (no clean-up), the next run takes the stale lock over."""
    import signal

    from cxr_helpers.run.lock import LOCK_FILE, run_dir_lock

    run_dir = project / "outputs" / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: t\nseed: 0\n# the first run's\n")
    holder = _lock_holder(run_dir)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", "configs/t.yaml", "--set", "seed=1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "in use by another cxr run" in err and f"pid {holder.pid}" in err
        assert "# the first run's" in (run_dir / "config.yaml").read_text()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run_dir / LOCK_FILE).is_file()  # killed: nothing removed it
    notes = []
    with run_dir_lock(run_dir, log=notes.append) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {holder.pid}" in notes[0] and "no longer runs" in notes[0]
    assert not (run_dir / LOCK_FILE).exists()


def test_a_failed_rerun_marks_later_results_stale_on_both_index_pages(project):
    """--only 02 fails: 03's earlier "ok" and the metrics it wrote were kept as if current; now stale."""
    assert runner.run("configs/t.yaml", progress=False, log=lambda *_: None).ok
    rd = project / "outputs" / "t"
    (rd / "metrics.json").write_text(json.dumps({"macro_auroc": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}}))
    result = runner.run("configs/t.yaml", overrides=["seed=13"], only="02", progress=False, log=lambda *_: None)
    assert not result.ok
    status = json.loads((rd / "run_status.json").read_text())
    by = {nb["name"]: nb for nb in status["notebooks"]}
    assert by["01_first"]["status"] == "ok" and by["02_second"]["status"] == "failed"
    assert by["03_third"]["status"] == "stale" and by["03_third"]["stale_after"] == "02_second"
    run_page = (rd / "index.html").read_text()
    assert "0.900 (95% CI 0.800–0.950) (stale: from an earlier run)" in run_page
    assert "results from before 02_second was re-run" in run_page
    assert "(stale: from an earlier run)" in (project / "outputs" / "index.html").read_text()


def test_pretrained_weights_offline_fail_before_01_runs(project, monkeypatch):
    import cxr_helpers.model.backbones as backbones

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbones, "_hub_cached", lambda repo: False)
    monkeypatch.setattr(backbones, "_url_cached", lambda url: False)
    with pytest.raises(runner.RunError) as info:
        runner.run("configs/t.yaml", overrides=["model.pretrained=true"], progress=False, log=lambda *_: None)
    msg = str(info.value)
    assert "\n" not in msg and "model.pretrained" in msg and "model.weights=" in msg and "model.pretrained=false" in msg
    assert not (project / "outputs" / "t" / "first.json").exists()  # 01 never started
    monkeypatch.setattr(backbones, "_hub_cached", lambda repo: True)  # weights in the local cache: fine offline
    assert backbones.pretrained_problem(runner.load_config(project / "configs" / "t.yaml",
                                                           ["model.pretrained=true"]).model) is None


def test_a_full_run_dir_marks_the_run_failed_and_leaves_no_tmp_files(project, capsys):
    """A notebook fills the run dir's disk and fails: before, run_status.json stayed "running" (or a
    0-byte .tmp) and the runner died with a traceback; now the run is failed, in one line each."""
    sys.path.insert(0, str(Path(__file__).parent))
    from disk_fixtures import tmp_files, tmpfs

    nb = project / "notebooks" / "02_second.ipynb"
    _notebook(nb, "02_second", "import os\nif run.cfg.seed == 21:\n"
              "    big = run.dir / 'model.bin'\n    try:\n        big.write_bytes(b'0' * 4_000_000)\n"
              "    finally:\n        big.unlink(missing_ok=True)\n"
              "if run.cfg.seed == 22:\n    (run.dir / 'filler.bin').write_bytes(b'0' * 4_000_000)\n")
    with tmpfs(project / "mnt", size="2m") as mnt:  # room for two runs' pages and model cards
        assert main(["run", "configs/t.yaml", "--set", "seed=21", "--out", str(mnt / "r"), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "02_second" in err and "No space left" in err
        status = json.loads((mnt / "r" / "run_status.json").read_text())
        assert status["status"] == "failed" and tmp_files(mnt) == []
        # the notebook leaves the disk full: even the status cannot be written, and the line says so
        assert main(["run", "configs/t.yaml", "--set", "seed=22", "--out", str(mnt / "r2"), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "run_status.json could not be marked failed" in err
        assert "free on" in err and tmp_files(mnt) == []


def test_cxr_train_takes_the_run_dir_lock(project, capsys, monkeypatch):
    import signal

    import cxr_helpers.train.loop as loop
    from cxr_helpers.run.lock import LOCK_FILE

    run_dir = project / "outputs" / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: t\n# the first run's\n")
    holder = _lock_holder(run_dir)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "configs/t.yaml"]) == 2  # before: trained and overwrote config.yaml
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "in use by another cxr run" in err and f"pid {holder.pid}" in err
        assert "# the first run's" in (run_dir / "config.yaml").read_text()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, out, **kw: seen.append((out / LOCK_FILE).is_file()))
    assert main(["train", "configs/t.yaml"]) == 0
    assert seen == [True] and not (run_dir / LOCK_FILE).exists()  # held while training, released after


def test_a_report_that_cannot_be_written_fails_the_run_and_leaves_no_older_report(project, monkeypatch):
    """Before, a full disk while rendering 02's HTML was only logged: the run ended "ok" and the index
    linked the previous run's report."""
    import errno

    from cxr_helpers.paths import DiskWriteError

    real = runner.notebook_to_html

    def full_disk_for_02(src, html, **kw):
        if "02_second" in str(html):
            raise DiskWriteError(errno.ENOSPC, f"cannot write {html}: the disk is full (0 B free on /x)")
        return real(src, html, **kw)

    assert runner.run("configs/t.yaml", progress=False, log=lambda *_: None).ok
    old = project / "outputs" / "t" / "reports" / "02_second.html"
    assert old.is_file()
    monkeypatch.setattr(runner, "notebook_to_html", full_disk_for_02)
    result = runner.run("configs/t.yaml", progress=False, log=lambda *_: None)
    assert not result.ok and result.failed_notebook == "02_second" and "disk is full" in result.error
    assert not old.exists()
    status = json.loads((project / "outputs" / "t" / "run_status.json").read_text())
    assert status["status"] == "failed"
