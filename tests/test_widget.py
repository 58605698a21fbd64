"""The upload panel at the end of 05 (``predict.widget``), driven as a person would: by setting
``FileUpload.value``; and its headless switch, checked against a real kernel."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from app_fixtures import ALWAYS, NEVER, chest_like, monochrome1_dicom, png_bytes, tiny_run, upload_value
from PIL import Image

pytest.importorskip("ipywidgets")

from cxr_helpers.predict import widget  # noqa: E402


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from cxr_helpers.predict.predictor import load_predictor

    return load_predictor(tiny_run(tmp_path_factory.mktemp("widget")), device="cpu")


def _cards(html: str) -> dict[str, str]:
    """data-name -> the card's HTML, in page order."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"<div class='cxr-result[^']*' data-name='([^']*)'", html)]
    ends = [s for s, _ in starts[1:]] + [len(html)]
    return {name: html[s:e] for (s, name), e in zip(starts, ends)}


def _shown_image(card: str, kind: str = "cxr-input") -> np.ndarray:
    uri = re.search(rf"<figure class='{kind}'[^>]*><img [^>]*src='data:image/png;base64,([^']+)'", card).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("L"), dtype=float)


def test_upload_shows_findings_bars_and_overlays_for_png_jpeg_and_dicom(predictor, tmp_path):
    img = chest_like()
    files = [("chest.png", png_bytes(img)), ("chest.jpg", png_bytes(img, "JPEG")),
             ("m1.dcm", monochrome1_dicom(tmp_path / "m1.dcm", img).read_bytes()), ("notes.txt", b"not an image")]
    panel = widget.upload_panel(predictor)
    assert "up to 10 MB per upload" in panel.status.value  # a stock Jupyter server's limit, stated
    panel.upload.value = upload_value(files)

    cards = _cards(panel.output.value)
    assert list(cards) == [n for n, _ in files]
    for name in ("chest.png", "chest.jpg", "m1.dcm"):
        card = cards[name]
        assert f"Called: {ALWAYS}" in card and "cxr-error" not in card
        assert re.findall(r"data-finding='([^']+)'", card) == [ALWAYS]  # an overlay for the called finding only
        assert f"data-class='{ALWAYS}'" in card and f"data-class='{NEVER}'" in card  # a bar per class
        assert "threshold 0.00" in card
        assert _shown_image(card, "cxr-overlay").shape == _shown_image(card).shape
    png, dcm = _shown_image(cards["chest.png"]), _shown_image(cards["m1.dcm"])
    assert np.corrcoef(png.ravel(), dcm.ravel())[0, 1] > 0.9  # MONOCHROME1 shown the right way up
    assert dcm[:2].mean() > dcm[-2:].mean() + 50  # bright top rows stay on top
    bad = cards["notes.txt"]
    assert re.search(r"<p class='cxr-error'>notes\.txt: [^<\n]+</p>", bad) and "<img" not in bad
    assert "3 of 4 image(s) predicted" in panel.output.value and "1 could not be read" in panel.output.value
    assert panel.upload.value == () and panel.status.value.startswith("Done: 4 file(s)")


def test_an_unexpected_failure_is_shown_on_its_card(monkeypatch):
    def boom(predictor, data, name):
        raise RuntimeError("CUDA out of memory\nmore lines")

    monkeypatch.setattr(widget, "predict_file", boom)
    panel = widget.UploadPanel(predictor=None)
    panel.predict([("a.png", b"x")])
    assert "a.png: could not be predicted: RuntimeError: CUDA out of memory</p>" in panel.output.value
    assert "more lines" not in panel.output.value


def test_headless_runs_show_nothing_and_interactive_ones_the_panel(predictor, monkeypatch):
    import IPython

    assert widget.show_upload_panel(predictor) is None  # plain Python: no kernel at all

    class Kernel:
        allow = False

        def get_parent(self, channel=None):
            return {"content": {"allow_stdin": self.allow}}

    shell = type("Shell", (), {"kernel": Kernel()})()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert widget.show_upload_panel(predictor) is None  # nbclient (papermill, Voilà) disallows stdin
    shell.kernel.allow = True
    panel = widget.show_upload_panel(predictor)
    assert panel is not None and panel.upload.multiple


@pytest.mark.slow
def test_allow_stdin_tells_papermill_from_jupyterlab_in_a_real_kernel():
    """The signal the switch relies on, in a real ipykernel: a request sent as JupyterLab sends it
    (allow_stdin) is interactive; one sent as nbclient/papermill sends it is not."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        seen = {}
        for allow in (True, False):
            kc.execute("from cxr_helpers.progress import interactive_frontend as f; print(f())",
                       allow_stdin=allow)
            out = ""
            while True:
                msg = kc.get_iopub_msg(timeout=60)
                if msg["msg_type"] == "stream":
                    out += msg["content"]["text"]
                if msg["msg_type"] == "error":
                    out += f"{msg['content']['ename']}: {msg['content']['evalue']}"
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" and out:
                    break
            seen[allow] = out.strip()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert seen == {True: "True", False: "False"}
