"""``cxr app``'s checks before serving and what it hands Voilà (the page itself: test_browser.py)."""

from __future__ import annotations

import builtins
import socket

import pytest

from cxr_helpers.run import app_cmd
from cxr_helpers.run.cli import main


def _model_run(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "best.pt").write_bytes(b"")
    return run


@pytest.mark.parametrize("case", ["no_dir", "no_model"])
def test_missing_run_dir_or_model_is_one_line_and_exit_2(case, tmp_path, capsys):
    run = tmp_path / "run"
    if case == "no_model":
        run.mkdir()
    assert main(["app", str(run), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run) in err
    assert ("run dir not found" if case == "no_dir" else "no model/best.pt") in err


def test_port_in_use_is_one_line_and_exit_2(tmp_path, capsys):
    with socket.socket() as s:
        s.bind((app_cmd.HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", str(_model_run(tmp_path)), "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"port {port}" in err and "--port" in err


def test_without_voila_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_voila(name, *args, **kwargs):
        if name.split(".")[0] == "voila":
            raise ImportError("No module named 'voila'")
        return real_import(name, *args, **kwargs)

    with socket.socket() as s:
        s.bind((app_cmd.HOST, 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(builtins, "__import__", no_voila)
    assert main(["app", str(_model_run(tmp_path)), "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cxr[app]'" in err


def test_voila_gets_the_page_the_upload_limit_and_an_offline_template(tmp_path, monkeypatch):
    nb = app_cmd.page_notebook(tmp_path / "my run")
    assert len(nb.cells) == 1
    assert f"show_app({str(tmp_path / 'my run')!r}, max_upload_mb={app_cmd.UPLOAD_LIMIT_MB})" in nb.cells[0].source
    c = app_cmd.voila_config(8899, open_browser=False)
    assert c.Voila.tornado_settings["websocket_max_message_size"] >= 30 * 1024 * 1024 * 4 // 3  # 30 MB, even as base64
    assert (c.Voila.ip, c.Voila.port, c.Voila.port_retries) == ("127.0.0.1", 8899, 0)
    assert c.VoilaConfiguration.strip_sources is True and c.VoilaConfiguration.template == app_cmd.TEMPLATE

    import jinja2
    from voila.paths import collect_template_paths

    monkeypatch.setenv("JUPYTER_PATH", str(app_cmd.write_template(tmp_path / "jp")))
    paths = collect_template_paths(["voila", "nbconvert"], app_cmd.TEMPLATE, prune=True)  # finds "cxr"
    assert paths[0].endswith(app_cmd.TEMPLATE)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(paths))
    source = env.loader.get_source(env, "lab/index.html.j2")[0]
    assert all(link in source for link in app_cmd.CDN_LINKS)  # what the template removes is still there to remove


def test_a_model_that_cannot_be_loaded_is_one_line_in_the_page(tmp_path, capsys):
    pytest.importorskip("ipywidgets")
    from cxr_helpers.predict.app_page import show_app

    assert show_app(_model_run(tmp_path)) is None  # an empty best.pt passes the cheap check, then fails to load
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if "<p class='cxr-error'>" in s)
    assert "cannot be used" in line and "best.pt" in line and "Upload X-rays" not in out
