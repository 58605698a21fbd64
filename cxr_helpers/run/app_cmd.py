"""``cxr app RUN_DIR [--port P]``: the upload-and-predict page for a trained run, served by Voilà.

Voilà runs a one-cell notebook, written to a temporary folder, that calls
``predict.app_page.show_app(RUN_DIR)``; code is never shown (Voilà strips it). The server listens
on 127.0.0.1 only. Uploads reach the kernel as one websocket message per batch of files, and
tornado closes the connection on a message over 10 MiB by default; ``UPLOAD_LIMIT_MB`` raises
that (``websocket_max_message_size``), so a 30 MB DICOM goes through. ipywidgets' ``FileUpload``
and the kernel's ZeroMQ sockets set no limit of their own; the HTTP body limits do not apply
(nothing is POSTed).

Only argparse at module level: ``cxr --help`` builds every subcommand's parser. The checks that
can fail cheaply (no run dir, no model, port taken, Voilà not installed) run before the server
starts and each print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from cxr_helpers.paths import resolve_path

DEFAULT_PORT = 8866
HOST = "127.0.0.1"
UPLOAD_LIMIT_MB = 512
NO_VOILA = "Voilà is not installed: pip install 'cxr[app]' (in a checkout: pip install -c constraints.txt -e '.[app]')"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare this subcommand's arguments on its parser."""
    p.add_argument("run_dir", help="a run dir holding model/best.pt (and thresholds.json), e.g. outputs/demo")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")


def run_dir_problem(run_dir: Path) -> Optional[str]:
    """Why ``run_dir`` cannot be served (one line), or None: it must exist and hold model/best.pt."""
    if not run_dir.is_dir():
        return f"run dir not found: {run_dir} (give the folder a run wrote, e.g. outputs/demo)"
    if not (run_dir / "model" / "best.pt").is_file():
        return f"no model/best.pt in {run_dir} (02_train writes it: cxr run CONFIG, or point at a trained run dir)"
    return None


def port_problem(port: int) -> Optional[str]:
    """Why the server cannot listen on ``port`` (one line), or None when it is free."""
    if not 0 < port < 65536:
        return f"--port {port} is not a TCP port (1-65535)"
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as exc:
            return f"port {port} on {HOST} is not free ({exc.strerror}); choose another with --port"
    return None


def page_notebook(run_dir: Path) -> Any:
    """The one-cell notebook Voilà serves: ``show_app(run_dir, max_upload_mb)``, run dir absolute."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        f"from cxr_helpers.predict.app_page import show_app\n\n"
        f"panel = show_app({str(run_dir)!r}, max_upload_mb={UPLOAD_LIMIT_MB})"
    )]
    return nb


# Voilà's lab template links Font Awesome from a CDN, which its own bundle already carries: offline
# (hospital networks) the page logs errors, online every page view is announced to a third party.
# The "cxr" template is the lab template without those two links.
CDN_LINKS = [
    f'<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@^5/css/{name}" '
    'type="text/css" />'
    for name in ("all.min.css", "v4-shims.min.css")
]
TEMPLATE = "cxr"


def write_template(root: Path) -> Path:
    """Write the "cxr" Voilà template (``TEMPLATE``) under ``root/voila/templates``; return the
    folder to put on ``JUPYTER_PATH``."""
    folder = root / "voila" / "templates" / TEMPLATE
    folder.mkdir(parents=True)
    (folder / "conf.json").write_text(json.dumps({"base_template": "lab"}))
    strip = "".join(f" | replace({link!r}, '')" for link in CDN_LINKS)
    (folder / "index.html.j2").write_text(
        "{%- extends 'lab/index.html.j2' -%}\n{%- block notebook_css -%}\n"
        f"{{{{ super(){strip} }}}}\n{{%- endblock notebook_css -%}}\n"
    )
    return root


def voila_config(port: int, open_browser: bool) -> Any:
    """Voilà's settings: localhost on exactly ``port``, sources stripped, uploads up to
    ``UPLOAD_LIMIT_MB`` (tornado's ``websocket_max_message_size``), the "cxr" template, quiet logs."""
    from traitlets.config import Config

    c = Config()
    c.Voila.ip = HOST
    c.Voila.port = port
    c.Voila.port_retries = 0
    c.Voila.open_browser = open_browser
    c.Voila.log_level = "ERROR"
    c.Voila.tornado_settings = {"websocket_max_message_size": UPLOAD_LIMIT_MB * 1024 * 1024}
    c.VoilaConfiguration.template = TEMPLATE
    c.VoilaConfiguration.strip_sources = True
    c.VoilaConfiguration.show_tracebacks = False
    return c


def command(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit code."""
    run_dir = resolve_path(args.run_dir)
    problem = run_dir_problem(run_dir) or port_problem(args.port)
    if problem is None:
        try:
            from voila.app import Voila
        except ImportError:
            problem = NO_VOILA
    if problem is not None:
        print(f"cxr app: {problem}", file=sys.stderr)
        return 2
    import nbformat

    with tempfile.TemporaryDirectory(prefix="cxr-app-") as tmp:
        page = Path(tmp) / f"cxr-app-{run_dir.name}.ipynb"
        nbformat.write(page_notebook(run_dir), str(page))
        templates = write_template(Path(tmp) / "jupyter")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(templates), *filter(None, [os.environ.get("JUPYTER_PATH")])])
        print(f"cxr app: serving {run_dir} at http://{HOST}:{args.port}/ (Ctrl+C stops)", flush=True)
        Voila.launch_instance(argv=[str(page)], config=voila_config(args.port, not args.no_browser))
        Voila.clear_instance()
    return 0
